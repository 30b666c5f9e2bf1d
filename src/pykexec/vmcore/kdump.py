"""kdump-compressed dumps (makedumpfile's format) and x86_64 kernel page tables.

* :class:`PageTables` -- kernel virtual -> physical through the crashed
  kernel's own page tables (``SYMBOL(init_top_pgt)``, 4- or 5-level), given
  only a physical reader and VMCOREINFO.  The saver uses it to reach
  ``struct page`` arrays (vmemmap is not in any PT_LOAD); the reader uses it
  for every virtual read.
* :class:`KdumpFile` -- a read-only kdump-compressed file: header, notes,
  VMCOREINFO, bitmaps, pages (zlib, zstd and raw; lzo/snappy only if the
  ``lzo`` / ``snappy`` modules happen to be importable).

Layouts are in :mod:`pykexec.layouts.kdump`.
"""

from __future__ import annotations

import os
import struct
import zlib

from pykexec.layouts import kdump as L
from pykexec.layouts.elf import NT_VMCOREINFO, NoteFormatError, iter_notes
from pykexec.vmcore import VmcoreError
from pykexec.vmcore.vmcoreinfo import VmcoreInfo

TYPE_CHECKING = False  # typing costs an import; this name is all type checkers need
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

_U64 = struct.Struct("<Q")
_MASK64 = (1 << 64) - 1
#: __START_KERNEL_map: kernel text virtual base on x86_64 (``__pa_symbol`` subtracts it).
START_KERNEL_MAP = 0xFFFFFFFF80000000
_PTE_PRESENT = 0x1
_PTE_PSE = 0x80
_PTE_ADDR = 0x000FFFFFFFFFF000


class PageTables:
    """x86_64 kernel address translation from VMCOREINFO alone.

    ``read_phys(paddr, size)`` returns bytes (or a buffer) at a physical
    address; it may raise :class:`VmcoreError` for memory not in the dump.
    The root is ``__pa_symbol(init_top_pgt)`` = symbol - __START_KERNEL_map
    + ``NUMBER(phys_base)`` (KASLR included).  Huge (1 GiB / 2 MiB)
    mappings are followed; the SME encryption bit is masked off.
    """

    def __init__(self, read_phys: Callable[[int, int], bytes | memoryview], info: VmcoreInfo) -> None:
        self._read_phys = read_phys
        name = "init_top_pgt" if info.has_symbol("init_top_pgt") else "swapper_pg_dir"
        if not info.has_symbol(name) or not info.has_number("phys_base"):
            raise VmcoreError("VMCOREINFO lacks SYMBOL(init_top_pgt) or NUMBER(phys_base): "
                              "cannot walk the kernel page tables")
        self.root = (info.symbol(name) - START_KERNEL_MAP + info.number("phys_base")) & _MASK64
        self.levels = 5 if info.has_number("pgtable_l5_enabled") and info.number("pgtable_l5_enabled") else 4
        sme = info.number("sme_mask") if info.has_number("sme_mask") else 0
        self._addr_mask = _PTE_ADDR & ~sme
        self._cache: dict[int, tuple[int, int]] = {}  # va >> 21 -> (pa of the 2 MiB or 4 KiB base, size)

    def _entry(self, table: int, index: int) -> int:
        return int(_U64.unpack_from(self._read_phys(table + index * 8, 8))[0])

    def translate(self, va: int) -> tuple[int, int]:
        """(physical address of ``va``, bytes left in its mapping).

        Raises :class:`VmcoreError` if ``va`` is not mapped.
        """
        hit = self._cache.get(va >> 21)
        if hit is not None and hit[1] == 1 << 21:
            off = va & ((1 << 21) - 1)
            return hit[0] + off, (1 << 21) - off
        table = self.root
        shift = 39 + 9 * (self.levels - 4)
        while True:
            entry = self._entry(table, (va >> shift) & 511)
            if not entry & _PTE_PRESENT:
                raise VmcoreError(f"virtual address {va:#x} is not mapped in the kernel page tables")
            if shift == 12 or (shift in (21, 30) and entry & _PTE_PSE):
                size = 1 << shift
                base = entry & self._addr_mask & ~(size - 1)
                if size == 1 << 21:
                    self._cache[va >> 21] = (base, size)
                off = va & (size - 1)
                return base + off, size - off
            table = entry & self._addr_mask
            shift -= 9

    def read(self, va: int, size: int) -> bytes:
        """``size`` bytes at kernel virtual address ``va`` (may cross mappings)."""
        out = bytearray()
        while size > 0:
            pa, left = self.translate(va)
            n = min(size, left)
            out += self._read_phys(pa, n)
            va += n
            size -= n
        return bytes(out)


def _decompressor(flags: int) -> Callable[[bytes, int], bytes]:
    """The function that inflates a page stored with ``page_desc.flags``."""
    if flags & L.DUMP_DH_COMPRESSED_ZLIB:
        return lambda data, n: zlib.decompress(data)
    if flags & L.DUMP_DH_COMPRESSED_ZSTD:
        import zstandard

        dctx = zstandard.ZstdDecompressor()
        return lambda data, n: dctx.decompress(data, max_output_size=n)
    if flags & L.DUMP_DH_COMPRESSED_LZO:
        try:
            import lzo  # type: ignore[import-not-found]
        except ImportError:
            raise VmcoreError("page is lzo-compressed; install python-lzo to read it") from None
        return lambda data, n: lzo.decompress(data, False, n)
    if flags & L.DUMP_DH_COMPRESSED_SNAPPY:
        try:
            import snappy  # type: ignore[import-not-found]
        except ImportError:
            raise VmcoreError("page is snappy-compressed; install python-snappy to read it") from None
        return lambda data, n: snappy.uncompress(data)
    raise VmcoreError(f"unknown page compression flags {flags:#x}")


class KdumpFile:
    """A kdump-compressed dump, read-only.  Context manager.

    Attributes: ``header`` (:class:`~pykexec.layouts.kdump.DiskDumpHeader`),
    ``sub`` (:class:`~pykexec.layouts.kdump.KdumpSubHeader`), ``notes``,
    ``vmcoreinfo``, ``max_mapnr``, ``block_size``, ``incomplete``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as err:
            raise VmcoreError(f"{self.path}: cannot open: {err.strerror}") from None
        try:
            self._size = os.fstat(self._fd).st_size
            self._parse()
        except BaseException:
            os.close(self._fd)
            raise
        self._dec: dict[int, Callable[[bytes, int], bytes]] = {}

    def _err(self, msg: str) -> VmcoreError:
        return VmcoreError(f"{self.path}: {msg}")

    def _pread(self, size: int, offset: int) -> bytes:
        # Sizes and offsets come from the header: check them against the file before
        # asking for a buffer that large.
        if size < 0 or offset < 0 or offset + size > self._size:
            raise self._err(f"corrupt or truncated: {size:#x} bytes at offset {offset:#x} run past the end "
                            f"of the {self._size:#x}-byte file")
        data = os.pread(self._fd, size, offset)
        if len(data) != size:
            raise self._err(f"truncated: {size} bytes at offset {offset:#x} past the end of the file")
        return data

    def _parse(self) -> None:
        hsize = L.ctypes.sizeof(L.DiskDumpHeader)
        raw = os.pread(self._fd, hsize, 0)
        if len(raw) < hsize or raw[:8] != L.KDUMP_SIGNATURE:
            raise self._err("not a kdump-compressed file (no \"KDUMP   \" signature)")
        self.header = h = L.DiskDumpHeader.from_buffer_copy(raw)
        bs = self.block_size = h.block_size
        if bs <= 0 or bs & (bs - 1) or bs > 1 << 16:
            raise self._err(f"bad block_size {bs}")
        if h.header_version < 1:
            raise self._err(f"unsupported header_version {h.header_version}")
        sub_raw = self._pread(L.ctypes.sizeof(L.KdumpSubHeader), bs * L.DISKDUMP_HEADER_BLOCKS)
        self.sub = s = L.KdumpSubHeader.from_buffer_copy(sub_raw)
        self.max_mapnr = s.max_mapnr_64 if h.header_version >= 6 else h.max_mapnr
        self.incomplete = bool(h.status & L.DUMP_DH_COMPRESSED_INCOMPLETE)
        self.notes = []
        if h.header_version >= 4 and s.size_note:
            try:
                self.notes = list(iter_notes(self._pread(s.size_note, s.offset_note)))
            except NoteFormatError as err:
                raise self._err(f"corrupt notes: {err}") from None
        vmci = None
        if h.header_version >= 3 and s.size_vmcoreinfo:
            vmci = self._pread(s.size_vmcoreinfo, s.offset_vmcoreinfo)
        else:
            vmci = next((n.desc for n in self.notes if n.name == b"VMCOREINFO" and n.type == NT_VMCOREINFO), None)
        self.vmcoreinfo: VmcoreInfo | None = VmcoreInfo(vmci) if vmci is not None else None
        bitmap_off = bs * (L.DISKDUMP_HEADER_BLOCKS + h.sub_hdr_size)
        self.bitmap_len = h.bitmap_blocks * bs // 2
        if self.bitmap_len * 8 < self.max_mapnr:
            raise self._err(f"bitmaps ({self.bitmap_len} bytes each) too small for {self.max_mapnr} pages")
        self.bitmap1 = self._pread(self.bitmap_len, bitmap_off)
        self.bitmap2 = self._pread(self.bitmap_len, bitmap_off + self.bitmap_len)
        self._pd_off = bitmap_off + 2 * self.bitmap_len
        # Saved pages before each 4096-pfn group: the page_desc index of a pfn
        # is its rank in the 2nd bitmap.
        self._rank: list[int] = []
        total = 0
        for i in range(0, self.bitmap_len, 512):
            self._rank.append(total)
            total += int.from_bytes(self.bitmap2[i:i + 512], "little").bit_count()
        self.num_saved = total

    # -- pages -----------------------------------------------------------------
    def is_ram(self, pfn: int) -> bool:
        return pfn < self.max_mapnr and bool(self.bitmap1[pfn >> 3] >> (pfn & 7) & 1)

    def is_saved(self, pfn: int) -> bool:
        return pfn < self.max_mapnr and bool(self.bitmap2[pfn >> 3] >> (pfn & 7) & 1)

    def _index(self, pfn: int) -> int:
        group = pfn >> 12
        base = group << 9
        return self._rank[group] + (int.from_bytes(self.bitmap2[base:pfn >> 3], "little").bit_count()
                                    + (self.bitmap2[pfn >> 3] & ((1 << (pfn & 7)) - 1)).bit_count())

    def page_desc(self, pfn: int) -> tuple[int, int, int, int]:
        """(offset, size, flags, page_flags) of a saved page."""
        return L.PAGE_DESC_FMT.unpack(self._pread(L.PAGE_DESC_FMT.size,
                                                  self._pd_off + self._index(pfn) * L.PAGE_DESC_FMT.size))

    def read_page(self, pfn: int) -> bytes | None:
        """The bytes of page ``pfn``; None if it was not saved (hole, excluded,
        or lost in an incomplete dump)."""
        if not self.is_saved(pfn):
            return None
        offset, size, flags, _pf = self.page_desc(pfn)
        bs = self.block_size
        if offset == 0 and size == 0:
            return None  # descriptor never written: the dump stopped before this page
        if size > bs or offset <= 0:
            raise self._err(f"corrupt page descriptor for pfn {pfn:#x} (offset {offset}, size {size})")
        data = self._pread(size, offset)
        comp = flags & (L.DUMP_DH_COMPRESSED_ZLIB | L.DUMP_DH_COMPRESSED_LZO
                        | L.DUMP_DH_COMPRESSED_SNAPPY | L.DUMP_DH_COMPRESSED_ZSTD)
        if not comp:
            if size != bs:
                raise self._err(f"raw page {pfn:#x} has size {size}, expected {bs}")
            return data
        dec = self._dec.get(comp)
        if dec is None:
            dec = self._dec[comp] = _decompressor(comp)
        try:
            page = dec(data, bs)
        except VmcoreError:
            raise
        except Exception as err:  # zlib.error, zstd.ZstdError, ...
            raise self._err(f"page {pfn:#x} does not decompress: {err}") from None
        if len(page) != bs:
            raise self._err(f"page {pfn:#x} decompresses to {len(page)} bytes, expected {bs}")
        return page

    def saved_pfns(self) -> Iterator[int]:
        """Every pfn set in the 2nd bitmap, ascending."""
        bm = self.bitmap2
        for i, byte in enumerate(bm):
            if byte:
                for bit in range(8):
                    if byte >> bit & 1:
                        yield i * 8 + bit

    # -- reads by address ------------------------------------------------------
    def read_phys(self, paddr: int, size: int) -> bytes:
        out = bytearray()
        bs = self.block_size
        while size > 0:
            pfn, off = divmod(paddr, bs)
            page = self.read_page(pfn)
            if page is None:
                raise VmcoreError(f"physical address {paddr:#x} is not in the dump (page excluded)")
            n = min(size, bs - off)
            out += page[off:off + n]
            paddr += n
            size -= n
        return bytes(out)

    # -- lifetime ----------------------------------------------------------------
    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "KdumpFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class KdumpCore:
    """A kdump-compressed file behind the interface the log and info readers use on
    ELF cores (:class:`~pykexec.vmcore.elfcore.ElfCore`): ``read``/``u32``/``u64`` by
    kernel virtual address (through the dump's own page tables) or physical address."""

    format = "kdump-compressed"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._file = KdumpFile(path)
        self.path = self._file.path
        self.notes = self._file.notes
        self.vmcoreinfo = self._file.vmcoreinfo
        self.loads: list[object] = []  # no program headers in this format
        machine = bytes(self._file.header.utsname.machine).split(b"\0", 1)[0]
        self.machine = {b"x86_64": 62, b"i386": 3, b"i686": 3, b"aarch64": 183}.get(machine, 0)
        self.memory_bytes = self._file.num_saved * self._file.block_size
        self._tables: PageTables | None = None

    def require_vmcoreinfo(self) -> VmcoreInfo:
        if self.vmcoreinfo is None:
            raise VmcoreError(f"{self.path}: no VMCOREINFO: not a Linux kernel dump")
        return self.vmcoreinfo

    def read(self, addr: int, size: int, *, physical: bool = False) -> bytes:
        if physical:
            return self._file.read_phys(addr, size)
        if self._tables is None:
            self._tables = PageTables(self._file.read_phys, self.require_vmcoreinfo())
        return self._tables.read(addr, size)

    def u64(self, addr: int, *, physical: bool = False) -> int:
        return int(_U64.unpack_from(self.read(addr, 8, physical=physical))[0])

    def u32(self, addr: int, *, physical: bool = False) -> int:
        return int.from_bytes(self.read(addr, 4, physical=physical), "little")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "KdumpCore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
