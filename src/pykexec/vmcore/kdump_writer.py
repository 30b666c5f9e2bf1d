"""``vmcore save``'s kdump-compressed writer: makedumpfile's format, read by crash,
makedumpfile, libkdumpfile and drgn (layouts in :mod:`pykexec.layouts.kdump`).

The file: the disk-dump header, the sub-header with the source's notes, two
bitmaps (the 1st: pages the dump holds; the 2nd: pages saved), one page
descriptor per saved page, then the pages.  Zero pages stay in the 2nd bitmap,
as makedumpfile keeps them: their descriptors all point at one zero page written
first, so they still read back as zeros.

Kept pages are copied (:meth:`~pykexec.vmcore.elfcore.ElfCore.readinto`: from the map of
``/proc/vmcore``, with pread from a regular file, where a map would turn an I/O error into
SIGBUS) into batches of :data:`~pykexec.vmcore.output.CHUNK_PAGES`, one call per contiguous piece; whole-batch and per-page zero tests are ``memcmp``
(``bytearray.startswith``).  Pages are compressed one by one (the format's unit),
a batch at a time, by :class:`~pykexec.vmcore.page_codecs.PageCompressor` (zstd,
zlib, lzo or snappy, as makedumpfile's ``-z``/``-c``/``-l``/``-p``); a page that
does not shrink is stored raw.

Crash safety: the header says ``DUMP_DH_COMPRESSED_INCOMPLETE`` from the first
write and is rewritten without it only after everything else is on disk
(``fdatasync``), so a dump cut short by a read error, a full disk or a power cut
is still flagged as makedumpfile flags one.  Descriptors of pages never reached
stay zero.  The kernel image's page tables and the image itself (from its end: data, bss,
the log) are written first, so that ``vmcore dmesg`` reads the whole log of a save killed
early (a kill -9, a crash kernel's watchdog): descriptors say where each page is, in any
order.  A flattened stream (``vmcore save -F``) says it is whole with its end
marker instead: its header is written once, unflagged, and again (flagged) only if
the copy stopped early, so that a whole stream has no two records at one offset.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections import deque
from itertools import accumulate, compress, repeat
from operator import not_

from pykexec.layouts import kdump as L
from pykexec.layouts.elf import NT_PRSTATUS
from pykexec.layouts.x86_paging import START_KERNEL_MAP
from pykexec.vmcore.errors import VmcoreError
from pykexec.vmcore.output import CHUNK_PAGES, note_blob, open_output
from pykexec.vmcore.pfn_runs import merge, set_bits

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from pykexec.vmcore.dump_memory import DumpMemory
    from pykexec.vmcore.elfcore import ElfCore
    from pykexec.vmcore.output import Output
    from pykexec.vmcore.page_codecs import PageCompressor
    from pykexec.vmcore.paging import PageTables
    from pykexec.vmcore.save import Progress, Run, SaveResult
    from pykexec.vmcore.vmcoreinfo import VmcoreInfo


# -- the headers ---------------------------------------------------------------------------

def _minimal_utsname(info: VmcoreInfo | None) -> L.NewUtsname:
    """A uname with VMCOREINFO's OSRELEASE alone, for a kernel whose init_uts_ns is out of reach."""
    uts = L.NewUtsname()
    uts.sysname = b"Linux"
    uts.release = ((info.osrelease if info is not None else None) or "").encode()[:64]
    uts.machine = b"x86_64"
    return uts


def _utsname(core: DumpMemory, tables: PageTables | None, info: VmcoreInfo) -> L.NewUtsname:
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
        return uts
    return _minimal_utsname(info)


def _xen_utsname(core: ElfCore, info: VmcoreInfo | None) -> L.NewUtsname:
    """dom0's uname for a Xen dump (read through dom0's page tables), else a minimal one."""
    if info is not None:
        from pykexec.vmcore.xen import dom0_memory

        try:
            return _utsname(dom0_memory(core), None, info)
        except VmcoreError:
            pass
    return _minimal_utsname(info)


def _headers(core: ElfCore, info: VmcoreInfo | None, tables: PageTables | None, xen: bool, *, compress: str,
             page: int, max_mapnr: int, bitmap_len: int, notes: bytes,
             dump_level: int) -> tuple[L.DiskDumpHeader, L.KdumpSubHeader]:
    """The disk-dump header (flagged incomplete) and the sub-header that follows it."""
    sub_size = ctypes.sizeof(L.KdumpSubHeader)
    hdr = L.DiskDumpHeader()
    hdr.signature = L.KDUMP_SIGNATURE
    hdr.header_version = L.KDUMP_HEADER_VERSION
    if xen:
        hdr.utsname = _xen_utsname(core, info)
    else:
        assert info is not None
        hdr.utsname = _utsname(core, tables, info)
    hdr.timestamp.tv_sec = (info.crashtime if info is not None else None) or int(time.time())
    hdr.status = L.COMPRESSION_FLAGS[compress] | L.DUMP_DH_COMPRESSED_INCOMPLETE
    hdr.block_size = page
    hdr.sub_hdr_size = -(-(sub_size + len(notes)) // page)
    hdr.bitmap_blocks = 2 * bitmap_len // page
    hdr.max_mapnr = min(max_mapnr, 0xFFFFFFFF)
    hdr.nr_cpus = sum(1 for n in core.notes if n.name == b"CORE" and n.type == NT_PRSTATUS)
    sub = L.KdumpSubHeader()
    sub.phys_base = (info.number("phys_base") & 0xFFFFFFFFFFFFFFFF
                     if not xen and info is not None and info.has_number("phys_base") else 0)
    sub.dump_level = dump_level
    sub.offset_note = page * L.DISKDUMP_HEADER_BLOCKS + sub_size
    sub.size_note = len(notes)
    vmci = core.vmcoreinfo.raw if core.vmcoreinfo is not None else b""
    at = notes.find(vmci) if vmci else -1
    if at >= 0:
        sub.offset_vmcoreinfo = sub.offset_note + at
        sub.size_vmcoreinfo = len(vmci)
    sub.max_mapnr_64 = max_mapnr
    return hdr, sub


# -- the file ------------------------------------------------------------------------------

def write_kdump(core: ElfCore, dst: str | int, force: bool, *, runs: list[Run], ram: list[tuple[int, int]],
                kept: list[tuple[int, int]], page: int, dump_level: int, info: VmcoreInfo | None,
                tables: PageTables | None, xen: bool, pool: PageCompressor, bar: Progress,
                result: SaveResult) -> None:
    """Write the ``kept`` pages of ``core`` (``ram``: every page it holds, found in
    the file through ``runs``) to a new kdump-compressed file ``dst`` (or a flattened
    stream: :func:`~pykexec.vmcore.output.open_output`), filling ``result``; ``info``
    and ``tables`` give the header its uname and phys_base."""
    # -- layout ----------------------------------------------------------------
    max_mapnr = max(r.end for r in runs)
    num_kept = sum(e - s for s, e in kept)
    bitmap_len = -(-max_mapnr // 8)
    bitmap_len = -(-bitmap_len // page) * page
    bitmap1 = bytearray(bitmap_len)
    bitmap2 = bytearray(bitmap_len)
    for s, e in ram:
        set_bits(bitmap1, s, e)
    for s, e in kept:
        set_bits(bitmap2, s, e)
    notes = note_blob(core)
    hdr, sub = _headers(core, info, tables, xen, compress=pool.kind, page=page, max_mapnr=max_mapnr,
                        bitmap_len=bitmap_len, notes=notes, dump_level=dump_level)
    sub_size = ctypes.sizeof(sub)
    bitmap_off = page * (L.DISKDUMP_HEADER_BLOCKS + hdr.sub_hdr_size)
    pd_off = bitmap_off + 2 * bitmap_len
    data_off = pd_off + num_kept * L.PAGE_DESC_FMT.size

    # -- write -----------------------------------------------------------------
    out = open_output(dst, force)
    final_status = L.COMPRESSION_FLAGS[pool.kind]
    if out.marks_end:  # a stream says it is whole with its end marker
        hdr.status = final_status
    try:
        try:
            head = bytearray(bitmap_off)
            head[:ctypes.sizeof(hdr)] = bytes(hdr)
            head[page:page + sub_size] = bytes(sub)
            head[page + sub_size:page + sub_size + len(notes)] = notes
            out.write_at(bytes(head), 0)
            out.write_at(bytes(bitmap1) + bytes(bitmap2), bitmap_off)
            del bitmap1, bitmap2
            zero_page = bytes(page)
            out.write_at(zero_page, data_off)  # the page every zero page points at
        except OSError as err:
            raise VmcoreError(f"{out.name}: cannot write: {err.strerror}") from None
        _copy_pages(core, out, runs, _pieces(kept, [] if xen else _image(core, page, tables)), page, pd_off, data_off,
                    pool, bar, result, exclude_zero=bool(dump_level & L.DL_EXCLUDE_ZERO))
        bar.finish()
        if result.incomplete:
            final_status |= L.DUMP_DH_COMPRESSED_INCOMPLETE
        try:
            if hdr.status != final_status:
                out.sync_data()  # the pages on disk before the header that says they are
                hdr.status = final_status
                out.write_at(bytes(hdr), 0)
            out.finish()
        except OSError as err:
            if not result.incomplete:
                result.incomplete = f"cannot finish {out.name}: {err.strerror}"
        result.out_bytes = out.size()
    finally:
        out.close()


def _image(core: ElfCore, page: int, tables: PageTables | None) -> list[list[tuple[int, int]]]:
    """The pfns of the page tables that map the kernel image (found with one walk per 2 MiB),
    and of the image (PT_LOADs in the kernel's image mapping: x86_64 cores list it apart)."""
    image = [(seg.vaddr, seg.paddr, seg.filesz) for seg in core.loads if seg.vaddr >= START_KERNEL_MAP and seg.filesz]
    pfns: list[tuple[int, int]] = []
    if tables is not None:
        from pykexec.vmcore.paging import PageTableWalker

        def read_table(paddr: int, size: int) -> bytes | memoryview:
            pfns.append((paddr // page, paddr // page + 1))
            return core.read(paddr, size, physical=True)

        walker = PageTableWalker(read_table, tables.root, levels=tables.levels, space="kernel")
        for va, _paddr, size in image:
            for at in range(va, va + size, 1 << 21):
                try:
                    walker.translate(at)
                except VmcoreError:
                    pass  # not mapped, or tables not in the dump: nothing to put first
    return [merge(pfns), merge([(paddr // page, -(-(paddr + size) // page)) for _va, paddr, size in image])]


def _pieces(kept: list[tuple[int, int]], first: list[list[tuple[int, int]]],
            chunk: int = CHUNK_PAGES) -> list[tuple[int, list[tuple[int, int]]]]:
    """The kept pages in the order they are written, as (descriptor index of the first page,
    pfn ranges) pieces: those in ``first[0]`` first, then those in ``first[1]``, ..., each
    class from its highest pfns down, then the rest by pfn.  For the kdump writer, the
    kernel image's page tables, then the image from its end (data and bss, the log): what
    ``vmcore dmesg`` of a save killed early needs."""
    from bisect import bisect_right

    cuts = sorted({b for ranges in first for a, e in ranges for b in (*range(a, e, chunk), e)})
    pieces: list[tuple[int, list[tuple[int, int]]]] = []
    rank, ci, cur = 0, 0, (0, [])  # type: tuple[int, int, tuple[int, list[tuple[int, int]]]]
    for s, e in kept:
        while s < e:
            if ci < len(cuts) and cuts[ci] <= s:
                while ci < len(cuts) and cuts[ci] <= s:
                    ci += 1
                if cur[1]:
                    pieces.append(cur)
                cur = (rank, [])
            hi = min(e, cuts[ci]) if ci < len(cuts) else e
            cur[1].append((s, hi))
            rank += hi - s
            s = hi
    if cur[1]:
        pieces.append(cur)

    def order(piece: tuple[int, list[tuple[int, int]]]) -> tuple[int, int]:
        pfn = piece[1][0][0]
        for k, ranges in enumerate(first):
            i = bisect_right(ranges, (pfn, 1 << 62)) - 1
            if i >= 0 and ranges[i][0] <= pfn < ranges[i][1]:
                return k, -pfn
        return len(first), pfn

    return sorted(pieces, key=order)


def _copy_pages(core: ElfCore, out: Output, runs: list[Run], pieces: list[tuple[int, list[tuple[int, int]]]],
                page: int, pd_off: int, data_off: int, pool: PageCompressor, bar: Progress, result: SaveResult,
                *, exclude_zero: bool) -> None:
    """Stream every kept page, ``pieces`` (:func:`_pieces`) in order: read, test for zero,
    compress, append; descriptors as we go.

    Kept pages are gathered into batches of :data:`CHUNK_PAGES` (one
    :meth:`~pykexec.vmcore.elfcore.ElfCore.readinto` per contiguous piece), so a selection cut into many short runs still
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
    zero_chunk = memoryview(bytes(len(buf)))  # sliced without copies

    def flush(n: int) -> bool:
        """Compress and write the first ``n`` pages of the batch; False on a write error.

        Per-page work is map() over C functions (startswith, len, pack), no Python
        loop: in a TCG crash kernel the interpreter's per-page work was a fifth of a
        save's profile."""
        nonlocal out_pos, pd_index
        nbytes = n * page
        starts = range(0, nbytes, page)
        data: Sequence[object] = ()
        if exclude_zero and buf.startswith(zero_chunk[:nbytes]):
            descs = zero_desc * n
            result.zero_pages += n
        else:
            if exclude_zero:
                offsets = list(compress(starts, map(not_, map(buf.startswith, repeat(zero_page, n), starts))))
            else:
                offsets = list(starts)
            comp = pool.compress(buf, offsets, page)
            sizes = list(map(len, comp)) if comp is not None else [page] * len(offsets)  # type: ignore[arg-type]
            if comp is not None and (not sizes or max(sizes) < page):
                data = comp
                flags: Iterable[int] = repeat(flag)
            else:  # pages that do not shrink are stored raw, as makedumpfile does
                data = [c if size < page else view[i:i + page]
                        for c, size, i in zip(comp or offsets, sizes, offsets)]
                result.raw_pages += sum(1 for size in sizes if size >= page)
                sizes = [min(size, page) for size in sizes]
                flags = (flag if size < page else 0 for size in sizes)
            at = list(accumulate(sizes, initial=out_pos))
            out_pos = at.pop()
            packed = list(map(pd.pack, at, sizes, flags, repeat(0)))
            if len(offsets) == n:
                descs = b"".join(packed)
            else:
                result.zero_pages += n - len(offsets)
                slots = [zero_desc] * n
                deque(map(slots.__setitem__, [i // page for i in offsets], packed), maxlen=0)
                descs = b"".join(slots)
        # Data first, then the descriptors that point at it.
        try:
            if data:
                joined = b"".join(data)  # type: ignore[arg-type]
                out.write_at(joined, out_pos - len(joined))
            out.write_at(descs, pd_off + pd_index * pd.size)
        except OSError as e:
            result.incomplete = f"cannot write {out.name}: {e.strerror}"
            return False
        pd_index += n
        result.saved_pages += n
        result.read_bytes += nbytes
        bar.update(result.read_bytes)
        return True

    for pd_index, kept in pieces:
        fill = 0  # pages in the batch
        ri = 0
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
                        got = core.readinto(view[at + lo - off:at + hi - off], lo)
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
        if fill and not flush(fill):
            return
