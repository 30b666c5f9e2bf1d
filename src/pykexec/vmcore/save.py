"""``pykexec vmcore save SRC DST``: stream an ELF dump to makedumpfile's kdump-compressed
format, or (``--format elf``) to a filtered ELF core.

What is left out (makedumpfile's dump levels, ``-d``):

* bit 1, zero pages: found while copying; as makedumpfile does, they stay
  in the 2nd bitmap and their descriptors all point at one zero page
  written first, so they still read back as zeros;
* bits 2, 4, 8 and 16 (page cache, page cache with private data, user
  data, free pages): decided before copying from the crashed kernel's
  ``struct page`` array with VMCOREINFO only, by makedumpfile's rules
  (:mod:`pykexec.vmcore.filtering`).  Pages a kernel does not let us judge
  (missing keys) are kept, with a one-line notice.

Kept pages are read with ``preadv`` (not mmap: a bad page of ``/proc/vmcore``
must become an error, not SIGBUS) into batches of 8 MiB, one call per
contiguous piece; whole-batch and per-page zero tests are ``memcmp``
(``bytearray.startswith``).  Pages are compressed one by one (the format's
unit; zstd level 1 or zlib level 1, as makedumpfile's ``-z``/``-c``), a batch
at a time on every CPU the process may use (zstd in its own C threads, zlib in
worker threads); a page that does not shrink is stored raw.

``--format elf`` writes the same page selection as an ELF core, laid out as
makedumpfile ``-E`` lays it out: the source's PT_LOADs in order, each split
where at least :data:`ELF_GAP_PAGES` (256, makedumpfile's ``PFN_EXCLUDED``)
consecutive pages are left out.  A piece's ``p_memsz`` runs up to the next piece
(or the end of the source segment), its ``p_filesz`` only to its last kept page,
so every left-out page still reads as zeros and the PT_LOADs cover exactly the
memory the source covered.  Shorter left-out runs stay inside a piece as zeros
(holes in DST: sparse), where makedumpfile keeps their old content; so does a
short left-out run at a segment's end, because vmcore-dmesg reads whole buffers
straight from the file and fails on bytes past ``p_filesz`` (a log buffer with
256+ empty pages at its end defeats it, as on makedumpfile -E output; our reader
reads zeros there).  Notes are
copied into one PT_NOTE; ``e_flags = 1`` marks an incomplete dump, as
makedumpfile does.  The header and program headers are rewritten at the end
(space for the most program headers the selection can need is kept after the
ELF header, where crash(8) expects them).

Xen dumps (``/proc/vmcore`` of a Xen machine: Xen's crash-info note, p_paddr
machine addresses) are saved with zero pages left out only: free pages are
dom0's and Xen's business and dom0's ``struct page`` array is indexed by
pseudo-physical frame, so nothing in the dump's VMCOREINFO may be used to drop
machine frames.  Every note (Xen's, VMCOREINFO_XEN, dom0's VMCOREINFO, pykexec's)
is kept, so ``vmcore dmesg [--xen]`` works on the result.

Crash safety: the header says ``DUMP_DH_COMPRESSED_INCOMPLETE`` from the
first write and is rewritten without it only after everything else is on
disk (``fdatasync``), so a dump cut short by a read error, a full disk or a
power cut is still flagged as makedumpfile flags one.  Descriptors of pages
never reached stay zero.  DST is written in place (no temporary name):
whatever was saved stays useful.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
import time
import zlib

from pykexec.errors import KexecError, UsageError, report
from pykexec.layouts import kdump as L
from pykexec.layouts.elf import NT_PRSTATUS
from pykexec.vmcore import VmcoreError
from pykexec.vmcore.filtering import KINDS, excluded_pages, merge, set_bits, subtract

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from pykexec.vmcore.elfcore import ElfCore, Load
    from pykexec.vmcore.kdump import PageTables
    from pykexec.vmcore.vmcoreinfo import VmcoreInfo

#: Pages read, tested and compressed per round (8 MiB of 4 KiB pages).
CHUNK_PAGES = 2048
#: Default dump level 31: zero, cache, private cache, user and free pages left out,
#: what distributions' kdump configurations ask makedumpfile for (``-d 31``).
DEFAULT_DUMP_LEVEL = 31
#: Dump-level bits decided from the crashed kernel's struct pages (vmcore/filtering.py).
PAGE_STRUCT_BITS = L.DL_EXCLUDE_CACHE | L.DL_EXCLUDE_CACHE_PRI | L.DL_EXCLUDE_USER_DATA | L.DL_EXCLUDE_FREE
COMPRESSIONS = ("zstd", "zlib", "none")
#: Accepted ``--level`` per compression: zstd's negative levels trade size for speed.
LEVELS = {"zstd": (-50, 19), "zlib": (1, 9)}
FORMATS = ("kdump", "elf")
#: makedumpfile's own spellings, for kdump configurations written for it.
MAKEDUMPFILE_FLAGS = {"-c": ("compress", "zlib"), "-z": ("compress", "zstd"), "-E": ("fmt", "elf")}
#: ``--format elf``: left-out runs of at least this many pages split a PT_LOAD
#: (makedumpfile's PFN_EXCLUDED); shorter ones are stored as zeros.
ELF_GAP_PAGES = 256
XEN_FILTER_NOTE = ("a Xen dump: only zero pages are left out (dom0's struct pages count pseudo-physical "
                   "frames, the dump machine frames)")


class SaveResult:
    """What :func:`save` did (a plain class: dataclasses is slow to import)."""

    def __init__(self) -> None:
        self.ram_pages = 0        # pages in the 1st bitmap
        self.excluded = dict.fromkeys(KINDS, 0)  # pages left out, per kind (filtering.KINDS)
        self.filter_note = ""     # why pages the dump level asks to leave out were kept
        self.saved_pages = 0      # descriptors written
        self.zero_pages = 0       # of those, pointing at the shared zero page
        self.raw_pages = 0        # stored uncompressed
        self.read_bytes = 0
        self.out_bytes = 0
        self.seconds = 0.0
        self.incomplete = ""      # why the dump is incomplete; "" if complete

    @property
    def free_pages(self) -> int:
        return self.excluded["free"]


# -- the physical memory of the source ---------------------------------------------------------

class Run:
    """Pages ``[pfn, end)`` of one PT_LOAD.  Page ``p`` is at file offset
    ``base + p * page_size``; the segment's bytes are ``[lo, full)`` of the
    file (zeros outside: partial pages at the edges), of which ``[lo, hi)``
    exist (``hi < full``: the file is truncated)."""

    __slots__ = ("pfn", "end", "base", "lo", "hi", "full")

    def __init__(self, pfn: int, end: int, base: int, lo: int, hi: int, full: int) -> None:
        self.pfn, self.end, self.base, self.lo, self.hi, self.full = pfn, end, base, lo, hi, full


def ram_runs(loads: Sequence[Load], page: int) -> list[Run]:
    """The dump's physical pages, by pfn, each from the first PT_LOAD that holds it.

    x86_64 cores list the kernel text twice (its own PT_LOAD, and inside a
    RAM one); later duplicates are dropped.  Pages wholly past ``p_filesz``
    (excluded by an earlier filter) are not RAM we have, so not listed.
    """
    pieces: list[Run] = []
    for seg in loads:
        if seg.filesz == 0:
            continue
        pfn = seg.paddr // page
        end = -(-(seg.paddr + seg.filesz) // page)
        base = seg.offset - seg.paddr  # file offset of physical address 0, for this segment
        pieces.append(Run(pfn, end, base, seg.offset, seg.offset + seg.avail, seg.offset + seg.filesz))
    pieces.sort(key=lambda r: r.pfn)
    out: list[Run] = []
    covered = 0
    for r in pieces:
        if r.end <= covered:
            continue
        if r.pfn < covered:
            r.pfn = covered
        out.append(r)
        covered = r.end
    return out


# -- compression ---------------------------------------------------------------------------

def _zstd() -> object:
    try:
        import zstandard
    except ImportError as err:
        # Name the real cause: an installed module can fail to load (a missing library).
        raise VmcoreError(f"zstd compression needs the zstandard module, which does not load ({err}); "
                          "install it (pip install zstandard) or use --compress zlib") from None
    return zstandard


class _Pool:
    """Compress the pages of a batch, each page on its own (the format's unit), on
    ``threads`` CPUs.

    zstd: one ``multi_compress_to_buffer`` call per batch, which splits the pages
    over C threads with a context each (level 1, as makedumpfile ``-z``); no
    Python runs per page.  zlib (level 1, as ``-c``): worker threads, as
    ``zlib.compress`` releases the GIL.  Results are buffers in page order.
    """

    def __init__(self, kind: str, threads: int, level: int = 1) -> None:
        self.kind = kind
        self.threads = max(1, threads)
        self.level = level
        self._executor = None
        if kind == "zstd":
            zstandard = _zstd()
            # Telling zstd the input is one page shrinks its tables: 4 KiB frames
            # compress about 1.5x faster at the same ratio.
            params = zstandard.ZstdCompressionParameters.from_level(  # type: ignore[attr-defined]
                level, source_size=4096, write_checksum=0, write_content_size=1)
            self._cctx = zstandard.ZstdCompressor(compression_params=params)  # type: ignore[attr-defined]
        elif kind == "zlib" and self.threads > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(self.threads)

    def compress(self, buf: bytearray, offsets: list[int], page: int) -> Sequence[object] | None:
        """The pages of ``buf`` at ``offsets``, compressed; None for ``none``."""
        if self.kind == "zstd":
            if not offsets:
                return []
            # A list of page views: zstandard spreads a list over its threads (one
            # BufferWithSegments would go to a single thread).
            view = memoryview(buf)
            return self._cctx.multi_compress_to_buffer(  # type: ignore[no-any-return]
                [view[off:off + page] for off in offsets], threads=self.threads)
        if self.kind == "zlib":
            view = memoryview(buf)
            pages = [view[off:off + page] for off in offsets]
            if self._executor is None or len(pages) < 64:
                return [zlib.compress(p, self.level) for p in pages]
            step = -(-len(pages) // self.threads)
            parts = self._executor.map(lambda ps: [zlib.compress(p, self.level) for p in ps],
                                       [pages[i:i + step] for i in range(0, len(pages), step)])
            return [c for part in parts for c in part]
        return None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()


def default_threads() -> int:
    """CPUs this process may run on (a crash kernel usually has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# -- progress ------------------------------------------------------------------------------

def _create(dst: str, force: bool) -> int:
    """Open DST for writing: refused if it exists unless ``force``."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        return os.open(dst, flags | getattr(os, "O_CLOEXEC", 0), 0o600)
    except FileExistsError:
        raise UsageError(f"{dst} exists (use --force to overwrite it)") from None
    except OSError as err:
        raise VmcoreError(f"{dst}: cannot create: {err.strerror}") from None


class Progress:
    """One stderr line, rewritten with ``\\r``: percentage and input MB/s (terminals only)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = max(total, 1)
        self.enabled = enabled
        self.start = time.monotonic()
        self._next = self.start + 0.25

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + 0.25
        rate = done / max(now - self.start, 1e-6) / 1e6
        sys.stderr.write(f"\rpykexec: saving {100 * done // self.total:3d}%  {rate:7.0f} MB/s ")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 40 + "\r")
            sys.stderr.flush()


# -- the writer ------------------------------------------------------------------------------

def _utsname(core: ElfCore, tables: PageTables | None, info: VmcoreInfo) -> L.NewUtsname:
    """The crashed kernel's uname, from init_uts_ns (OSRELEASE alone if unreachable)."""
    uts = L.NewUtsname()
    raw = b""
    if info.has_symbol("init_uts_ns"):
        addr = info.symbol("init_uts_ns") + (info.offset("uts_namespace.name")
                                              if "OFFSET(uts_namespace.name)" in info else 4)
        try:
            raw = bytes(core.read(addr, ctypes.sizeof(uts)))
        except VmcoreError:
            if tables is not None:
                try:
                    raw = tables.read(addr, ctypes.sizeof(uts))
                except VmcoreError:
                    raw = b""
    if len(raw) == ctypes.sizeof(uts) and raw[:5] == b"Linux":
        ctypes.memmove(ctypes.addressof(uts), raw, len(raw))
    else:
        uts.sysname = b"Linux"
        uts.release = (info.osrelease or "").encode()[:64]
        uts.machine = b"x86_64"
    return uts


def check_paths(src: str, dst: str, force: bool) -> None:
    """Refuse DST == SRC, and an existing DST without ``force`` (UsageError)."""
    if os.path.realpath(src) == os.path.realpath(dst):
        raise UsageError(f"DST is the same file as SRC ({src})")
    if os.path.lexists(dst):
        try:
            if os.path.samefile(src, dst):
                raise UsageError(f"DST is the same file as SRC ({src})")
        except OSError:
            pass
        if not force:
            raise UsageError(f"{dst} exists (use --force to overwrite it)")
        if os.path.isdir(dst):
            raise UsageError(f"{dst} is a directory")


def _is_xen(core: ElfCore) -> bool:
    from pykexec.vmcore.xen import is_xen_dump

    return is_xen_dump(core.notes)


def save(src: str, dst: str, *, compress: str = "zstd", level: int = 1, dump_level: int = DEFAULT_DUMP_LEVEL,
         force: bool = False, threads: int | None = None, progress: bool | None = None,
         fmt: str = "kdump") -> SaveResult:
    """Write ``src`` (an ELF core, e.g. /proc/vmcore) to ``dst`` in kdump-compressed
    format (``fmt="kdump"``) or as a filtered ELF core (``fmt="elf"``).

    Returns a :class:`SaveResult`; ``result.incomplete`` is non-empty (and
    the file flagged) if the copy stopped early.  Raises :class:`UsageError`
    or :class:`VmcoreError` before anything is written.
    """
    from pykexec.vmcore.elfcore import ElfCore
    from pykexec.vmcore.kdump import PageTables

    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r} (expected kdump or elf)")
    if compress not in COMPRESSIONS:
        raise UsageError(f"unknown compression {compress!r} (expected zstd, zlib or none)")
    lo, hi = LEVELS.get(compress, (level, level))
    if not lo <= level <= hi:
        raise UsageError(f"{compress} level {level} out of range ({lo} to {hi})")
    if not 0 <= dump_level <= 31:
        raise UsageError(f"dump level {dump_level} out of range (0-31)")
    check_paths(src, dst, force)
    # The ELF format is not compressed: no compressor threads.
    pool = _Pool(compress if fmt == "kdump" else "none", threads if threads is not None else default_threads(), level)
    result = SaveResult()
    t0 = time.monotonic()
    with ElfCore(src) as core:
        xen = _is_xen(core)
        # A Xen dump is machine memory in 4 KiB frames; dom0's VMCOREINFO (if any)
        # describes dom0's pseudo-physical space and is not used to filter.
        info_or_none = core.vmcoreinfo if xen else core.require_vmcoreinfo()
        page = int(info_or_none.get("PAGESIZE") or 4096) if info_or_none is not None and not xen else 4096
        if page & (page - 1) or not 512 <= page <= 1 << 16:
            raise VmcoreError(f"{src}: implausible PAGESIZE={page}")
        runs = ram_runs(core.loads, page)
        if not runs:
            raise VmcoreError(f"{src}: no PT_LOAD with data: nothing to save")
        ram = merge([(r.pfn, r.end) for r in runs])
        max_mapnr = max(r.end for r in runs)
        result.ram_pages = sum(e - s for s, e in ram)

        tables: PageTables | None = None
        left_out: list[tuple[int, int]] = []
        if xen:
            if dump_level & PAGE_STRUCT_BITS:
                result.filter_note = XEN_FILTER_NOTE
        else:
            assert info_or_none is not None
            info = info_or_none
            try:
                tables = PageTables(lambda a, n: core.read(a, n, physical=True), info)
            except VmcoreError as err:
                if dump_level & PAGE_STRUCT_BITS:
                    result.filter_note = f"{err}: only zero pages left out"
            if tables is not None:
                exclusion = excluded_pages(info, tables, ram, page, dump_level)
                left_out = exclusion.ranges
                result.excluded = exclusion.counts
                result.filter_note = exclusion.note
        kept = subtract(ram, left_out)
        num_kept = sum(e - s for s, e in kept)
        if fmt == "elf":
            _save_elf(core, dst, kept, page, force, progress, result,
                      exclude_zero=bool(dump_level & L.DL_EXCLUDE_ZERO))
            pool.close()
            result.seconds = time.monotonic() - t0
            return result

        # -- layout ----------------------------------------------------------------
        bitmap_len = -(-max_mapnr // 8)
        bitmap_len = -(-bitmap_len // page) * page
        bitmap1 = bytearray(bitmap_len)
        bitmap2 = bytearray(bitmap_len)
        for s, e in ram:
            set_bits(bitmap1, s, e)
        for s, e in kept:
            set_bits(bitmap2, s, e)
        note_blob = _note_blob(core)
        sub_size = ctypes.sizeof(L.KdumpSubHeader)
        sub_hdr_blocks = -(-(sub_size + len(note_blob)) // page)
        bitmap_off = page * (L.DISKDUMP_HEADER_BLOCKS + sub_hdr_blocks)
        pd_off = bitmap_off + 2 * bitmap_len
        data_off = pd_off + num_kept * L.PAGE_DESC_FMT.size

        flag = L.COMPRESSION_FLAGS[compress]
        hdr = L.DiskDumpHeader()
        hdr.signature = L.KDUMP_SIGNATURE
        hdr.header_version = L.KDUMP_HEADER_VERSION
        hdr.utsname = _xen_utsname(core, info_or_none) if xen else _utsname(core, tables, info)
        hdr.timestamp.tv_sec = (info_or_none.crashtime if info_or_none is not None else None) or int(time.time())
        hdr.status = flag | L.DUMP_DH_COMPRESSED_INCOMPLETE
        hdr.block_size = page
        hdr.sub_hdr_size = sub_hdr_blocks
        hdr.bitmap_blocks = 2 * bitmap_len // page
        hdr.max_mapnr = min(max_mapnr, 0xFFFFFFFF)
        hdr.nr_cpus = sum(1 for n in core.notes if n.name == b"CORE" and n.type == NT_PRSTATUS)
        sub = L.KdumpSubHeader()
        sub.phys_base = (info.number("phys_base") & 0xFFFFFFFFFFFFFFFF
                         if not xen and info.has_number("phys_base") else 0)
        sub.dump_level = dump_level
        sub.offset_note = page * L.DISKDUMP_HEADER_BLOCKS + sub_size
        sub.size_note = len(note_blob)
        vmci = core.vmcoreinfo.raw if core.vmcoreinfo is not None else b""
        at = note_blob.find(vmci) if vmci else -1
        if at >= 0:
            sub.offset_vmcoreinfo = sub.offset_note + at
            sub.size_vmcoreinfo = len(vmci)
        sub.max_mapnr_64 = max_mapnr

        # -- write -----------------------------------------------------------------
        fd = _create(dst, force)
        show = sys.stderr.isatty() if progress is None else progress
        bar = Progress(num_kept * page, show)
        try:
            try:
                head = bytearray(bitmap_off)
                head[:ctypes.sizeof(hdr)] = bytes(hdr)
                head[page:page + sub_size] = bytes(sub)
                head[page + sub_size:page + sub_size + len(note_blob)] = note_blob
                _pwrite_all(fd, bytes(head), 0)
                _pwrite_all(fd, bytes(bitmap1) + bytes(bitmap2), bitmap_off)
                del bitmap1, bitmap2
                zero_page = bytes(page)
                _pwrite_all(fd, zero_page, data_off)  # the page every zero page points at
            except OSError as err:
                raise VmcoreError(f"{dst}: cannot write: {err.strerror}") from None
            _copy_pages(core, fd, runs, kept, page, pd_off, data_off, pool, bar, result, dst,
                        exclude_zero=bool(dump_level & L.DL_EXCLUDE_ZERO))
            bar.finish()
            if not result.incomplete:
                try:
                    os.fdatasync(fd)
                    hdr.status = flag
                    _pwrite_all(fd, bytes(hdr), 0)
                    os.fsync(fd)
                except OSError as err:
                    result.incomplete = f"cannot finish {dst}: {err.strerror}"
            else:
                try:
                    os.fsync(fd)
                except OSError:
                    pass
            result.out_bytes = os.fstat(fd).st_size
        finally:
            os.close(fd)
            pool.close()
    result.seconds = time.monotonic() - t0
    return result


def _xen_utsname(core: ElfCore, info: VmcoreInfo | None) -> L.NewUtsname:
    """dom0's uname for a Xen dump (read through dom0's page tables), else a minimal one."""
    if info is not None:
        from pykexec.vmcore.xen import dom0_memory

        try:
            return _utsname(dom0_memory(core), None, info)  # type: ignore[arg-type]
        except VmcoreError:
            pass
    uts = L.NewUtsname()
    uts.sysname = b"Linux"
    uts.release = ((info.osrelease if info is not None else None) or "").encode()[:64]
    uts.machine = b"x86_64"
    return uts


class _ElfPiece:
    """One output PT_LOAD: ``[paddr, paddr + memsz)`` of a source segment, whose first
    ``filesz`` bytes are at ``offset`` in DST."""

    __slots__ = ("vaddr", "paddr", "offset", "filesz", "memsz")

    def __init__(self, vaddr: int, paddr: int, offset: int) -> None:
        self.vaddr, self.paddr, self.offset = vaddr, paddr, offset
        self.filesz = 0
        self.memsz = 0


def _elf_header(machine: int, phnum: int, incomplete: bool) -> bytes:
    """ELF64 core header, program headers right after it; section header 0 carries
    the count when there are PN_XNUM (0xffff) or more of them."""
    from pykexec.layouts.elf import EHDR64_FMT, ELFCLASS64, ELFDATA2LSB, ELFMAG, ET_CORE, EV_CURRENT

    ident = ELFMAG + bytes([ELFCLASS64, ELFDATA2LSB, EV_CURRENT]) + bytes(9)
    xnum = phnum >= 0xFFFF
    shoff = 64 + phnum * 56 if xnum else 0
    return EHDR64_FMT.pack(ident, ET_CORE, machine, EV_CURRENT, 0, 64, shoff, 1 if incomplete else 0,
                           64, 56, 0xFFFF if xnum else phnum, 64 if xnum else 0, 1 if xnum else 0, 0)


def _save_elf(core: ElfCore, dst: str, kept: list[tuple[int, int]], page: int, force: bool,
              progress: bool | None, result: SaveResult, *, exclude_zero: bool) -> None:
    """Write the kept pages of ``core`` to ``dst`` as a filtered ELF core (see the module
    docstring for the layout)."""
    from pykexec.layouts.elf import PHDR64_FMT, PT_LOAD, PT_NOTE, SHDR64_FMT

    loads = list(core.loads)
    # Kept pfn ranges of each source segment, and the most PT_LOADs they can need.
    per_load: list[list[tuple[int, int]]] = []
    bound = 1  # the PT_NOTE
    for seg in loads:
        lo = seg.paddr // page
        hi = -(-(seg.paddr + seg.filesz) // page)
        ranges = [(max(s, lo), min(e, hi)) for s, e in kept if s < hi and e > lo]
        per_load.append(ranges)
        bound += 1 + len(ranges) + sum(e - s for s, e in ranges) // ELF_GAP_PAGES
    note_blob = _note_blob(core)
    head = 64 + bound * 56 + (64 if bound >= 0xFFFF else 0)
    note_off = head
    data_start = -(-(note_off + len(note_blob)) // page) * page

    fd = _create(dst, force)
    pieces: list[_ElfPiece] = []
    show = sys.stderr.isatty() if progress is None else progress
    bar = Progress(sum(e - s for s, e in kept) * page, show)
    src_fd = os.open(core.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    end_of_data = data_start
    try:
        try:
            # Incomplete until the end: a header with only the notes, flagged.
            note_ph = PHDR64_FMT.pack(PT_NOTE, 0, note_off, 0, 0, len(note_blob), len(note_blob), 0)
            _pwrite_all(fd, _elf_header(core.machine, 1, True) + note_ph, 0)
            _pwrite_all(fd, note_blob, note_off)
        except OSError as err:
            raise VmcoreError(f"{dst}: cannot write: {err.strerror}") from None
        buf = bytearray(CHUNK_PAGES * page)
        zero_page = bytes(page)
        next_off = data_start
        for seg, ranges in zip(loads, per_load):
            seg_end = seg.paddr + seg.memsz
            data_end = seg.paddr + seg.filesz
            cur: _ElfPiece | None = None
            last = seg.paddr  # end of the last kept bytes (paddr)

            def start_piece(paddr: int) -> _ElfPiece:
                off = next_off + (paddr - next_off) % page  # file offset = paddr (mod page)
                piece = _ElfPiece(seg.vaddr + (paddr - seg.paddr), paddr, off)
                pieces.append(piece)
                return piece

            for s, e in ranges:
                pfn = s
                while pfn < e and not result.incomplete:
                    n = min(e - pfn, CHUNK_PAGES)
                    a = max(pfn * page, seg.paddr)  # bytes [a, b) of this chunk inside the segment
                    b = min((pfn + n) * page, data_end)
                    view = memoryview(buf)[:(pfn + n - pfn) * page]
                    lead = a - pfn * page
                    if lead or b < (pfn + n) * page:
                        view[:] = bytes(len(view))
                    want = min(b, seg.paddr + seg.avail) - a
                    if want < b - a:
                        result.incomplete = f"{core.path} is truncated at offset {seg.offset + seg.avail:#x}"
                    if want > 0:
                        try:
                            got = os.preadv(src_fd, [view[lead:lead + want]], seg.offset + a - seg.paddr)
                        except OSError as err:
                            result.incomplete = f"read error in {core.path}: {err.strerror}"
                            break
                        if got != want:
                            result.incomplete = f"{core.path} ends early (truncated)"
                            break
                    # Runs of kept, non-zero pages of this chunk, as byte ranges.
                    i = 0
                    while i < n:
                        if exclude_zero and buf.startswith(zero_page, i * page):
                            result.zero_pages += 1
                            i += 1
                            continue
                        j = i + 1
                        while j < n and not (exclude_zero and buf.startswith(zero_page, j * page)):
                            j += 1
                        ra = max((pfn + i) * page, a)
                        rb = min((pfn + j) * page, b)
                        if rb > ra:
                            if cur is None:
                                if ra - seg.paddr >= ELF_GAP_PAGES * page:  # long leading gap
                                    start_piece(seg.paddr).memsz = ra - seg.paddr
                                    cur = start_piece(ra)
                                else:
                                    cur = start_piece(seg.paddr)
                            elif ra - last >= ELF_GAP_PAGES * page:
                                cur.memsz = ra - cur.paddr
                                next_off = cur.offset + cur.filesz
                                cur = start_piece(ra)
                            try:
                                _pwrite_all(fd, view[ra - pfn * page:rb - pfn * page],
                                            cur.offset + (ra - cur.paddr))
                            except OSError as err:
                                result.incomplete = f"cannot write {dst}: {err.strerror}"
                                break
                            cur.filesz = rb - cur.paddr
                            last = rb
                            result.saved_pages += j - i
                            end_of_data = max(end_of_data, cur.offset + cur.filesz)
                        i = j
                    result.read_bytes += n * page
                    bar.update(result.read_bytes)
                    pfn += n
                if result.incomplete:
                    break
            if cur is None:  # nothing kept: the whole segment reads as zeros
                cur = start_piece(seg.paddr)
            if not result.incomplete and data_end - last < ELF_GAP_PAGES * page:
                cur.filesz = data_end - cur.paddr  # a short left-out tail: zeros (holes) in DST
                end_of_data = max(end_of_data, cur.offset + cur.filesz)
            cur.memsz = seg_end - cur.paddr
            next_off = -(-(cur.offset + cur.filesz) // page) * page
            if result.incomplete:
                break
        bar.finish()
        if len(pieces) + 1 > bound:  # cannot happen: the bound counts every possible split
            raise VmcoreError(f"internal error: {len(pieces) + 1} program headers, room for {bound}")
        phdrs = [PHDR64_FMT.pack(PT_NOTE, 0, note_off, 0, 0, len(note_blob), len(note_blob), 0)]
        phdrs += [PHDR64_FMT.pack(PT_LOAD, 7, p.offset, p.vaddr, p.paddr, p.filesz, p.memsz, 0)
                  for p in pieces]
        table = b"".join(phdrs)
        if len(phdrs) >= 0xFFFF:  # section header 0: sh_info = the real count
            table += SHDR64_FMT.pack(0, 0, 0, 0, 0, 0, 0, len(phdrs), 0, 0)
        try:
            os.ftruncate(fd, max(end_of_data, data_start))  # trailing left-out pages: holes
            _pwrite_all(fd, table, 64)
            if not result.incomplete:
                os.fdatasync(fd)
            _pwrite_all(fd, _elf_header(core.machine, len(phdrs), bool(result.incomplete)), 0)
            os.fsync(fd)
        except OSError as err:
            result.incomplete = result.incomplete or f"cannot finish {dst}: {err.strerror}"
        result.out_bytes = os.fstat(fd).st_size
    finally:
        os.close(src_fd)
        os.close(fd)


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    mv = memoryview(data)
    while mv:
        n = os.pwrite(fd, mv, offset)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        mv = mv[n:]
        offset += n


def _note_blob(core: ElfCore) -> bytes:
    """The source's notes re-packed in order (what makedumpfile stores as offset_note)."""
    from pykexec.layouts.elf import pack_note

    return b"".join(pack_note(n.name, n.type, n.desc) for n in core.notes)


def _copy_pages(core: ElfCore, fd: int, runs: list[Run], kept: list[tuple[int, int]], page: int,
                pd_off: int, data_off: int, pool: _Pool, bar: Progress, result: SaveResult,
                dst: str, *, exclude_zero: bool) -> None:
    """Stream every kept page: read, test for zero, compress, append; descriptors as we go.

    Kept pages are gathered into batches of :data:`CHUNK_PAGES` (one ``preadv``
    per contiguous piece), so a selection cut into many short runs still
    compresses in large calls.  Stops at the first read or write error,
    recording it in ``result.incomplete``; the pages read before it are saved.
    """
    pd = L.PAGE_DESC_FMT
    flag = L.COMPRESSION_FLAGS[pool.kind]
    zero_desc = pd.pack(data_off, page, 0, 0)
    out_pos = data_off + page
    pd_index = 0
    zero_page = bytes(page)
    buf = bytearray(CHUNK_PAGES * page)
    view = memoryview(buf)
    zero_chunk = bytes(len(buf))
    src_fd = os.open(core.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    def flush(n: int) -> bool:
        """Compress and write the first ``n`` pages of the batch; False on a write error."""
        nonlocal out_pos, pd_index
        nbytes = n * page
        descs = bytearray()
        pieces: list[object] = []
        if exclude_zero and buf.startswith(zero_chunk[:nbytes]):
            descs += zero_desc * n
            result.zero_pages += n
        else:
            offsets = [i for i in range(0, nbytes, page)
                       if not (exclude_zero and buf.startswith(zero_page, i))]
            comp = pool.compress(buf, offsets, page)
            k = 0
            for i in range(0, nbytes, page):
                if k == len(offsets) or offsets[k] != i:
                    descs += zero_desc
                    result.zero_pages += 1
                    continue
                c = comp[k] if comp is not None else None
                size = len(c) if c is not None else page  # type: ignore[arg-type]
                if size < page:
                    descs += pd.pack(out_pos, size, flag, 0)
                    pieces.append(c)
                else:  # does not shrink: stored raw, as makedumpfile does
                    descs += pd.pack(out_pos, page, 0, 0)
                    pieces.append(view[i:i + page])
                    size = page
                    result.raw_pages += 1
                out_pos += size
                k += 1
        # Data first, then the descriptors that point at it.
        try:
            if pieces:
                data = b"".join(pieces)  # type: ignore[arg-type]
                _pwrite_all(fd, data, out_pos - len(data))
            _pwrite_all(fd, descs, pd_off + pd_index * pd.size)
        except OSError as e:
            result.incomplete = f"cannot write {dst}: {e.strerror}"
            return False
        pd_index += n
        result.saved_pages = pd_index
        result.read_bytes += nbytes
        bar.update(result.read_bytes)
        return True

    fill = 0  # pages in the batch
    ri = 0
    try:
        for start, end in kept:
            pfn = start
            while pfn < end:
                while runs[ri].end <= pfn:
                    ri += 1
                run = runs[ri]
                n = min(end, run.end, pfn + CHUNK_PAGES - fill) - pfn
                nbytes = n * page
                at = fill * page
                # Read; zeros outside the segment (partial pages at its edges).
                off = run.base + pfn * page
                lo, hi = max(off, run.lo), min(off + nbytes, run.full)
                if lo > off or hi < off + nbytes:
                    view[at:at + nbytes] = zero_chunk[:nbytes]
                if hi > run.hi:
                    result.incomplete = f"{core.path} is truncated at offset {run.hi:#x}"
                    hi = max(lo, run.hi)  # save what is there, then stop
                if hi > lo:
                    try:
                        got = os.preadv(src_fd, [view[at + lo - off:at + hi - off]], lo)
                    except OSError as e:
                        result.incomplete = f"read error in {core.path} at offset {lo:#x}: {e.strerror}"
                        got = -1
                    if got != hi - lo and not result.incomplete:
                        result.incomplete = f"{core.path} ends at offset {lo + max(got, 0):#x} (truncated)"
                if result.incomplete:
                    if hi > lo and got == hi - lo:  # keep the whole pages read before the end
                        fill += (hi - off) // page
                    flush(fill)
                    return
                fill += n
                pfn += n
                if fill == CHUNK_PAGES:
                    if not flush(fill):
                        return
                    fill = 0
        if fill:
            flush(fill)
    finally:
        os.close(src_fd)


def summary(result: SaveResult, dst: str) -> str:
    """The one line printed when a save completes."""
    mb = 1e6
    rate = result.read_bytes / max(result.seconds, 1e-6) / mb
    left = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in result.excluded.items() if n)
    return (f"pykexec: saved {dst}: {result.saved_pages} of {result.ram_pages} pages "
            f"({result.zero_pages} of them zero; left out: {left or 'none'}), {result.out_bytes / mb:.1f} MB "
            f"in {result.seconds:.2f} s ({rate:.0f} MB/s)\n")


SAVE_USAGE = """\
usage: pykexec vmcore save [options] SRC DST

Save a crash dump (an ELF core such as /proc/vmcore) to DST in makedumpfile's
kdump-compressed format, read by crash, makedumpfile, libkdumpfile and drgn.
By default (-d 31) zero, page-cache, user and free pages are left out, as
makedumpfile -d 31 leaves them out; every other page is compressed.  Dumps
of a Xen machine keep every non-zero page.

options:
  --format FORMAT   kdump (default) or elf: an uncompressed ELF core with the
                    same pages, as makedumpfile -E writes (read by vmcore-dmesg,
                    crash, gdb); left-out pages read as zeros
  --compress KIND   zstd (default), zlib (readable by older makedumpfile/crash
                    builds without zstd) or none
  --level N         compression level: zstd -50 to 19 (default 1, as makedumpfile
                    -z; negative levels are faster and larger), zlib 1 to 9
                    (default 1, as makedumpfile -c)
  -d, --dump-level N
                    makedumpfile's dump level, the sum of what to leave out:
                    1 zero pages, 2 page cache, 4 page cache with private data,
                    8 user data, 16 free pages; default 31, 0 keeps every page
  --threads N       compression threads (default: one per CPU)
  -c, -z, -E        makedumpfile's spellings of --compress zlib, --compress zstd
                    and --format elf (-l and -p, lzo and snappy, are not written)
  -f, --force       overwrite DST if it exists
  -h, --help        show this help

A dump that stops early (read error, full disk) is kept, flagged incomplete
in its header as makedumpfile does, and the exit status is 1.
"""


def parse_args(argv: list[str]) -> dict[str, object] | None:
    """Options of ``vmcore save`` as keyword arguments of :func:`save`; None for --help."""
    opts: dict[str, object] = {}
    paths: list[str] = []
    args = list(argv)

    def value(name: str, inline: str | None) -> str:
        if inline is not None:
            return inline
        if not args:
            raise UsageError(f"{name} needs a value")
        return args.pop(0)

    def number(name: str, inline: str | None, base: int = 10) -> int:
        text = value(name, inline)
        try:
            return int(text, base)
        except ValueError:
            raise UsageError(f"{name} needs a number, not {text!r}") from None

    while args:
        arg = args.pop(0)
        if arg == "--":
            paths += args
            break
        name, eq, inline = arg.partition("=")
        val = inline if eq else None
        if arg in ("-h", "--help"):
            return None
        if name == "--compress":
            opts["compress"] = value(name, val)
        elif name == "--level":
            opts["level"] = number(name, val)
        elif name == "--format":
            opts["fmt"] = value(name, val)
        elif name in ("-d", "--dump-level"):
            opts["dump_level"] = number(name, val, 0)
        elif name == "--threads":
            text = value(name, val)
            if not text.isdigit() or int(text) < 1:
                raise UsageError(f"--threads needs a positive number, not {text!r}")
            opts["threads"] = int(text)
        elif arg in ("-f", "--force"):
            opts["force"] = True
        elif arg in MAKEDUMPFILE_FLAGS:  # what a kdump configuration passes makedumpfile
            key, val = MAKEDUMPFILE_FLAGS[arg]
            opts[key] = val
        elif arg in ("-l", "-p"):
            raise UsageError(f"{arg} ({'lzo' if arg == '-l' else 'snappy'}) is not written by pykexec: "
                             "use -z (zstd, the default; smaller) or -c (zlib)")
        elif arg.startswith("-d") and len(arg) > 2:
            args.insert(0, arg[2:])
            args.insert(0, "-d")
        elif arg.startswith("-") and arg != "-":
            raise UsageError(f"unknown option {arg}")
        else:
            paths.append(arg)
    if len(paths) != 2:
        raise UsageError("expected SRC and DST")
    opts["src"], opts["dst"] = paths
    return opts


def main(argv: list[str]) -> int:
    """``pykexec vmcore save ...``; returns the exit status (one line on stderr on failure)."""
    try:
        opts = parse_args(argv)
        if opts is None:
            sys.stdout.write(SAVE_USAGE)
            return 0
        result = save(**opts)  # type: ignore[arg-type]
    except KexecError as err:
        return report(err, "pykexec vmcore save")
    except KeyboardInterrupt:
        sys.stderr.write("pykexec: interrupted; the dump is flagged incomplete\n")
        return 130
    dst = str(opts["dst"])
    if result.filter_note:
        sys.stderr.write(f"pykexec: {result.filter_note}\n")
    if result.incomplete:
        sys.stderr.write(f"pykexec: {dst} is INCOMPLETE ({result.saved_pages} of "
                         f"{result.ram_pages - sum(result.excluded.values())} pages saved): "
                         f"{result.incomplete}\n")
        return 1
    if sys.stderr.isatty():
        sys.stderr.write(summary(result, dst))
    return 0
