import pytest

from pykexec.errors import PlacementError
from pykexec.memory import (MiB, Allocator, MemoryMap, MemType, Range, Region, find_space, merge,
                            subtract)


def test_range_basics():
    r = Range.inclusive(0x1000, 0x1FFF)
    assert (r.start, r.end, r.size, r.last) == (0x1000, 0x2000, 0x1000, 0x1FFF)
    assert r.contains(0x1FFF) and not r.contains(0x2000)
    assert r.contains(Range(0x1000, 0x2000)) and not r.contains(Range(0x1000, 0x2001))
    assert not Range(0, 0x1000).overlaps(Range(0x1000, 0x2000))
    assert Range(0, 0x1001).overlaps(Range(0x1000, 0x2000))
    assert Range(0, 0x3000).intersect(Range(0x1000, 0x5000)) == Range(0x1000, 0x3000)
    assert Range(0, 0x1000).intersect(Range(0x1000, 0x2000)) is None
    with pytest.raises(ValueError):
        Range(5, 4)


@pytest.mark.parametrize("a,b,expect", [
    (Range(0, 10), Range(3, 5), [Range(0, 3), Range(5, 10)]),
    (Range(0, 10), Range(0, 5), [Range(5, 10)]),
    (Range(0, 10), Range(5, 10), [Range(0, 5)]),
    (Range(0, 10), Range(0, 10), []),
    (Range(0, 10), Range(20, 30), [Range(0, 10)]),
    (Range(5, 10), Range(0, 20), []),
])
def test_minus(a, b, expect):
    assert a.minus(b) == expect


def test_merge_and_subtract():
    assert merge([Range(10, 20), Range(0, 5), Range(5, 8), Range(15, 30)]) == [Range(0, 8), Range(10, 30)]
    assert subtract([Range(0, 100)], [Range(10, 20), Range(50, 60), Range(90, 200)]) == [
        Range(0, 10), Range(20, 50), Range(60, 90)]


def test_find_space_top_down_and_bottom_up():
    free = [Range(0x100000, 0x400000), Range(0x800000, 0x900000)]
    assert find_space(free, 0x1000, top_down=True) == 0x8FF000
    assert find_space(free, 0x1000, top_down=False) == 0x100000
    # alignment pushes the start up (bottom-up) or down (top-down)
    assert find_space(free, 0x1000, align=0x200000, top_down=False) == 0x200000
    assert find_space(free, 0x1000, align=0x200000, top_down=True) == 0x800000
    # limits: the whole block must sit at or below max_addr
    assert find_space(free, 0x2000, max_addr=0x3FFFFF) == 0x3FE000
    assert find_space(free, 0x2000, min_addr=0x8FF000) is None
    assert find_space(free, 0x200000) == 0x200000  # only the first range is big enough
    assert find_space(free, 0x400000) is None


def test_allocator_never_overlaps_and_keeps_floor():
    alloc = Allocator([Range(0x1000, 0x9F000), Range(0x100000, 0x200000)])
    a = alloc.allocate(0x80000)
    b = alloc.allocate(0x80000)
    assert {a, b} == {0x100000, 0x180000}
    # the low RAM range is below the 1 MiB floor: nothing fits anymore
    with pytest.raises(PlacementError, match="largest free hole"):
        alloc.allocate(0x1000)
    low = Allocator([Range(0x1000, 0x9F000)], floor=0)
    assert low.allocate(0x1000, top_down=False) == 0x1000


def test_allocator_window_and_reserve():
    alloc = Allocator([Range(0, 0x10000000)], window=Range(0x2000000, 0x3000000))
    assert alloc.allocate(0x1000) == 0x2FFF000
    alloc.reserve(Range(0x2000000, 0x2100000))
    with pytest.raises(PlacementError):
        alloc.reserve(Range(0x2080000, 0x2090000))  # already taken
    with pytest.raises(PlacementError):
        alloc.reserve(Range(0x1000000, 0x1001000))  # outside the window
    assert alloc.allocate(0x1000, top_down=False) == 0x2100000


def test_memory_map_merges_and_rejects_conflicts():
    mm = MemoryMap([Region(Range(0x100000, 0x200000), MemType.RAM),
                    Region(Range(0x200000, 0x300000), MemType.RAM),
                    Region(Range(0, 0x1000), MemType.RESERVED)])
    assert mm.ram() == [Range(0x100000, 0x300000)]
    assert mm.type_at(0x500) is MemType.RESERVED
    assert mm.is_ram(Range(0x1FF000, 0x201000))
    with pytest.raises(ValueError, match="overlap"):
        MemoryMap([Region(Range(0, 0x2000), MemType.RAM), Region(Range(0x1000, 0x3000), MemType.ACPI)])


def test_memtype_names():
    assert MemType.from_name("System RAM") is MemType.RAM
    assert MemType.from_name("System RAM (kmem)") is MemType.RAM
    assert MemType.from_name("reserved") is MemType.RESERVED
    assert MemType.from_name("ACPI Non-volatile Storage") is MemType.NVS
    assert MemType.from_name("PCI Bus 0000:00") is None
    assert [t.e820 for t in (MemType.RAM, MemType.RESERVED, MemType.ACPI, MemType.NVS)] == [1, 2, 3, 4]
    assert MiB == 0x100000
