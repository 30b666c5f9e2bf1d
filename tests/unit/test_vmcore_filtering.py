"""makedumpfile's dump levels from synthetic ``struct page`` arrays
(:func:`pykexec.vmcore.filtering.excluded_pages`).

The machine is the one of ``test_vmcore_save_synth`` (8 MiB, real page tables,
SPARSEMEM_EXTREME, two buddy blocks); here its struct pages also get cache,
private, swap-cache, anonymous, slab, hwpoison and offline pages and compound
pages (a page-cache folio, an anonymous one, a slab one, a hugetlbfs page)
with the VMCOREINFO encodings of 6.1 and of 6.12 (flag numbers, page types,
where the compound order is).  Each scenario page says which dump level bit
leaves it out; the expected result is built from that list.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from test_vmcore_save_synth import (
    NPAGES,
    PAGE,
    PFN_PT_VM,
    PFN_SECTIONS,
    PFN_STRUCT_PAGES,
    VMCOREINFO,
    VMEMMAP,
    machine,
    physical_memory,
)

from pykexec.vmcore.elfcore import ElfCore
from pykexec.vmcore.filtering import Exclusion, excluded_pages
from pykexec.vmcore.page_rules import KINDS
from pykexec.vmcore.paging import PageTables
from pykexec.vmcore.pfn_runs import merge

SIZE_PAGE = 64

#: VMCOREINFO of the page flags and types, as 6.1 and 6.12 x86_64 kernels write them
#: (6.1 with CONFIG_MEMORY_FAILURE for PG_hwpoison, which the Debian cloud kernel lacks).
KEYS_6_1 = ["OFFSET(page.flags)=0", "OFFSET(page.compound_head)=8", "OFFSET(page.mapping)=24",
            "OFFSET(page.compound_dtor)=16", "OFFSET(page.compound_order)=17",
            "NUMBER(PG_lru)=4", "NUMBER(PG_private)=13", "NUMBER(PG_swapcache)=10",
            "NUMBER(PG_swapbacked)=19", "NUMBER(PG_slab)=9", "NUMBER(PG_hwpoison)=22",
            "NUMBER(PG_head_mask)=65536", "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)=-129",
            "NUMBER(HUGETLB_PAGE_DTOR)=2", "NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)=-257"]
KEYS_6_12 = ["OFFSET(page.flags)=0", "OFFSET(page.compound_head)=8", "OFFSET(page.mapping)=24",
             "NUMBER(PG_lru)=5", "NUMBER(PG_private)=14", "NUMBER(PG_swapcache)=10",
             "NUMBER(PG_swapbacked)=17", "NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)=-184549376",
             "NUMBER(PG_hwpoison)=20", "NUMBER(PG_head_mask)=64",
             "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)=-268435456",
             "NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE)=-201326592",
             "NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)=-251658240"]
LAYOUTS = {"6.1": KEYS_6_1, "6.12": KEYS_6_12}

ANON_VMA = 0xFFFF888004321000   # page.mapping of an anonymous page: an anon_vma | PAGE_MAPPING_ANON
FILE_MAPPING = 0xFFFF888004322000


def keys(layout: str) -> dict[str, int]:
    return {k[k.index("(") + 1:k.index(")")]: int(k.split("=")[1]) for k in LAYOUTS[layout]}


def info_lines(layout: str, *, drop: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> list[str]:
    """The save test's VMCOREINFO with ``layout``'s page keys; keys starting with
    one of ``drop`` left out."""
    base = [k for k in VMCOREINFO if not k.startswith("NUMBER(PAGE_BUDDY")] + LAYOUTS[layout]
    return [k for k in base if not k.startswith(drop)] + list(extra)


class Pages:
    """Writes struct page fields of the synthetic machine's array."""

    def __init__(self, mem: bytearray, layout: str) -> None:
        self.mem = mem
        self.k = keys(layout)
        self.layout = layout

    def _at(self, pfn: int, off: int) -> int:
        return PFN_STRUCT_PAGES * PAGE + pfn * SIZE_PAGE + off

    def flags(self, pfn: int, *names: str) -> None:
        """Set these flags (``head`` is PG_head_mask) in page.flags, keeping the others."""
        value = struct.unpack_from("<Q", self.mem, self._at(pfn, 0))[0]
        for name in names:
            value |= self.k["PG_head_mask"] if name == "head" else 1 << self.k[f"PG_{name}"]
        struct.pack_into("<Q", self.mem, self._at(pfn, 0), value)

    def mapping(self, pfn: int, value: int) -> None:
        struct.pack_into("<Q", self.mem, self._at(pfn, 24), value)

    def mapcount(self, pfn: int, value: int) -> None:
        struct.pack_into("<i", self.mem, self._at(pfn, 48), value)

    def private(self, pfn: int, value: int) -> None:
        struct.pack_into("<Q", self.mem, self._at(pfn, 40), value)

    def page_type(self, pfn: int, name: str) -> None:
        """page_type (the ``_mapcount`` word) = ``NUMBER(PAGE_<NAME>_MAPCOUNT_VALUE)``."""
        self.mapcount(pfn, self.k[f"PAGE_{name.upper()}_MAPCOUNT_VALUE"])

    def compound(self, head: int, order: int, *head_flags: str, hugetlb: bool = False) -> None:
        """A compound page: head flags, the order (and hugetlbfs mark) where the layout keeps
        them, and every tail's compound_head pointing at the head (bit 0 set)."""
        for pfn in range(head + 1, head + (1 << order)):
            struct.pack_into("<Q", self.mem, self._at(pfn, 8), (VMEMMAP + head * SIZE_PAGE) | 1)
        self.flags(head, "head", *head_flags)
        if self.layout == "6.12":   # folio._flags_1: the order in the low byte of page[1].flags
            struct.pack_into("<B", self.mem, self._at(head + 1, 0), order)
            if hugetlb:
                self.page_type(head, "hugetlb")
        else:                       # page[1].compound_dtor / compound_order
            self.mem[self._at(head + 1, 17)] = order
            if hugetlb:
                self.mem[self._at(head + 1, 16)] = self.k["HUGETLB_PAGE_DTOR"]


Expect = dict[int, list[tuple[int, str]]]


def scenario(mem: bytearray, layout: str) -> Expect:
    """Write the scenario's struct pages; returns pfn -> [(dump level bits that leave it
    out, the kind it counts as), ...], first match wins.  Bits 0: hwpoison/offline, left
    out whenever the struct pages are scanned."""
    p = Pages(mem, layout)
    expect: Expect = {}

    def page(pfns: range | list[int], bits: int, kind: str) -> None:
        for pfn in pfns:
            expect.setdefault(pfn, []).append((bits, kind))

    p.flags(200, "lru")                                   # page cache
    p.mapping(200, FILE_MAPPING)
    page([200], 2 | 4, "cache")
    p.flags(201, "lru", "private")                        # page cache with buffer heads
    page([201], 4, "cache_private")
    p.flags(202, "swapcache", "swapbacked")               # swap cache, off the LRU
    page([202], 2 | 4, "cache")
    p.flags(203, "swapcache")                             # PG_swapcache alone is PG_owner_priv_1: not cache
    p.flags(204, "lru", "swapbacked")                     # anonymous on the LRU: user, never cache
    p.mapping(204, ANON_VMA | 1)
    page([204], 8, "user")
    p.mapping(205, ANON_VMA | 1)                          # slab whose mapping word is odd (6.2+ slab->slabs)
    if layout == "6.12":
        p.page_type(205, "slab")
    else:
        p.flags(205, "slab")
    p.flags(206, "hwpoison")
    page([206], 0, "hwpoison")
    p.page_type(207, "offline")
    page([207], 0, "offline")

    p.compound(256, 3, "lru")                             # large page-cache folio
    p.mapping(256, FILE_MAPPING)
    page(range(256, 264), 2 | 4, "cache")
    p.compound(264, 3, "lru", "swapbacked")               # anonymous large folio
    p.mapping(264, ANON_VMA | 1)
    page(range(264, 272), 8, "user")
    p.compound(272, 2, *(["slab"] if layout == "6.1" else []))   # slab page of order 2
    if layout == "6.12":
        p.page_type(272, "slab")
    p.mapping(272, ANON_VMA | 1)
    p.compound(280, 2)                                    # kept head: its tails are kept whatever they say
    p.flags(281, "lru")
    p.flags(290, "head", "lru")                           # head flag on a misaligned pfn: the page alone
    struct.pack_into("<B", mem, PFN_STRUCT_PAGES * PAGE + 291 * SIZE_PAGE + (0 if layout == "6.12" else 17), 2)
    page([290], 2 | 4, "cache")
    p.mapcount(300, p.k["PAGE_BUDDY_MAPCOUNT_VALUE"])     # buddy marker with an order beyond MAX_ORDER
    p.private(300, 20)
    if layout == "6.1":
        p.mapcount(301, p.k["PAGE_BUDDY_MAPCOUNT_VALUE"])  # marker on a slab page: not free
        p.flags(301, "slab")

    p.compound(512, 9, hugetlb=True)                      # a 2 MiB hugetlbfs page
    page(range(512, 1024), 8, "user")
    # physical_memory() made the buddy blocks 1024 (order 9) and 1800 (order 2).
    page(range(1024, 1536), 16, "free")
    page(range(1800, 1804), 16, "free")
    p.flags(1801, "lru")                                  # stale LRU bit inside a free block,
    page([1801], 2 | 4, "cache")                          # which counts only when free is not asked for
    return expect


def expected(expect: Expect, level: int) -> tuple[list[tuple[int, int]], dict[str, int]]:
    """Ranges and counts ``level`` should give (the struct pages being scanned)."""
    chosen: dict[int, str] = {}
    for pfn, choices in expect.items():
        kind = next((kind for bits, kind in choices if bits & level or not bits), None)
        if kind is not None:
            chosen[pfn] = kind
    counts = dict.fromkeys(KINDS, 0)
    for kind in chosen.values():
        counts[kind] += 1
    return merge([(p, p + 1) for p in chosen]), counts


def run(tmp_path: Path, info: list[str], mem: bytearray, level: int, name: str = "vmcore.elf") -> Exclusion:
    src, _ = machine(tmp_path, info=info, mem=mem, name=name)
    with ElfCore(src) as core:
        vi = core.require_vmcoreinfo()
        tables = PageTables(lambda a, n: core.read(a, n, physical=True), vi)
        return excluded_pages(vi, tables, [(0, NPAGES)], PAGE, level)


def layout_mem(layout: str) -> tuple[bytearray, Expect]:
    buddy = keys(layout)["PAGE_BUDDY_MAPCOUNT_VALUE"]
    mem = physical_memory(buddy_value=buddy)
    return mem, scenario(mem, layout)


# -- every rule, both encodings ----------------------------------------------------------------

@pytest.mark.parametrize("layout", ["6.1", "6.12"])
@pytest.mark.parametrize("level", [2, 4, 6, 8, 16, 30, 31, 17, 1, 0])
def test_levels(tmp_path: Path, layout: str, level: int) -> None:
    mem, expect = layout_mem(layout)
    ex = run(tmp_path, info_lines(layout), mem, level)
    ranges, counts = expected(expect, level)
    assert (ex.ranges, ex.counts, ex.note) == (ranges, counts, "")
    assert ex.pages == sum(counts.values())


def test_small_sections_carry_blocks_across(tmp_path: Path) -> None:
    """Sections of 256 pfns: the hugetlbfs page and the order-9 free block span two
    sections each; the result must not change."""
    mem, expect = layout_mem("6.12")
    for nr in range(NPAGES // 256):   # with vmemmap every section's encoded mem_map is the same
        struct.pack_into("<Q", mem, PFN_SECTIONS * PAGE + nr * 16, VMEMMAP | 0x7)
    info = info_lines("6.12", drop=("NUMBER(SECTION_SIZE_BITS)", "NUMBER(MAX_PHYSMEM_BITS)"),
                      extra=("NUMBER(SECTION_SIZE_BITS)=20", "NUMBER(MAX_PHYSMEM_BITS)=39"))
    ex = run(tmp_path, info, mem, 31)
    assert (ex.ranges, ex.counts) == expected(expect, 31)


def test_ram_subset(tmp_path: Path) -> None:
    """Only pfns in ``ram`` are judged or returned.  A block whose head is in RAM goes
    on across a hole (makedumpfile clears the bits up to its end); one whose head is not
    is never seen (makedumpfile looks only at pfns in the dump)."""
    mem, _ = layout_mem("6.1")
    src, _ = machine(tmp_path, info=info_lines("6.1"), mem=mem)
    with ElfCore(src) as core:
        vi = core.require_vmcoreinfo()
        tables = PageTables(lambda a, n: core.read(a, n, physical=True), vi)
        ram = [(200, 203), (1024, 1100), (1200, 1300), (1801, NPAGES)]
        ex = excluded_pages(vi, tables, ram, PAGE, 31)
    assert ex.ranges == [(200, 203), (1024, 1100), (1200, 1300), (1801, 1802)]
    assert ex.counts == {**dict.fromkeys(KINDS, 0), "free": 176, "cache": 3, "cache_private": 1}


def test_unmapped_struct_pages_are_kept(tmp_path: Path) -> None:
    """A page of the struct page array missing from the page tables: its 64 pages are kept."""
    mem, expect = layout_mem("6.1")
    hole = 200 * SIZE_PAGE // PAGE                     # the array page holding pfns 192-255
    struct.pack_into("<Q", mem, PFN_PT_VM * PAGE + hole * 8, 0)
    ex = run(tmp_path, info_lines("6.1"), mem, 31)
    first = hole * PAGE // SIZE_PAGE
    kept = {p: e for p, e in expect.items() if not first <= p < first + PAGE // SIZE_PAGE}
    assert len(kept) < len(expect)
    assert (ex.ranges, ex.counts) == expected(kept, 31)


# -- what older or odder VMCOREINFO gives -----------------------------------------------------

def test_without_pg_swapbacked_swapcache_alone_is_cache(tmp_path: Path) -> None:
    """Before 4.10 there was no PG_swapbacked: PG_swapcache alone meant swap cache."""
    mem, expect = layout_mem("6.1")
    expect[203] = [(2 | 4, "cache")]
    ex = run(tmp_path, info_lines("6.1", drop=("NUMBER(PG_swapbacked)",)), mem, 2)
    assert (ex.ranges, ex.counts, ex.note) == (*expected(expect, 2), "")


def test_without_pg_lru_cache_kept_user_still_excluded(tmp_path: Path) -> None:
    mem, expect = layout_mem("6.1")
    ex = run(tmp_path, info_lines("6.1", drop=("NUMBER(PG_lru)",)), mem, 2 | 8)
    assert ex.note == "VMCOREINFO has no NUMBER(PG_lru): cache pages kept"
    assert (ex.ranges, ex.counts) == expected(expect, 8)


def test_without_pg_private_bit_2_alone_keeps_cache(tmp_path: Path) -> None:
    mem, expect = layout_mem("6.1")
    info = info_lines("6.1", drop=("NUMBER(PG_private)",))
    ex = run(tmp_path, info, mem, 2)
    assert "NUMBER(PG_private)" in ex.note and ex.note.endswith("cache pages kept")
    assert (ex.ranges, ex.counts) == expected(expect, 0)
    # With bit 4 every cache page goes; unable to tell private ones, all count as "cache".
    ex = run(tmp_path, info, mem, 4, name="again.elf")
    expect[201] = [(4, "cache")]
    assert (ex.ranges, ex.counts, ex.note) == (*expected(expect, 4), "")


def test_without_swapcache_number_noted(tmp_path: Path) -> None:
    mem, expect = layout_mem("6.1")
    del expect[202]   # swap cache off the LRU can no longer be recognised
    ex = run(tmp_path, info_lines("6.1", drop=("NUMBER(PG_swapcache)",)), mem, 4)
    assert ex.note == "VMCOREINFO has no NUMBER(PG_swapcache): swap cache pages off the LRU kept"
    assert (ex.ranges, ex.counts) == expected(expect, 4)


@pytest.mark.parametrize("layout,drop", [("6.1", "NUMBER(PG_slab)"), ("6.12", "NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)")])
def test_without_slab_recognition_anonymous_kept(tmp_path: Path, layout: str, drop: str) -> None:
    """Slab pages cannot be told from anonymous ones: anonymous pages are kept (not the
    kernel's slab pages dropped); hugetlbfs pages need no slab test and still go."""
    mem, expect = layout_mem(layout)
    ex = run(tmp_path, info_lines(layout, drop=(drop,)), mem, 8)
    assert ex.note.startswith("VMCOREINFO has neither NUMBER(PG_slab) nor NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)")
    assert ex.note.endswith("anonymous user pages kept")
    hugetlb = {p: e for p, e in expect.items() if 512 <= p < 1024 or e[0][0] == 0}
    assert (ex.ranges, ex.counts) == expected(hugetlb, 8)


def test_without_buddy_value_free_kept(tmp_path: Path) -> None:
    mem, expect = layout_mem("6.1")
    ex = run(tmp_path, info_lines("6.1", drop=("NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)",)), mem, 31)
    assert ex.note == "VMCOREINFO has no NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE): free pages kept"
    no_free = {p: [c for c in e if c[1] != "free"] for p, e in expect.items()}
    assert (ex.ranges, ex.counts) == expected(no_free, 31 & ~16)


def test_without_compound_head_tails_judged_alone(tmp_path: Path) -> None:
    """No OFFSET(page.compound_head): as in makedumpfile, tails are not recognised;
    the kept compound page's tail with a stray LRU bit (281) is then page cache."""
    mem, expect = layout_mem("6.1")
    expect[281] = [(2 | 4, "cache")]
    ex = run(tmp_path, info_lines("6.1", drop=("OFFSET(page.compound_head)",)), mem, 2)
    assert (ex.ranges, ex.counts, ex.note) == (*expected(expect, 2), "")


def test_without_compound_order_heads_go_alone(tmp_path: Path) -> None:
    """No way to the order (makedumpfile 1.7.2 on 6.6+ kernels): heads are judged as single
    pages and their tails kept; the hugetlbfs page is no longer recognised."""
    mem, expect = layout_mem("6.1")
    ex = run(tmp_path, info_lines("6.1", drop=("OFFSET(page.compound_order)",)), mem, 30)
    alone = {p: e for p, e in expect.items()
             if not (257 <= p < 264 or 265 <= p < 272 or 512 <= p < 1024)}
    assert (ex.ranges, ex.counts, ex.note) == (*expected(alone, 30), "")


def test_hwpoison_and_offline_only_when_scanning(tmp_path: Path) -> None:
    """makedumpfile scans the struct pages for bits 2/4/8, for free pages, or whenever the
    kernel exports PG_hwpoison; hwpoison and offline pages go whenever it scans."""
    mem, expect = layout_mem("6.1")
    info = info_lines("6.1", drop=("NUMBER(PG_hwpoison)",))
    ex = run(tmp_path, info, mem, 1)
    assert (ex.ranges, ex.pages, ex.note) == ([], 0, "")
    ex = run(tmp_path, info, mem, 16, name="free.elf")
    no_hw = {p: e for p, e in expect.items() if e[0][1] != "hwpoison"}
    assert (ex.ranges, ex.counts) == expected(no_hw, 16)
    assert ex.counts["offline"] == 1


def test_without_mem_section_nothing_left_out(tmp_path: Path) -> None:
    mem, _ = layout_mem("6.12")
    ex = run(tmp_path, info_lines("6.12", drop=("SYMBOL(mem_section)",)), mem, 31)
    assert ex.note == "VMCOREINFO has no SYMBOL(mem_section): free, cache and user pages kept"
    assert (ex.ranges, ex.pages) == ([], 0)
    ex = run(tmp_path, info_lines("6.12", drop=("SYMBOL(mem_section)",)), mem, 1, name="one.elf")
    assert (ex.ranges, ex.note) == ([], "")


def test_unknown_layout_or_bad_value_is_a_note(tmp_path: Path) -> None:
    mem, _ = layout_mem("6.12")
    ex = run(tmp_path, info_lines("6.12", drop=("LENGTH(mem_section)",), extra=("LENGTH(mem_section)=5",)), mem, 24)
    assert ex.note == "LENGTH(mem_section)=5 matches neither SPARSEMEM layout: free and user pages kept"
    assert (ex.ranges, ex.pages) == ([], 0)
    ex = run(tmp_path, info_lines("6.12", drop=("NUMBER(PG_lru)",), extra=("NUMBER(PG_lru)=five",)), mem, 2,
             name="bad.elf")
    assert ex.note == "VMCOREINFO NUMBER(PG_lru)='five' is not a number: cache pages kept"
    assert (ex.ranges, ex.pages) == ([], 0)


@pytest.mark.parametrize("key,value", [
    ("NUMBER(SECTION_SIZE_BITS)", "99"), ("NUMBER(SECTION_SIZE_BITS)", "2"), ("NUMBER(MAX_PHYSMEM_BITS)", "3"),
    ("SIZE(page)", "0"), ("SIZE(page)", "100000000"), ("SIZE(mem_section)", "0"), ("LENGTH(mem_section)", "0"),
    ("OFFSET(mem_section.section_mem_map)", "4096"), ("OFFSET(page.flags)", "-5"), ("OFFSET(page.private)", "64"),
    ("NUMBER(PG_lru)", "-1"), ("NUMBER(PG_lru)", "100000"), ("NUMBER(PG_head_mask)", "0"),
    ("LENGTH(zone.free_area)", "0")])
def test_hostile_layout_values_keep_everything(tmp_path: Path, key: str, value: str) -> None:
    """Values no kernel has (a damaged or forged dump) must not crash the scan, read
    wild sections or mis-shift flags: nothing is left out and the note names the key."""
    mem, _ = layout_mem("6.12")
    ex = run(tmp_path, info_lines("6.12", drop=(key + "=",), extra=(f"{key}={value}",)), mem, 31)
    assert ex.note == f"VMCOREINFO has an implausible {key}={value}: free, cache and user pages kept"
    assert (ex.ranges, ex.pages) == ([], 0)


def test_exclusion_is_slotted() -> None:
    ex = Exclusion([(1, 2)], dict.fromkeys(KINDS, 0))
    assert not hasattr(ex, "__dict__") and ex.note == "" and "1 ranges" in repr(ex)


# -- free pages on the per-CPU lists (percpu_free.py) ----------------------------------------

PERCPU_KEYS = ("OFFSET(page._refcount)=52", "OFFSET(page.lru)=8")


def _lru(pfn: int) -> int:
    return VMEMMAP + pfn * SIZE_PAGE + 8


def _link(mem: bytearray, chain: list[int]) -> None:
    """A circular list through ``chain``: list_head virtual addresses (a struct page's lru,
    or a head in the direct map), each entry's next and prev written where it lives."""
    def at(addr: int) -> int:   # the physical offset of a list_head
        return addr - VMEMMAP + PFN_STRUCT_PAGES * PAGE if addr >= VMEMMAP else addr - DIRECT_MAP

    for i, entry in enumerate(chain):
        struct.pack_into("<QQ", mem, at(entry), chain[(i + 1) % len(chain)], chain[i - 1])


DIRECT_MAP = 0xFFFF888000000000


def percpu_mem() -> tuple[bytearray, set[int]]:
    """The 6.1 machine with two per-CPU lists (heads in the direct map, as per_cpu_pages
    are) and pages that look free but are not on one; returns the pfns that are."""
    mem = physical_memory()
    p = Pages(mem, "6.1")
    heads = [DIRECT_MAP + 50 * PAGE + 0x40, DIRECT_MAP + 50 * PAGE + 0x50]
    for pfn in (300, 301, 700, 302, 303, 304, 305, 306):
        p.mapcount(pfn, -1)                          # no page type: what a free page off the buddy lists has
    _link(mem, [heads[0], _lru(300), _lru(301), _lru(700)])
    _link(mem, [heads[1], _lru(304), _lru(305), _lru(306)])
    struct.pack_into("<QQ", mem, PFN_STRUCT_PAGES * PAGE + 302 * SIZE_PAGE + 8, _lru(302), _lru(302))  # empty list_head
    struct.pack_into("<QQ", mem, PFN_STRUCT_PAGES * PAGE + 303 * SIZE_PAGE + 8, _lru(301), _lru(300))  # stale links
    struct.pack_into("<i", mem, PFN_STRUCT_PAGES * PAGE + 304 * SIZE_PAGE + 52, 1)                  # in use
    p.mapping(305, FILE_MAPPING)                                                                   # e.g. frozen for migration
    p.flags(306, "private")
    return mem, {300, 301, 700}


@pytest.mark.parametrize("level", [31, 16, 17, 15, 0])
def test_free_pages_on_per_cpu_lists(tmp_path: Path, level: int) -> None:
    mem, on_lists = percpu_mem()
    ex = run(tmp_path, info_lines("6.1", extra=PERCPU_KEYS), mem, level)
    assert ex.note == ""
    left_out = {p for s, e in ex.ranges for p in range(s, e)}
    if level & 16:
        assert ex.counts["free_percpu"] == 3 and on_lists <= left_out
        assert ex.counts["free"] == 516
    else:
        assert ex.counts["free_percpu"] == 0 and not on_lists & left_out
    assert not {302, 303, 304, 305, 306} & left_out


def test_per_cpu_lists_need_refcount_and_lru_offsets(tmp_path: Path) -> None:
    mem, on_lists = percpu_mem()
    for extra in (PERCPU_KEYS[:1], PERCPU_KEYS[1:]):
        ex = run(tmp_path, info_lines("6.1", extra=extra), mem, 31)
        assert ex.counts["free_percpu"] == 0 and ex.counts["free"] == 516
