"""Xen's rules for a ``kexec_load``, checked before any hypercall so that a refusal names
the segment and the rule instead of a bare EINVAL.

The segments are :class:`XenSegment` tuples ``(buf, buf_size, dest_maddr, dest_size,
role)``; ``buf`` None means "map this range, copy nothing". ``arch`` is the ELF machine of
the code at ``entry`` -- what Xen jumps to -- not of the final OS: ``EM_X86_64`` for our
purgatory (entered in 64-bit mode with the segments identity-mapped; it loads its own GDT
and can drop to 32-bit for a Multiboot kernel), ``EM_386`` only for an image entered
directly in 32-bit protected mode with paging off.
"""

from __future__ import annotations

from collections import namedtuple

from pykexec.errors import PlanError
from pykexec.layouts import xen as abi
from pykexec.layouts.elf import EM_X86_64
from pykexec.layouts.x86_paging import PAGE_SIZE
from pykexec.memory import MiB, Range

TYPE_CHECKING = False  # typing costs an import; this name is all type checkers need
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

#: The code at ``entry`` is our purgatory: Xen must enter it in 64-bit mode.
ARCH_PURGATORY = EM_X86_64

LOW_MEMORY_END = MiB  # purgatory touches 0-1 MiB (backup of low memory, VGA): map it all
LOW_MEMORY_ROLE = "low-memory map"


class XenRange(namedtuple("XenRange", "start size")):
    """A machine-address range as ``get_range`` reports it."""

    __slots__ = ()
    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size

    def range(self) -> Range:
        return Range.sized(self.start, self.size)

    def __str__(self) -> str:
        return f"{self.start:#x}-{self.end - 1:#x}" if self.size else "(none)"


class XenSegment(namedtuple("XenSegment", "buf buf_size dest_maddr dest_size role", defaults=("",))):
    """One segment of a Xen load. ``buf`` None: Xen maps the range 1:1 and copies nothing."""

    __slots__ = ()
    buf: bytes | None
    buf_size: int
    dest_maddr: int
    dest_size: int
    role: str

    @property
    def range(self) -> Range:
        return Range.sized(self.dest_maddr, self.dest_size)

    def describe(self, index: int) -> str:
        what = f"{self.role} segment" if self.role else f"segment {index}"
        return f"{what} at {self.dest_maddr:#x}+{self.dest_size:#x}"


def type_name(type_: int) -> str:
    """What Xen's headers call a load type ("default", "crash" ...), for messages and file names."""
    return abi.KEXEC_TYPE_NAMES.get(type_, f"type {type_}")


def low_memory_fill(segments: Iterable[XenSegment], end: int = LOW_MEMORY_END) -> list[XenSegment]:
    """Null-buffer segments covering every gap in ``[0, end)`` (at least 0-1 MiB) that no
    segment covers.

    Xen maps only the segments' pages for the image; our purgatory reads and writes low
    memory (the kdump backup, the VGA text buffer), so kexec-tools (since 2019) adds
    such segments. They carry no data, so purgatory's digests never include them: add
    them after the digests are computed. Xen exempts null segments from the crash-area
    bounds but counts them for the overlap rule and the 15-segment limit. ``end`` above
    1 MiB: purgatory copies more than the first MiB aside (Xen as the crash kernel).
    """
    end = max(end, LOW_MEMORY_END)
    covered = sorted(s.range for s in segments if s.dest_maddr < end and s.dest_size)
    fill: list[XenSegment] = []
    pos = 0
    for r in covered:
        if r.start > pos:
            fill.append(XenSegment(None, 0, pos, min(r.start, end) - pos, LOW_MEMORY_ROLE))
        pos = max(pos, r.end)
        if pos >= end:
            break
    if pos < end:
        fill.append(XenSegment(None, 0, pos, end - pos, LOW_MEMORY_ROLE))
    return fill


def with_low_memory_mapped(segments: Sequence[XenSegment], end: int = LOW_MEMORY_END) -> list[XenSegment]:
    """``segments``, in their order, then :func:`low_memory_fill`'s up to ``end``."""
    return [*segments, *low_memory_fill(segments, end)]


def crash_pages_needed(segments: Sequence[XenSegment]) -> int:
    """Pages Xen takes from the crash area's free space for a crash load (an estimate).

    The control code page and the first indirection page, then the identity map of every
    segment: one L4, an L3 per 512 GiB, an L2 per GiB and an L1 per 2 MiB touched, plus
    the tables mapping kexec_reloc at its Xen address (``kimage_alloc_crash_control_page``).
    """
    l3: set[int] = set()
    l2: set[int] = set()
    l1: set[int] = set()
    for s in segments:
        for page in range(s.dest_maddr >> 12, (s.dest_maddr + s.dest_size + PAGE_SIZE - 1) >> 12):
            l1.add(page >> 9)
            l2.add(page >> 18)
            l3.add(page >> 27)
    return 2 + 1 + len(l3) + len(l2) + len(l1) + 3


def check_load(type_: int, arch: int, segments: Sequence[XenSegment], entry: int,
               crash_area: XenRange | None = None) -> None:
    """Refuse, naming the segment and the rule, what Xen's ``kexec_load`` would refuse.

    ``segments`` are the ones to be handed over, null-buffer ones included. For crash
    types ``crash_area`` is ``get_range(MA_CRASH)``.
    """
    segs = sorted(segments, key=lambda s: s.dest_maddr)
    crash = type_ in (abi.KEXEC_TYPE_CRASH, abi.KEXEC_TYPE_CRASH_EFI)
    if type_ == abi.KEXEC_TYPE_LIVE_UPDATE or type_ not in abi.KEXEC_TYPE_NAMES:
        raise PlanError(f"kexec type {type_} is not one Xen loads (default 0, crash 1, crash-efi 3)")
    if arch not in abi.KEXEC_ARCHES:
        raise PlanError(f"arch {arch} is not EM_386 (3) or EM_X86_64 (62): Xen enters nothing else")
    if not segs:
        raise PlanError("the load has no segments")
    if len(segs) > abi.XEN_MAX_SEGMENTS:
        raise PlanError(f"{len(segs)} segments: Xen takes at most {abi.XEN_MAX_SEGMENTS} "
                        f"(nr_segments < KEXEC_SEGMENT_MAX = {abi.KEXEC_SEGMENT_MAX}), "
                        "null segments mapping low memory included")
    for i, s in enumerate(segs):
        name = s.describe(i)
        if s.dest_maddr % PAGE_SIZE or s.dest_size % PAGE_SIZE:
            raise PlanError(f"{name}: Xen needs a page-aligned address and size")
        if s.buf_size > s.dest_size:
            raise PlanError(f"{name}: buf_size {s.buf_size:#x} is larger than dest_size {s.dest_size:#x}")
        if s.buf is None and s.dest_size == 0:
            raise PlanError(f"{name}: a segment without a buffer needs a size (Xen fails it with ENOMEM)")
        if s.buf is not None and len(s.buf) != s.buf_size:
            raise PlanError(f"{name}: its buffer holds {len(s.buf):#x} bytes but buf_size says {s.buf_size:#x}")
    for i, (a, b) in enumerate(zip(segs, segs[1:])):
        if a.range.overlaps(b.range):
            raise PlanError(f"{a.describe(i)} overlaps {b.describe(i + 1)}: Xen refuses overlapping "
                            "segments, null ones included")
    data_segs = [s for s in segs if s.buf is not None]
    if not any(s.range.contains(entry) for s in data_segs):
        raise PlanError(f"entry point {entry:#x} is not inside any segment with data")
    if not crash:
        return
    if crash_area is None or not crash_area.size:
        raise PlanError("no crash area: boot Xen with crashkernel=SIZE (e.g. crashkernel=256M) "
                        "on its own command line, not dom0's")
    area = crash_area.range()
    for i, s in enumerate(segs):
        if s.buf is not None and not area.contains(s.range):
            raise PlanError(f"{s.describe(i)} is outside Xen's crash area {crash_area}")
    if not area.contains(entry):
        raise PlanError(f"entry point {entry:#x} is outside Xen's crash area {crash_area}")
    used = sum(s.dest_size for s in data_segs)
    free = (area.size - used) // PAGE_SIZE
    need = crash_pages_needed(segs)
    if free < need:
        raise PlanError(f"the crash area {crash_area} has {free} free pages besides the segments; "
                        f"Xen needs about {need} for its control page and page tables")
