"""The dump a crash would write now, predicted from the live kernel's memory
(:class:`~pykexec.kdump.kcore.Kcore`), read-only: size and capture time.

The same steps as ``vmcore save`` (:mod:`pykexec.vmcore.save`) at the configured dump
level: RAM from the direct map's PT_LOADs without the crash kernel's own region,
the pages the level leaves out decided by the same scan of the ``struct page``
arrays (:func:`pykexec.vmcore.filtering.excluded_pages`); then, instead of every kept
page, a sample of them (groups of consecutive pages spread evenly over the kept
ones) tested for zero and compressed with the configured codec, one page at a time
as the writer does.  The dump's size is its headers and bitmaps, a descriptor per
kept page, and the sampled bytes per page times the kept pages, with a 95% interval
from the spread of the groups.  The capture time adds the scan's measured time and
the kept pages at the rates measured here (read, compress, and write to a local
target when one is measured).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field

from pykexec.layouts import kdump as L

TYPE_CHECKING = False
if TYPE_CHECKING:
    import mmap

    from pykexec.kdump.config import KdumpConfig
    from pykexec.kdump.kcore import Kcore
    from pykexec.kdump.paths import Paths

SAMPLE_GROUPS = 256
GROUP_PAGES = 16
WRITE_PROBE_BYTES = 32 << 20


@dataclass
class DumpPrediction:
    """What :func:`predict` found; sizes in bytes, rates per second."""

    dump_level: int
    compression: str
    page: int
    ram_pages: int
    max_pfn: int
    excluded: dict[str, int]
    filter_note: str
    exclusion_ranges: int
    kept_pages: int
    sampled_pages: int
    zero_pages_sampled: int
    stored_per_page: float
    overhead_bytes: int
    predicted_bytes: int
    low_bytes: int
    high_bytes: int
    scan_seconds: float
    read_rate: float
    compress_rate: float
    threads: int
    write_rate: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def capture_seconds(self) -> float:
        """The capture alone (the crash kernel's boot and the reboot after it are not in it)."""
        kept_bytes = self.kept_pages * self.page
        nonzero = self.kept_pages * (1 - self.zero_pages_sampled / max(self.sampled_pages, 1))
        seconds = self.scan_seconds + kept_bytes / max(self.read_rate, 1.0)
        seconds += nonzero / max(self.compress_rate * self.threads, 1.0)
        if self.write_rate:
            seconds += self.predicted_bytes / self.write_rate
        return seconds

    def to_dict(self) -> dict[str, object]:
        return {
            "dump_level": self.dump_level, "compression": self.compression, "page_size": self.page,
            "ram_pages": self.ram_pages, "max_pfn": self.max_pfn, "excluded_pages": self.excluded,
            "filter_note": self.filter_note, "exclusion_ranges": self.exclusion_ranges,
            "kept_pages": self.kept_pages, "sampled_pages": self.sampled_pages,
            "zero_pages_sampled": self.zero_pages_sampled, "stored_bytes_per_kept_page": round(self.stored_per_page, 1),
            "overhead_bytes": self.overhead_bytes, "predicted_bytes": self.predicted_bytes,
            "interval_95_bytes": [self.low_bytes, self.high_bytes],
            "scan_seconds": round(self.scan_seconds, 3), "read_bytes_per_second": round(self.read_rate),
            "compressed_pages_per_second_per_thread": round(self.compress_rate), "threads": self.threads,
            "write_bytes_per_second": round(self.write_rate) if self.write_rate else None,
            "capture_seconds": round(self.capture_seconds, 1), "notes": self.notes,
        }


def dump_overhead(page: int, max_pfn: int, kept_pages: int, notes_bytes: int) -> int:
    """The bytes of a kdump-compressed file besides its page data, as the writer lays
    them out: the header block, the sub-header with the notes, two bitmaps, a
    descriptor per kept page, and the one zero page every zero page points at."""
    import ctypes

    sub_blocks = -(-(ctypes.sizeof(L.KdumpSubHeader) + notes_bytes) // page)
    bitmap_len = -(-(-(-max_pfn // 8)) // page) * page
    return (page * (L.DISKDUMP_HEADER_BLOCKS + sub_blocks) + 2 * bitmap_len
            + kept_pages * L.PAGE_DESC_FMT.size + page)


def sample_pfns(kept: list[tuple[int, int]], groups: int, group_pages: int) -> list[list[int]]:
    """``groups`` runs of up to ``group_pages`` consecutive kept pfns, centred on evenly
    spaced kept pages (by their index among the kept ones, not by address); when the
    groups can hold every kept page, they do."""
    from bisect import bisect_right
    from itertools import accumulate

    total = sum(e - s for s, e in kept)
    if total == 0:
        return []
    groups = min(groups, max(1, total // group_pages))
    firsts = list(accumulate((e - s for s, e in kept), initial=0))  # each run's first page, as an index
    out: list[list[int]] = []
    for g in range(groups):
        start = min(max(0, (2 * g + 1) * total // (2 * groups) - group_pages // 2), max(0, total - group_pages))
        group = []
        for index in range(start, min(start + group_pages, total)):
            run = bisect_right(firsts, index) - 1
            group.append(kept[run][0] + index - firsts[run])
        out.append(group)
    return out


def interval(group_means: list[float], kept_pages: int) -> float:
    """Half the 95% interval of the kept pages' stored bytes, from the groups' spread."""
    if len(group_means) < 2:
        return 0.0
    return 1.96 * statistics.stdev(group_means) / len(group_means) ** 0.5 * kept_pages


def predict(core: Kcore, *, dump_level: int, compression: str, skip: list[tuple[int, int]] | None = None,
            threads: int = 1, groups: int = SAMPLE_GROUPS, group_pages: int = GROUP_PAGES,
            write_rate: float | None = None) -> DumpPrediction:
    """The dump of ``core``'s memory at ``dump_level`` with ``compression``; ``skip``:
    pfn ranges no dump holds (the crash kernel's reservation); ``threads``: the
    capture's compressor threads (the crash kernel's CPUs)."""
    from pykexec.layouts.elf import pack_note
    from pykexec.vmcore.errors import VmcoreError
    from pykexec.vmcore.filtering import excluded_pages
    from pykexec.vmcore.page_codecs import PageCompressor
    from pykexec.vmcore.paging import PageTables
    from pykexec.vmcore.pfn_runs import merge, subtract
    from pykexec.vmcore.save import ram_runs

    info = core.require_vmcoreinfo()
    page = int(info.get("PAGESIZE") or 4096)
    ram = subtract(merge([(r.pfn, r.end) for r in ram_runs(core.ram_loads(), page)]), merge(list(skip or [])))
    if not ram:
        raise VmcoreError(f"{core.path}: no RAM in its PT_LOADs")
    t0 = time.monotonic()
    notes: list[str] = []
    try:
        tables = PageTables(lambda a, n: core.read(a, n, physical=True), info)
        exclusion = excluded_pages(info, tables, ram, page, dump_level)
        left_out, excluded, filter_note = exclusion.ranges, exclusion.counts, exclusion.note
    except VmcoreError as err:
        left_out, excluded, filter_note = [], {}, f"{err}: only zero pages left out"
    scan_seconds = time.monotonic() - t0
    kept = subtract(ram, left_out)
    kept_pages = sum(e - s for s, e in kept)

    pool = PageCompressor(compression, 1)
    zero_page = bytes(page)
    exclude_zero = bool(dump_level & L.DL_EXCLUDE_ZERO)
    read_s = compress_s = 0.0
    sampled = zeros = compressed = 0
    group_means: list[float] = []
    try:
        for group in sample_pfns(kept, groups, group_pages):
            t = time.monotonic()
            buf = bytearray(b"".join(core.read(pfn * page, page, physical=True) for pfn in group))
            read_s += time.monotonic() - t
            offsets = [i * page for i in range(len(group))
                       if not (exclude_zero and buf.startswith(zero_page, i * page))]
            t = time.monotonic()
            out = pool.compress(buf, offsets, page)
            compress_s += time.monotonic() - t
            stored = len(offsets) * page  # "none", and pages that do not shrink: stored raw
            if out is not None:
                stored = sum(_stored_size(c, page) for c in out)
            sampled += len(group)
            zeros += len(group) - len(offsets)
            compressed += len(offsets)
            group_means.append(stored / len(group))
    finally:
        pool.close()
    per_page = sum(group_means) / len(group_means) if group_means else 0.0
    notes_bytes = sum(len(pack_note(n.name, n.type, n.desc)) for n in core.notes)
    max_pfn = ram[-1][1]
    overhead = dump_overhead(page, max_pfn, kept_pages, notes_bytes)
    predicted = overhead + round(per_page * kept_pages)
    half = round(interval(group_means, kept_pages))
    return DumpPrediction(
        dump_level=dump_level, compression=compression, page=page, ram_pages=sum(e - s for s, e in ram),
        max_pfn=max_pfn, excluded=excluded, filter_note=filter_note, exclusion_ranges=len(left_out),
        kept_pages=kept_pages, sampled_pages=sampled, zero_pages_sampled=zeros, stored_per_page=per_page,
        overhead_bytes=overhead, predicted_bytes=predicted, low_bytes=max(overhead, predicted - half),
        high_bytes=predicted + half, scan_seconds=scan_seconds,
        read_rate=sampled * page / read_s if read_s else 0.0,
        compress_rate=compressed / compress_s if compress_s else 0.0, threads=max(1, threads),
        write_rate=write_rate, notes=notes)


def _stored_size(compressed: object, page: int) -> int:
    """A compressed page's size in the dump (raw when it does not shrink)."""
    return min(len(compressed), page)  # type: ignore[arg-type]  # the compressor's bytes-like results


def measure_write(directory: str | os.PathLike[str], nbytes: int = WRITE_PROBE_BYTES) -> float | None:
    """Bytes per second written and synced to a file in ``directory`` (removed after);
    None if it cannot be written there.

    The data is random (a file system that compresses must not flatter it) but must not
    stay in memory: freed page-cache pages wait on the per-CPU free lists, of which a dump
    leaves out only the pages linked on a list (vmcore/percpu_free.py), not the rest of a
    high-order block, so later dumps could keep them, incompressible (on the Debian test
    bed's 6.12, 13 MiB more in the next crash's dump, before percpu_free.py).  So the file is written
    with O_DIRECT from one page-aligned buffer, zeroed before it is freed; buffered (and
    synced) only where the file system refuses O_DIRECT."""
    import mmap
    import tempfile

    block_bytes = 1 << 20
    block = mmap.mmap(-1, block_bytes)
    count = max(1, nbytes // block_bytes)
    try:
        with open("/dev/urandom", "rb", buffering=0) as random, memoryview(block) as view:
            filled = 0
            while filled < block_bytes:
                filled += random.readinto(view[filled:]) or 0
        fd, name = tempfile.mkstemp(dir=directory, prefix=".pykexec-write-probe-")
        os.close(fd)
        try:
            seconds = _timed_writes(name, block, count, os.O_DIRECT)
            if seconds is None:
                seconds = _timed_writes(name, block, count, 0)
        finally:
            os.unlink(name)
    except OSError:
        return None
    finally:
        block.write(bytes(block_bytes))  # zero pages: a dump leaves them out
        block.close()
    return None if seconds is None else count * block_bytes / max(seconds, 1e-6)


def _timed_writes(name: str, block: mmap.mmap, count: int, flags: int) -> float | None:
    """Seconds to write ``block`` ``count`` times to ``name`` and sync it; None if the
    file system refuses ``flags`` (EINVAL: O_DIRECT)."""
    import errno

    try:
        fd = os.open(name, os.O_WRONLY | os.O_TRUNC | flags)
    except OSError as err:
        if err.errno == errno.EINVAL:
            return None
        raise
    try:
        t = time.monotonic()
        for _ in range(count):
            try:
                os.write(fd, block)
            except OSError as err:
                if err.errno == errno.EINVAL and flags:
                    return None
                raise
        os.fsync(fd)
        return time.monotonic() - t
    finally:
        os.close(fd)


def crash_region_pfns(paths: Paths, page: int = 4096) -> list[tuple[int, int]]:
    """The pfns reserved for the crash kernel (no dump holds them), from /proc/iomem."""
    from pykexec.errors import KexecError
    from pykexec.probe import parse_iomem

    try:
        _, entries = parse_iomem((paths.proc / "iomem").read_text())
    except (OSError, KexecError):
        return []
    return [(r.start // page, -(-r.end // page)) for _, r, name in entries if name == "Crash kernel"]


def predict_here(config: KdumpConfig, paths: Paths, *, write_probe: bool = True) -> DumpPrediction:
    """:func:`predict` for this machine and ``config``, from ``paths.proc``'s kcore;
    :class:`~pykexec.kdump.kcore.KcoreUnavailable` (one line) when it cannot be made."""
    from pykexec.kdump.estimate import crash_cpus, possible_cpus
    from pykexec.kdump.kcore import Kcore, KcoreUnavailable
    from pykexec.kdump.service import crash_append

    if (paths.proc / "xen/capabilities").exists() and \
            "control_d" in (paths.proc / "xen/capabilities").read_text():
        raise KcoreUnavailable("in a Xen dom0 a dump holds the machine's memory, which dom0's /proc/kcore "
                               "does not show: no size prediction")
    try:
        running = (paths.proc / "cmdline").read_text()
    except OSError:
        running = ""
    threads = crash_cpus(f"{running} {crash_append(config)}", possible_cpus(paths))
    with Kcore(paths.proc / "kcore") as core:
        prediction = predict(core, dump_level=config.dump_level, compression=config.compression,
                             skip=crash_region_pfns(paths), threads=threads)
    # Measured after the scan: the probe's random pages, freed onto the per-CPU free lists
    # (whose high-order blocks the scan cannot tell from used pages but by their first
    # page), would count as kept and incompressible (50 MiB predicted for a 19 MiB dump).
    target = config.parsed_target
    rate = None
    if write_probe and target.kind == "local" and paths.under(target.path).is_dir():
        rate = prediction.write_rate = measure_write(paths.under(target.path))
    if rate is None:
        prediction.notes.append("capture time without writing: the target's write speed was not measured"
                                + (" (an ssh target: the network is not measured)" if target.kind == "ssh" else ""))
    return prediction
