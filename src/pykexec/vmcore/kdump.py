"""kdump-compressed dumps (makedumpfile's format).

* :class:`KdumpFile` -- a read-only kdump-compressed file: header, notes,
  VMCOREINFO, bitmaps, pages (raw, or zlib, lzo, snappy or zstd:
  :mod:`pykexec.vmcore.page_codecs`).
* :class:`KdumpCore` -- the same file as :class:`~pykexec.vmcore.dump_memory.DumpMemory`:
  virtual reads go through the dump's own page tables (:mod:`pykexec.vmcore.paging`).

Layouts are in :mod:`pykexec.layouts.kdump`.
"""

from __future__ import annotations

import os
import struct

from pykexec.layouts import kdump as L
from pykexec.layouts.elf import EM_386, EM_AARCH64, EM_X86_64, NT_VMCOREINFO, NoteFormatError, iter_notes
from pykexec.vmcore.errors import VmcoreError
from pykexec.vmcore.page_codecs import decompressor
from pykexec.vmcore.paging import PageTables
from pykexec.vmcore.vmcoreinfo import VmcoreInfo

TYPE_CHECKING = False  # typing costs an import; this name is all type checkers need
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from pykexec.layouts.elf import Note
    from pykexec.vmcore.flattened import FlattenedFile
    from pykexec.vmcore.elfcore import Load

_U64 = struct.Struct("<Q")


class KdumpFile:
    """A kdump-compressed dump, read-only.  Context manager.

    Attributes: ``header`` (:class:`~pykexec.layouts.kdump.DiskDumpHeader`),
    ``sub`` (:class:`~pykexec.layouts.kdump.KdumpSubHeader`), ``notes``,
    ``vmcoreinfo``, ``max_mapnr``, ``block_size``, ``incomplete`` (flagged in its header,
    a flattened stream without its end marker, or a file that ends early: ``cut_in``
    says where; :meth:`damage` says it in one line).  A file cut short is read up to
    where it ends: pages past it read as missing.
    """

    def __init__(self, path: str | os.PathLike[str], source: FlattenedFile | None = None) -> None:
        """``source``: the flattened stream at ``path``, already indexed, read as the
        file it rebuilds (:func:`pykexec.vmcore.open.open_dump` passes it)."""
        self.path = os.fspath(path)
        self._source = source
        self._fd = -1
        if source is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError as err:
                raise VmcoreError(f"{self.path}: cannot open: {err.strerror}") from None
        try:
            self._size = source.size if source is not None else os.fstat(self._fd).st_size
            self._parse()
        except BaseException:
            self.close()
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
        data = self._read(size, offset)
        if len(data) != size:
            raise self._err(f"truncated: {size} bytes at offset {offset:#x} past the end of the file")
        return data

    def _parse(self) -> None:
        hsize = L.ctypes.sizeof(L.DiskDumpHeader)
        raw = self._read(hsize, 0)
        if raw[:8] != L.KDUMP_SIGNATURE:
            raise self._err("not a kdump-compressed file (no \"KDUMP   \" signature)")
        if len(raw) < hsize:
            raise VmcoreError(f"DUMP INCOMPLETE: {self.path}: the file ends at byte {self._size}, inside its "
                              "header (nothing to read)")
        self.header = h = L.DiskDumpHeader.from_buffer_copy(raw)
        bs = self.block_size = h.block_size
        if bs <= 0 or bs & (bs - 1) or bs > 1 << 16:
            raise self._err(f"bad block_size {bs}")
        if h.header_version < 1:
            raise self._err(f"unsupported header_version {h.header_version}")
        sub_size = L.ctypes.sizeof(L.KdumpSubHeader)
        if self._size < bs * L.DISKDUMP_HEADER_BLOCKS + sub_size:
            raise VmcoreError(f"DUMP INCOMPLETE: {self.path}: the file ends at byte {self._size}, inside its "
                              "sub-header (nothing to read)")
        self.sub = s = L.KdumpSubHeader.from_buffer_copy(self._pread(sub_size, bs * L.DISKDUMP_HEADER_BLOCKS))
        self.max_mapnr = s.max_mapnr_64 if h.header_version >= 6 else h.max_mapnr
        #: Where the file ends early ("inside its bitmaps", ...): "" if every part is there.
        self.cut_in = ""
        self.notes: list[Note] = []
        bitmap_off = bs * (L.DISKDUMP_HEADER_BLOCKS + h.sub_hdr_size)
        # Notes and VMCOREINFO live in the sub-header's blocks, before the bitmaps: past them
        # the header is damaged (not a file cut short, which ends before where they say).
        for what, off, size in (("notes", s.offset_note, s.size_note),
                                ("VMCOREINFO", s.offset_vmcoreinfo, s.size_vmcoreinfo)):
            if size and (what == "VMCOREINFO" or h.header_version >= 4) and off + size > bitmap_off:
                raise self._err(f"its {what} ({size:#x} bytes at {off:#x}) run past the sub-header into the "
                                f"bitmaps at {bitmap_off:#x}: corrupt header")
        if h.header_version >= 4 and s.size_note:
            self.notes = self._notes(s.offset_note, s.size_note)
        vmci = None
        if h.header_version >= 3 and s.size_vmcoreinfo:
            if s.offset_vmcoreinfo + s.size_vmcoreinfo <= self._size:
                vmci = self._pread(s.size_vmcoreinfo, s.offset_vmcoreinfo)
            else:
                self.cut_in = self.cut_in or "inside its VMCOREINFO"
        else:
            vmci = next((n.desc for n in self.notes if n.name == b"VMCOREINFO" and n.type == NT_VMCOREINFO), None)
        self.vmcoreinfo: VmcoreInfo | None = VmcoreInfo(vmci) if vmci is not None else None
        self.bitmap_len = h.bitmap_blocks * bs // 2
        if self.bitmap_len * 8 < self.max_mapnr:
            raise self._err(f"bitmaps ({self.bitmap_len} bytes each) too small for {self.max_mapnr} pages")
        needed = -(-self.max_mapnr // 8)
        if self.bitmap_len > 2 * needed + bs:  # writers round up to a block: a damaged header
            raise self._err(f"bitmaps ({self.bitmap_len} bytes each) far larger than {self.max_mapnr} pages need: "
                            "corrupt header")
        if bitmap_off + 2 * self.bitmap_len > self._size:
            # Cut short before its page descriptors: no page can be read; the part of the
            # first bitmap that arrived says which pages were RAM.  Neither is padded to the
            # header's length: a damaged header may claim terabytes.
            self.cut_in = self.cut_in or "inside its bitmaps"
            self.bitmap1 = self._read(max(0, min(self.bitmap_len, self._size - bitmap_off)), bitmap_off)
            self.bitmap2 = b""
        else:
            self.bitmap1 = self._pread(self.bitmap_len, bitmap_off)
            self.bitmap2 = self._pread(self.bitmap_len, bitmap_off + self.bitmap_len)
        self._pd_off = bitmap_off + 2 * self.bitmap_len
        # Saved pages before each 4096-pfn group: the page_desc index of a pfn
        # is its rank in the 2nd bitmap.
        self._rank: list[int] = []
        total = 0
        for i in range(0, len(self.bitmap2), 512):
            self._rank.append(total)
            total += int.from_bytes(self.bitmap2[i:i + 512], "little").bit_count()
        self.num_saved = total
        if not self.cut_in and total:
            pd = L.PAGE_DESC_FMT
            if self._pd_off + total * pd.size > self._size:
                self.cut_in = "inside its page descriptors"
            elif self._data_end(total) > self._size:
                self.cut_in = "inside its page data"
        # A flattened stream without its end marker was cut short: whatever its header says.
        self.flagged = bool(h.status & L.DUMP_DH_COMPRESSED_INCOMPLETE)
        self.stream_cut = self._source is not None and not self._source.complete
        self.incomplete = self.flagged or self.stream_cut or bool(self.cut_in)

    def _data_end(self, total: int) -> int:
        """Where the page data ends, from the last descriptors (pages are written in pfn
        order; trailing zero pages all point at one page near the start): at most 1 MiB read."""
        pd = L.PAGE_DESC_FMT
        per = (1 << 16) // pd.size
        end = 0
        for stop in range(total, max(total - 16 * per, 0), -per):
            start = max(stop - per, 0)
            descs = self._read((stop - start) * pd.size, self._pd_off + start * pd.size)
            ends = [offset + size for offset, size, _f, _pf in pd.iter_unpack(descs)]
            end = max(end, *ends)
            if len(set(ends)) > 1:
                break
        return end

    def _notes(self, offset: int, size: int) -> list[Note]:
        """The notes at ``offset``; those that arrived whole if the file ends inside them."""
        have = max(0, min(size, self._size - offset))
        if have < size:
            self.cut_in = "inside its notes"
        notes: list[Note] = []
        try:
            for note in iter_notes(self._read(have, offset) if have else b""):
                notes.append(note)
        except NoteFormatError as err:
            if have == size:
                raise self._err(f"corrupt notes: {err}") from None
        return notes

    def damage(self) -> str:
        """"" for a whole dump; else why it is not whole and what is missing, one line:
        flagged incomplete in its header, a flattened stream cut short, or a file that
        ends early (by the byte where it ends)."""
        if not self.incomplete:
            return ""
        why = []
        if self.flagged:
            why.append("flagged incomplete in its header (the save stopped early)")
        if self.stream_cut:
            assert self._source is not None
            why.append(f"a flattened stream that ends at byte {self._source.stream_size} without its end marker")
        elif self.cut_in:
            why.append(f"the file ends at byte {self._size}, {self.cut_in}")
        if self.cut_in in ("inside its bitmaps", "inside its notes", "inside its VMCOREINFO"):
            missing = f"all {self.num_saved or 'its'} pages missing: no page data"
        else:
            missing = f"{self.missing_pages()} of {self.num_saved} saved pages missing"
        return f"{' and '.join(why)} ({missing})"

    def missing_pages(self) -> int:
        """Saved pages (2nd bitmap) without data: descriptor never written, or past the end of the file."""
        pd = L.PAGE_DESC_FMT
        have = max(0, min(self.num_saved, (self._size - self._pd_off) // pd.size))
        descs = self._read(have * pd.size, self._pd_off) if have else b""
        lost = self.num_saved - len(descs) // pd.size
        end = self._size
        for offset, size, _f, _pf in pd.iter_unpack(descs[:len(descs) - len(descs) % pd.size]):
            if offset <= 0 or offset + size > end:
                lost += 1
        return lost

    # -- pages -----------------------------------------------------------------
    def is_ram(self, pfn: int) -> bool:
        return pfn < self.max_mapnr and pfn >> 3 < len(self.bitmap1) and bool(self.bitmap1[pfn >> 3] >> (pfn & 7) & 1)

    def is_saved(self, pfn: int) -> bool:
        return pfn < self.max_mapnr and pfn >> 3 < len(self.bitmap2) and bool(self.bitmap2[pfn >> 3] >> (pfn & 7) & 1)

    def _index(self, pfn: int) -> int:
        group = pfn >> 12
        base = group << 9
        return self._rank[group] + (int.from_bytes(self.bitmap2[base:pfn >> 3], "little").bit_count()
                                    + (self.bitmap2[pfn >> 3] & ((1 << (pfn & 7)) - 1)).bit_count())

    def page_desc(self, pfn: int) -> tuple[int, int, int, int]:
        """(offset, size, flags, page_flags) of a saved page; all zeros where the file
        ends before its descriptor (a dump cut short)."""
        at = self._pd_off + self._index(pfn) * L.PAGE_DESC_FMT.size
        if self.cut_in and at + L.PAGE_DESC_FMT.size > self._size:
            return 0, 0, 0, 0
        return L.PAGE_DESC_FMT.unpack(self._pread(L.PAGE_DESC_FMT.size, at))

    def read_page(self, pfn: int) -> bytes | None:
        """The bytes of page ``pfn``; None if it was not saved (hole, excluded,
        or lost in an incomplete dump: never written, or past the end of a file cut short)."""
        if not self.is_saved(pfn):
            return None
        offset, size, flags, _pf = self.page_desc(pfn)
        bs = self.block_size
        if offset == 0 and size == 0:
            return None  # descriptor never written: the dump stopped before this page
        if size > bs or offset <= 0:
            raise self._err(f"corrupt page descriptor for pfn {pfn:#x} (offset {offset}, size {size})")
        if offset + size > self._size and (self.cut_in or self.flagged or self.stream_cut):
            return None  # the file ends before this page
        data = self._pread(size, offset)
        comp = flags & L.PAGE_CODEC_FLAGS
        if not comp:
            if size != bs:
                raise self._err(f"raw page {pfn:#x} has size {size}, expected {bs}")
            return data
        dec = self._dec.get(comp)
        if dec is None:
            dec = self._dec[comp] = decompressor(comp)
        try:
            page = dec(data, bs)
        except VmcoreError:
            raise
        except Exception as err:  # zlib.error, zstd.ZstdError, lzallright.LZOError, ...
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
    def _read(self, size: int, offset: int) -> bytes:
        if self._source is not None:
            return self._source.pread(size, offset)
        return os.pread(self._fd, size, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._source is not None:
            self._source.close()

    def __enter__(self) -> "KdumpFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class KdumpCore:
    """A kdump-compressed file as :class:`~pykexec.vmcore.dump_memory.DumpMemory`:
    ``read``/``u32``/``u64`` by kernel virtual address (through the dump's own page
    tables) or physical address."""

    format = "kdump-compressed"

    def __init__(self, path: str | os.PathLike[str], source: FlattenedFile | None = None) -> None:
        self._file = KdumpFile(path, source)
        self.path = self._file.path
        self.notes = self._file.notes
        self.vmcoreinfo = self._file.vmcoreinfo
        self.loads: list[Load] = []  # no program headers in this format
        machine = bytes(self._file.header.utsname.machine).split(b"\0", 1)[0]
        self.machine = {b"x86_64": EM_X86_64, b"i386": EM_386, b"i686": EM_386,
                        b"aarch64": EM_AARCH64}.get(machine, 0)
        self.memory_bytes = self._file.num_saved * self._file.block_size
        self._tables: PageTables | None = None

    def damage(self) -> str:
        """"" for a whole dump, else why it is not and what is missing (:meth:`KdumpFile.damage`)."""
        return self._file.damage()

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
