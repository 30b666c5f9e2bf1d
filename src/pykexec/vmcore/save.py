"""``pykexec vmcore save SRC DST``: stream an ELF dump to makedumpfile's kdump-compressed
format (:mod:`pykexec.vmcore.kdump_writer`), or (``--format elf``) to a filtered ELF
core (:mod:`pykexec.vmcore.elf_writer`); with ``-F``, either one to standard output as
a flattened stream (:mod:`pykexec.vmcore.output`).  This module decides which pages
go, runs the writer, and reports.

What is left out (makedumpfile's dump levels, ``-d``):

* bit 1, zero pages: found while copying, by the writer (the kdump format
  keeps them in its 2nd bitmap, pointing at one shared zero page; the ELF
  format leaves holes), so they still read back as zeros;
* bits 2, 4, 8 and 16 (page cache, page cache with private data, user
  data, free pages): decided before copying from the crashed kernel's
  ``struct page`` array with VMCOREINFO only, by makedumpfile's rules
  (:mod:`pykexec.vmcore.filtering`).  Pages a kernel does not let us judge
  (missing keys) are kept, with a one-line notice.

Xen dumps (``/proc/vmcore`` of a Xen machine: Xen's crash-info note, p_paddr
machine addresses) are filtered by Xen's frame table, from VMCOREINFO_XEN alone
(:mod:`pykexec.vmcore.xen_filter`): bit 16 leaves out Xen's free frames, bit 8 the
frames of domains other than dom0 (a guest's memory is user data to the host;
``xen_keep_domains`` keeps named ones); Xen's own frames are kept.  Dom0's frames
are judged as a Linux dump's pages, by dom0's struct pages read through its page
tables, its pseudo-physical frames mapped to machine frames by its p2m.  Every note
(Xen's, VMCOREINFO_XEN, dom0's VMCOREINFO, pykexec's) is kept, so ``vmcore dmesg
[--xen]`` works on the result.

DST is written in place (no temporary name) and flagged incomplete until its
last write: whatever was saved stays useful.
"""

from __future__ import annotations

import os
import sys
import time

from pykexec.errors import UsageError
from pykexec.layouts import kdump as L
from pykexec.vmcore.errors import VmcoreError
from pykexec.vmcore.page_rules import KINDS
from pykexec.vmcore.pfn_runs import merge, subtract

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from pykexec.vmcore.elfcore import ElfCore, Load
    from pykexec.vmcore.paging import PageTables

#: Default dump level 31: zero, cache, private cache, user and free pages left out,
#: what distributions' kdump configurations ask makedumpfile for (``-d 31``).
DEFAULT_DUMP_LEVEL = 31
#: Dump-level bits decided from the crashed kernel's struct pages (vmcore/filtering.py).
PAGE_STRUCT_BITS = L.DL_EXCLUDE_CACHE | L.DL_EXCLUDE_CACHE_PRI | L.DL_EXCLUDE_USER_DATA | L.DL_EXCLUDE_FREE
COMPRESSIONS = ("zstd", "zlib", "lzo", "snappy", "none")
#: Accepted ``--level`` per compression: zstd's negative levels trade size for speed;
#: lzo and snappy have one (makedumpfile's).
LEVELS = {"zstd": (-50, 19), "zlib": (1, 9), "lzo": (1, 1), "snappy": (1, 1)}
FORMATS = ("kdump", "elf")


class SaveResult:
    """What :func:`save` did (a plain class: dataclasses is slow to import)."""

    def __init__(self) -> None:
        self.ram_pages = 0        # pages in the 1st bitmap
        self.excluded = dict.fromkeys(KINDS, 0)  # pages left out, per kind (page_rules.KINDS)
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


# -- progress ------------------------------------------------------------------------------

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


# -- the save ------------------------------------------------------------------------------

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


def _xen_left_out(core: ElfCore, ram: list[tuple[int, int]], dump_level: int, keep: Sequence[int],
                  result: SaveResult) -> list[tuple[int, int]]:
    """The frames of a Xen dump that ``dump_level`` leaves out; counts and notes in ``result``."""
    from pykexec.vmcore.xen_filter import dom0_excluded_frames, xen_excluded_pages

    drop_free, drop_guests = bool(dump_level & L.DL_EXCLUDE_FREE), bool(dump_level & L.DL_EXCLUDE_USER_DATA)
    left_out: list[tuple[int, int]] = []
    notes: list[str] = []
    if drop_free or drop_guests:
        ex = xen_excluded_pages(core, ram, drop_free=drop_free, drop_guests=drop_guests, keep_domains=keep)
        left_out += ex.ranges
        result.excluded.update(ex.counts)
        notes.append(ex.note)
    if dump_level & PAGE_STRUCT_BITS:
        frames, counts, note = dom0_excluded_frames(core, dump_level)
        left_out += frames
        for kind, n in counts.items():
            result.excluded[kind] = result.excluded.get(kind, 0) + n
        notes.append(note)
    result.filter_note = "; ".join(n for n in notes if n)
    return merge(left_out)


def save(src: str, dst: str | int, *, compress: str = "zstd", level: int = 1, dump_level: int = DEFAULT_DUMP_LEVEL,
         force: bool = False, threads: int | None = None, progress: bool | None = None,
         fmt: str = "kdump", xen_keep_domains: Sequence[int] = ()) -> SaveResult:
    """Write ``src`` (an ELF core, e.g. /proc/vmcore, or a flattened stream of one) to
    ``dst`` in kdump-compressed format (``fmt="kdump"``) or as a filtered ELF core
    (``fmt="elf"``).  ``dst`` ``"-"`` (standard output) or a file descriptor (a pipe)
    gets the same file as a flattened stream (makedumpfile -F).  ``xen_keep_domains``:
    ids of domains whose frames a Xen dump keeps besides dom0's.

    Returns a :class:`SaveResult`; ``result.incomplete`` is non-empty (and
    the file flagged) if the copy stopped early.  Raises :class:`UsageError`
    or :class:`VmcoreError` before anything is written.
    """
    from pykexec.vmcore.elf_writer import write_elf
    from pykexec.vmcore.filtering import excluded_pages
    from pykexec.vmcore.kdump_writer import write_kdump
    from pykexec.vmcore.page_codecs import PageCompressor, default_threads
    from pykexec.vmcore.open import open_elf
    from pykexec.vmcore.output import STDOUT
    from pykexec.vmcore.paging import PageTables

    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r} (expected kdump or elf)")
    if compress not in COMPRESSIONS:
        raise UsageError(f"unknown compression {compress!r} (expected {', '.join(COMPRESSIONS[:-1])} or none)")
    lo, hi = LEVELS.get(compress, (level, level))
    if not lo <= level <= hi:
        raise UsageError(f"{compress} level {level} out of range ({lo} to {hi})")
    if not 0 <= dump_level <= 31:
        raise UsageError(f"dump level {dump_level} out of range (0-31)")
    if isinstance(dst, str) and dst != STDOUT:
        check_paths(src, dst, force)
    # The ELF format is not compressed: no compressor threads.
    pool = PageCompressor(compress, threads if threads is not None else default_threads(), level) \
        if fmt == "kdump" else None
    result = SaveResult()
    t0 = time.monotonic()
    try:
        with open_elf(src) as core:
            xen = _is_xen(core)
            # A Xen dump is machine memory in 4 KiB frames; dom0's VMCOREINFO (if any)
            # describes dom0's pseudo-physical space and is not used to filter.
            info = core.vmcoreinfo if xen else core.require_vmcoreinfo()
            page = int(info.get("PAGESIZE") or 4096) if info is not None and not xen else 4096
            if page & (page - 1) or not 512 <= page <= 1 << 16:
                raise VmcoreError(f"{src}: implausible PAGESIZE={page}")
            runs = ram_runs(core.loads, page)
            if not runs:
                raise VmcoreError(f"{src}: no PT_LOAD with data: nothing to save")
            ram = merge([(r.pfn, r.end) for r in runs])
            result.ram_pages = sum(e - s for s, e in ram)

            tables: PageTables | None = None
            left_out: list[tuple[int, int]] = []
            if xen:
                left_out = _xen_left_out(core, ram, dump_level, xen_keep_domains, result)
            elif xen_keep_domains:
                raise UsageError("--xen-keep-domain applies to dumps of a Xen machine only")
            else:
                assert info is not None
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
            show = sys.stderr.isatty() if progress is None else progress
            bar = Progress(sum(e - s for s, e in kept) * page, show)
            exclude_zero = bool(dump_level & L.DL_EXCLUDE_ZERO)
            if pool is None:
                write_elf(core, dst, force, kept=kept, page=page, bar=bar, result=result, exclude_zero=exclude_zero)
            else:
                write_kdump(core, dst, force, runs=runs, ram=ram, kept=kept, page=page, dump_level=dump_level,
                            info=info, tables=tables, xen=xen, pool=pool, bar=bar, result=result)
    finally:
        if pool is not None:
            pool.close()
    result.seconds = time.monotonic() - t0
    return result


def summary(result: SaveResult, dst: str) -> str:
    """The one line printed when a save completes."""
    mb = 1e6
    rate = result.read_bytes / max(result.seconds, 1e-6) / mb
    left = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in result.excluded.items() if n)
    return (f"pykexec: saved {dst}: {result.saved_pages} of {result.ram_pages} pages "
            f"({result.zero_pages} of them zero; left out: {left or 'none'}), {result.out_bytes / mb:.1f} MB "
            f"in {result.seconds:.2f} s ({rate:.0f} MB/s)\n")
