"""Physical memory: half-open ranges, typed memory maps, and placement.

Every loader places its segments through :class:`Allocator`, so the rules (page
granularity, a 1 MiB floor, per-segment limits, top-down or bottom-up) live here once.
"""

from __future__ import annotations

import enum
from collections import namedtuple
from collections.abc import Iterable, Iterator, Sequence

from pykexec.errors import PlacementError
from pykexec.layouts.x86_paging import PAGE_SIZE

MiB = 1 << 20
GiB = 1 << 30
ADDR_MAX = (1 << 64) - 1  # last byte of the physical address space we talk about
LOW_MEMORY_END = MiB  # below this lives firmware: IVT, BDA, EBDA, VGA, option ROMs


def align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def align_down(value: int, align: int) -> int:
    return value // align * align


# Named tuples rather than dataclasses: pykexec runs at the worst moment, and importing
# dataclasses (inspect, ast, dis) costs a tenth of a second on a slow machine.
class Range(namedtuple("Range", "start end")):
    """The physical addresses ``start <= a < end``."""

    __slots__ = ()
    start: int
    end: int

    def __new__(cls, start: int, end: int) -> "Range":
        if start < 0 or end < start:
            raise ValueError(f"bad range {start:#x}-{end:#x}")
        return super().__new__(cls, start, end)

    @classmethod
    def inclusive(cls, start: int, last: int) -> "Range":
        """From /proc/iomem or sysfs style bounds, whose end is the last byte."""
        return cls(start, last + 1)

    @classmethod
    def sized(cls, start: int, size: int) -> "Range":
        return cls(start, start + size)

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def last(self) -> int:
        return self.end - 1

    def __bool__(self) -> bool:
        return self.end > self.start

    def contains(self, other: "Range | int") -> bool:
        if isinstance(other, int):
            return self.start <= other < self.end
        return self.start <= other.start and other.end <= self.end

    def overlaps(self, other: "Range") -> bool:
        return self.start < other.end and other.start < self.end

    def intersect(self, other: "Range") -> "Range | None":
        start, end = max(self.start, other.start), min(self.end, other.end)
        return Range(start, end) if start < end else None

    def minus(self, other: "Range") -> list["Range"]:
        """What is left of self after removing other: zero, one or two pieces."""
        if not self.overlaps(other):
            return [self] if self else []
        pieces = []
        if self.start < other.start:
            pieces.append(Range(self.start, other.start))
        if other.end < self.end:
            pieces.append(Range(other.end, self.end))
        return pieces

    def __str__(self) -> str:
        return f"{self.start:#x}-{self.last:#x}"


def merge(ranges: Iterable[Range]) -> list[Range]:
    """Sort and coalesce overlapping or adjacent ranges."""
    out: list[Range] = []
    for r in sorted(x for x in ranges if x):
        if out and r.start <= out[-1].end:
            if r.end > out[-1].end:
                out[-1] = Range(out[-1].start, r.end)
        else:
            out.append(r)
    return out


def subtract(ranges: Iterable[Range], holes: Iterable[Range]) -> list[Range]:
    """``ranges`` minus every range in ``holes``, sorted and merged."""
    result = merge(ranges)
    for hole in merge(holes):
        result = [piece for r in result for piece in r.minus(hole)]
    return result


class MemType(enum.Enum):
    """Memory types as /proc/iomem names them, with their e820 codes."""

    RAM = ("System RAM", 1)
    RESERVED = ("Reserved", 2)
    ACPI = ("ACPI Tables", 3)
    NVS = ("ACPI Non-volatile Storage", 4)
    UNUSABLE = ("Unusable memory", 5)
    PMEM = ("Persistent Memory", 7)
    PRAM = ("Persistent Memory (legacy)", 12)

    def __init__(self, label: str, e820: int) -> None:
        self.label = label
        self.e820 = e820

    @classmethod
    def from_name(cls, name: str) -> "MemType | None":
        """Map an iomem/sysfs/JSON type name to a type; None for names that are not memory
        (PCI windows, device BARs), which a memory map leaves out."""
        key = name.strip().lower()
        for t in cls:
            if key == t.label.lower() or key == t.name.lower():
                return t
        if key.startswith("system ram"):  # "System RAM (kmem)", virtio-mem
            return cls.RAM
        aliases = {"usable": cls.RAM, "ram": cls.RAM, "acpi data": cls.ACPI,
                   "acpi nvs": cls.NVS, "persistent memory": cls.PMEM}
        return aliases.get(key)

    @classmethod
    def from_e820(cls, code: int) -> "MemType":
        for t in cls:
            if t.e820 == code:
                return t
        return cls.RESERVED


class Region(namedtuple("Region", "range type")):
    """A typed range of a memory map."""

    __slots__ = ()
    range: Range
    type: MemType


class MemoryMap:
    """A machine's physical memory map: sorted, non-overlapping typed regions."""

    def __init__(self, regions: Iterable[Region]) -> None:
        ordered = sorted(regions, key=lambda r: (r.range.start, r.range.end))
        merged: list[Region] = []
        for reg in ordered:
            if not reg.range:
                continue
            if merged and merged[-1].range.overlaps(reg.range):
                prev = merged[-1]
                if prev.type is not reg.type:
                    raise ValueError(f"memory map regions overlap: {prev.range} ({prev.type.label}) "
                                     f"and {reg.range} ({reg.type.label})")
                merged[-1] = Region(Range(prev.range.start, max(prev.range.end, reg.range.end)), prev.type)
            elif merged and merged[-1].range.end == reg.range.start and merged[-1].type is reg.type:
                merged[-1] = Region(Range(merged[-1].range.start, reg.range.end), reg.type)
            else:
                merged.append(reg)
        self.regions: tuple[Region, ...] = tuple(merged)

    def __iter__(self) -> Iterator[Region]:
        return iter(self.regions)

    def __len__(self) -> int:
        return len(self.regions)

    def ram(self) -> list[Range]:
        return [r.range for r in self.regions if r.type is MemType.RAM]

    def of_type(self, *types: MemType) -> list[Range]:
        return [r.range for r in self.regions if r.type in types]

    def type_at(self, addr: int) -> MemType | None:
        for r in self.regions:
            if r.range.contains(addr):
                return r.type
        return None

    def is_ram(self, rng: Range) -> bool:
        """True when every byte of rng is RAM (adjacent RAM regions count as one)."""
        return any(r.contains(rng) for r in merge(self.ram()))


class Allocator:
    """Finds room for segments in RAM, never overlapping what it already handed out.

    ``window`` narrows every placement (``--mem-min/--mem-max``, or the crash kernel
    region). ``floor`` keeps ordinary segments out of the first MiB, where firmware data
    lives; a caller that must go lower passes ``min_addr`` explicitly with ``floor=0``.
    """

    def __init__(self, ram: Sequence[Range], window: Range = Range(0, ADDR_MAX + 1),
                 floor: int = LOW_MEMORY_END) -> None:
        self.window = window
        self.floor = floor
        self._free = [r for r in (x.intersect(window) for x in merge(ram)) if r]
        self.used: list[Range] = []

    def free(self) -> list[Range]:
        return subtract(self._free, self.used)

    def reserve(self, rng: Range) -> None:
        """Mark a fixed range (an ELF PT_LOAD at its link address) as taken."""
        if not any(f.contains(rng) for f in self.free()):
            raise PlacementError(f"{rng} is not free RAM inside {self.window}")
        self.used.append(rng)

    def allocate(self, size: int, *, align: int = PAGE_SIZE, min_addr: int = 0,
                 max_addr: int = ADDR_MAX, top_down: bool = True, what: str = "segment") -> int:
        """Place ``size`` bytes (rounded up to pages) at an ``align``-aligned address with
        the whole block inside ``[min_addr, max_addr]`` (max_addr is the last usable byte)."""
        size = align_up(max(size, 1), PAGE_SIZE)
        align = max(align, PAGE_SIZE)
        lo = max(min_addr, self.floor)
        addr = find_space(self.free(), size, align=align, min_addr=lo, max_addr=max_addr, top_down=top_down)
        if addr is None:
            largest = largest_hole(self.free(), min_addr=lo, max_addr=max_addr)
            raise PlacementError(
                f"no room for the {what}: need {size:#x} bytes aligned to {align:#x} in "
                f"[{lo:#x}, {max_addr:#x}] within {self.window}; largest free hole there is {largest:#x} bytes")
        self.used.append(Range.sized(addr, size))
        return addr


def find_space(free: Sequence[Range], size: int, *, align: int = PAGE_SIZE, min_addr: int = 0,
               max_addr: int = ADDR_MAX, top_down: bool = True) -> int | None:
    """Lowest (or highest) aligned start where ``size`` bytes fit in one free range and
    inside ``[min_addr, max_addr]``; None when nothing fits."""
    limit = Range(min_addr, max_addr + 1) if max_addr >= min_addr else None
    if limit is None:
        return None
    candidates = (r.intersect(limit) for r in (sorted(free, reverse=top_down)))
    for r in candidates:
        if r is None:
            continue
        if top_down:
            start = align_down(r.end - size, align)
            if r.end - size >= 0 and start >= r.start:
                return start
        else:
            start = align_up(r.start, align)
            if start + size <= r.end:
                return start
    return None


def largest_hole(free: Sequence[Range], *, min_addr: int = 0, max_addr: int = ADDR_MAX) -> int:
    limit = Range(min_addr, max_addr + 1)
    sizes = [x.size for x in (r.intersect(limit) for r in free) if x]
    return max(sizes, default=0)
