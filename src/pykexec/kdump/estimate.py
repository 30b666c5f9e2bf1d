"""``kdump estimate``: the ``crashkernel=`` this machine needs, term by term.

The crash kernel's memory holds, at its peak (while the capture runs):

* the kernel: ``init_size`` from its setup header (decompressed, with bss and early
  page tables), and the small kexec segments (purgatory, boot parameters, the ELF core
  header);
* the crash initramfs: loaded, then unpacked into tmpfs (the loaded copy is freed
  only after), and the modules it holds loaded again into the kernel;
* the capture: Python with the capture's modules (measured by importing them), and
  what ``vmcore save`` allocates: its batch of pages and their compressed copies, the
  dump's two bitmaps (one bit per pfn) and their copies while they are written, the
  exclusion lists (known after a scan of this kernel's ``struct page`` arrays), and
  the page tables of ``/proc/vmcore``, which it maps whole;
* per CPU the crash kernel brings up (``nr_cpus=``/``maxcpus=``): per-CPU areas (this
  kernel's share), kernel stacks, a compressor thread's context;
* the kernel's own allocations (slab, hash tables, the ``struct page`` array of the
  reservation itself): an allowance, checked by the end-to-end test.

The sum is rounded up to a multiple of 16 MiB.  The predicted dump size and capture
time are :mod:`pykexec.kdump.dump_size`'s.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from pykexec.vmcore.output import CHUNK_PAGES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

    from pykexec.kdump.paths import Paths

MiB = 1 << 20
ROUND_TO = 16 * MiB
PAGE = 4096
#: purgatory, boot parameters, command line and ELF core header: well under this.
KEXEC_SEGMENTS = 1 * MiB
#: Batches vmcore save holds at once: the pages read, their compressed copies, the joined write.
BATCH_COPIES = 3
#: The two bitmaps, one copy of each made to write them, and the two joined.
BITMAP_COPIES = 6
#: Bytes of page-table entry per 4 KiB page of /proc/vmcore, mapped whole with 4 KiB PTEs.
PTE_BYTES = 8
#: A pfn range in the exclusion and kept lists: a tuple of two ints and a list slot.
RANGE_BYTES = 120
#: Per CPU: kernel stacks of its threads (idle, ksoftirqd, migration, cpuhp; 16 KiB each) and
#: a zstd compression context at level 1 for 4 KiB inputs.
CPU_STACKS = 4 * 16 << 10
CPU_COMPRESSOR = 256 << 10
#: Slab, hash tables, page tables and a watermark of free memory of a kernel running one program.
KERNEL_ALLOWANCE = 24 * MiB
#: struct page: 64 bytes for each 4 KiB page of the reservation.
STRUCT_PAGE_SHARE = 64
#: Capture modules whose import the capture's memory is measured with.
CAPTURE_IMPORTS = ("pykexec.vmcore.save", "pykexec.vmcore.elfcore", "pykexec.vmcore.filtering",
                   "pykexec.vmcore.kdump_writer", "pykexec.vmcore.paging", "pykexec.kdump.records", "zstandard")
CAPTURE_RSS_UNMEASURED = 32 * MiB
_CPUS_OPTION = re.compile(r"(?:^|\s)(?:nr_cpus|maxcpus)=(\d+)")
_COMPRESSED_KO = (".ko.xz", ".ko.zst", ".ko.gz")


@dataclass(frozen=True)
class Term:
    name: str
    bytes: int
    how: str


@dataclass(frozen=True)
class NeedInputs:
    """What the arithmetic of :func:`crashkernel_terms` is made of (all measured or
    read by :func:`gather`; None: unknown, counted as 0 and said)."""

    init_size: int | None
    initrd_bytes: int | None
    unpacked_bytes: int | None
    modules_bytes: int | None
    capture_rss: int
    max_pfn: int
    ram_pages: int
    exclusion_ranges: int | None
    cpus: int
    percpu_per_cpu: int
    capture_rss_measured: bool = True
    kernel: str = "the crash kernel"
    initrd: str = "the crash initramfs"


@dataclass
class CrashkernelEstimate:
    terms: list[Term]
    notes: list[str] = field(default_factory=list)

    @property
    def sum(self) -> int:
        return sum(t.bytes for t in self.terms)

    @property
    def total(self) -> int:
        return round_up(self.sum)

    @property
    def option(self) -> str:
        return f"crashkernel={self.total // MiB}M"

    def to_dict(self) -> dict[str, object]:
        return {"crashkernel": self.option, "bytes": self.total, "sum_bytes": self.sum,
                "terms": [{"name": t.name, "bytes": t.bytes, "how": t.how} for t in self.terms],
                "notes": self.notes}


def round_up(n: int, to: int = ROUND_TO) -> int:
    return -(-n // to) * to


def crashkernel_terms(i: NeedInputs) -> list[Term]:
    """The memory a crash kernel needs at its peak, term by term (see the module)."""
    def known(value: int | None) -> int:
        return value if value is not None else 0

    bitmap_len = round_up(-(-i.max_pfn // 8), PAGE)
    per_cpu = i.percpu_per_cpu + CPU_STACKS + CPU_COMPRESSOR
    terms = [
        Term("kernel", known(i.init_size), f"init_size in {i.kernel}'s setup header" if i.init_size is not None
             else f"unknown: {i.kernel} cannot be read as a bzImage"),
        Term("kexec segments", KEXEC_SEGMENTS, "purgatory, boot parameters, command line, ELF core header"),
        Term("initramfs", known(i.initrd_bytes), f"{i.initrd} as loaded, freed only once unpacked"
             if i.initrd_bytes is not None else f"unknown: no {i.initrd} yet (pykexec kdump load builds it)"),
        Term("initramfs unpacked", known(i.unpacked_bytes), "its files in tmpfs, in whole pages"
             if i.unpacked_bytes is not None else "unknown: no crash initramfs yet"),
        Term("modules", known(i.modules_bytes), "the kernel modules it holds, loaded"
             if i.modules_bytes is not None else "unknown: no crash initramfs yet"),
        Term("capture program", i.capture_rss, "Python with the capture's modules imported ("
             + ("measured" if i.capture_rss_measured else "not measured: a typical size") + ")"),
        Term("capture batches", BATCH_COPIES * CHUNK_PAGES * PAGE,
             f"vmcore save's batch of {CHUNK_PAGES} pages, their compressed copies and the joined write"),
        Term("dump bitmaps", BITMAP_COPIES * bitmap_len,
             f"two bitmaps of {i.max_pfn} pfns, and the copies made while writing them"),
        Term("/proc/vmcore page tables", PTE_BYTES * i.ram_pages,
             f"{PTE_BYTES} bytes per page of the {i.ram_pages} pages of /proc/vmcore, mapped whole"),
        Term("exclusion lists", known(i.exclusion_ranges) * 2 * RANGE_BYTES,
             f"{i.exclusion_ranges} pfn ranges left out, and the list of those kept"
             if i.exclusion_ranges is not None else "unknown: this kernel's struct pages were not scanned"),
        Term("per CPU", i.cpus * per_cpu, f"{i.cpus} CPU(s) x ({i.percpu_per_cpu} bytes of per-CPU areas, "
             f"{CPU_STACKS} of kernel stacks, {CPU_COMPRESSOR} of compressor context)"),
    ]
    subtotal = sum(t.bytes for t in terms) + KERNEL_ALLOWANCE
    struct_pages = -(-subtotal // (STRUCT_PAGE_SHARE - 1))  # 1/64 of the whole, this term included
    terms.append(Term("kernel allocations", KERNEL_ALLOWANCE + struct_pages,
                      f"{KERNEL_ALLOWANCE // MiB} MiB for slab, hash tables, page tables and free-memory "
                      f"watermarks (an allowance), and {struct_pages} bytes of struct pages for the reservation"))
    return terms


# -- reading the inputs ---------------------------------------------------------------------

def kernel_init_size(kernel: Path) -> int | None:
    from pykexec.errors import ImageFormatError
    from pykexec.images.bzimage import parse

    try:
        with open(kernel, "rb") as f:
            return int(parse(f.read(1 << 16)).header.init_size)
    except (OSError, ImageFormatError):
        return None


def initramfs_sizes(initrd: Path) -> tuple[int, int, int] | None:
    """(size as loaded, unpacked, modules loaded) of an initramfs; None if unreadable."""
    from pykexec.errors import InputError
    from pykexec.kdump.cpio_reader import read_initramfs_file, unpacked_bytes

    try:
        size = initrd.stat().st_size
        entries = read_initramfs_file(initrd, want=lambda name: name.endswith(_COMPRESSED_KO))
    except (OSError, InputError):
        return None
    modules: dict[str, int] = {}
    for e in entries:
        if e.is_file and e.name.endswith(".ko"):
            modules[e.name] = e.size
        elif e.is_file and e.data is not None:
            modules[e.name] = _decompressed_size(e.name, e.data)
    return size, unpacked_bytes(entries), sum(modules.values())


def _decompressed_size(name: str, data: bytes) -> int:
    import gzip
    import lzma

    try:
        if name.endswith(".xz"):
            return len(lzma.decompress(data))
        if name.endswith(".gz"):
            return len(gzip.decompress(data))
        import zstandard

        return len(zstandard.ZstdDecompressor().decompressobj().decompress(data))
    except Exception:  # a module the kernel could not load either: count its file
        return len(data)


def capture_rss() -> int | None:
    """The capture program's resident memory once its modules are imported (a fresh
    interpreter, this one's), in bytes; None if it cannot be measured."""
    import subprocess
    import sys

    # VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across fork and exec, so a
    # large parent (a test run that read a big dump) would be measured instead of the child.
    code = ("".join(f"import {m}\n" for m in CAPTURE_IMPORTS)
            + "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0])\n")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        return int(proc.stdout.strip()) * 1024 if proc.returncode == 0 else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def crash_cpus(cmdline: str, possible: int) -> int:
    """CPUs the crash kernel brings up: the last ``nr_cpus=``/``maxcpus=`` of its
    command line, else every possible one (0 counts as 1: the boot CPU)."""
    found = _CPUS_OPTION.findall(cmdline)
    return max(1, min(int(found[-1]), possible)) if found else possible


def possible_cpus(paths: Paths) -> int:
    try:
        text = (paths.sys / "devices/system/cpu/possible").read_text().strip()
    except OSError:
        return os.cpu_count() or 1
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return max(count, 1)


def meminfo(paths: Paths) -> dict[str, int]:
    """/proc/meminfo in bytes."""
    out: dict[str, int] = {}
    try:
        text = (paths.proc / "meminfo").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        words = value.split()
        if words and words[0].isdigit():
            out[key] = int(words[0]) * (1024 if words[1:] == ["kB"] else 1)
    return out


def ram_layout(paths: Paths) -> tuple[int, int]:
    """(max pfn, pages of RAM) of this machine: in a Xen dom0 from Xen's machine memory
    map, else from /proc/iomem (root sees its addresses), else /proc/meminfo's MemTotal
    for both."""
    from pykexec.errors import KexecError
    from pykexec.probe import parse_iomem

    from pykexec.kdump.xen_dom0 import machine_ram, under_xen

    if str(paths.root) == "/" and under_xen(paths):
        # A dom0's /proc/iomem is its own; the crash kernel's dump holds the whole machine.

        try:
            return machine_ram()
        except KexecError:
            pass
    try:
        memory, _ = parse_iomem((paths.proc / "iomem").read_text())
        ram = memory.ram()
        if ram:
            return ram[-1].end // PAGE, sum(r.size for r in ram) // PAGE
    except (OSError, KexecError):
        pass
    pages = meminfo(paths).get("MemTotal", 0) // PAGE
    return pages, pages


def gather(kernel: Path, initrd: Path, cmdline: str, paths: Paths, *, max_pfn: int | None = None,
           ram_pages: int | None = None, exclusion_ranges: int | None = None,
           measure_capture: bool = True) -> NeedInputs:
    """The inputs of :func:`crashkernel_terms` for this machine; ``max_pfn``,
    ``ram_pages`` and ``exclusion_ranges`` as a scan of /proc/kcore found them, if
    one was made."""
    sizes = initramfs_sizes(initrd)
    layout = ram_layout(paths) if max_pfn is None or ram_pages is None else (max_pfn, ram_pages)
    possible = possible_cpus(paths)
    rss = capture_rss() if measure_capture else None
    return NeedInputs(
        init_size=kernel_init_size(kernel),
        initrd_bytes=sizes[0] if sizes else None, unpacked_bytes=sizes[1] if sizes else None,
        modules_bytes=sizes[2] if sizes else None,
        capture_rss=rss if rss is not None else CAPTURE_RSS_UNMEASURED, capture_rss_measured=rss is not None,
        max_pfn=layout[0], ram_pages=layout[1], exclusion_ranges=exclusion_ranges,
        cpus=crash_cpus(cmdline, possible), percpu_per_cpu=meminfo(paths).get("Percpu", 0) // possible,
        kernel=str(kernel), initrd=str(initrd))


def crashkernel_size(kernel: Path, initrd: Path, append: str, paths: Paths, *, measure_capture: bool = False,
                     max_pfn: int | None = None, ram_pages: int | None = None,
                     exclusion_ranges: int | None = None) -> CrashkernelEstimate:
    """The ``crashkernel=`` needed to load ``kernel`` with ``initrd`` and capture a dump
    (``append``: what the crash kernel's command line adds to the running one); the
    keywords as :func:`gather` takes them."""
    try:
        running = (paths.proc / "cmdline").read_text()
    except OSError:
        running = ""
    inputs = gather(kernel, initrd, f"{running} {append}", paths, measure_capture=measure_capture,
                    max_pfn=max_pfn, ram_pages=ram_pages, exclusion_ranges=exclusion_ranges)
    return CrashkernelEstimate(crashkernel_terms(inputs))
