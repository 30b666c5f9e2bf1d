"""pykexec.vmcore.paging: the one x86-64 page-table walker, on hand-built tables."""

from __future__ import annotations

import struct

import pytest

from pykexec.layouts.x86_paging import PTE_PRESENT, PTE_PSE, START_KERNEL_MAP
from pykexec.vmcore.errors import VmcoreError
from pykexec.vmcore.paging import PageTables, PageTableWalker, read_translated
from pykexec.vmcore.vmcoreinfo import VmcoreInfo

PAGE = 4096
MiB, GiB = 1 << 20, 1 << 30


class Phys:
    """Sparse physical memory: 4 KiB pages, absent ones raise like a dump reader."""

    def __init__(self) -> None:
        self.pages: dict[int, bytearray] = {}
        self.reads = 0

    def page(self, pfn: int) -> bytearray:
        return self.pages.setdefault(pfn, bytearray(PAGE))

    def entry(self, table_pfn: int, index: int, value: int) -> None:
        struct.pack_into("<Q", self.page(table_pfn), index * 8, value)

    def read(self, pa: int, size: int) -> bytes:
        self.reads += 1
        out = b""
        while size:
            pfn, off = divmod(pa, PAGE)
            if pfn not in self.pages:
                raise VmcoreError(f"physical address {pa:#x} is not in the dump")
            n = min(size, PAGE - off)
            out += bytes(self.pages[pfn][off:off + n])
            pa, size = pa + n, size - n
        return out


def idx(va: int, shift: int) -> int:
    return (va >> shift) & 511


def four_level(phys: Phys) -> tuple[int, dict[str, int]]:
    """Root at pfn 1; a 1 GiB, a 2 MiB and a 4 KiB mapping. Returns (root, {kind: va})."""
    va_1g, va_2m, va_4k = 0xFFFF888000000000, 0xFFFFEA0000200000, 0xFFFFC90000003000
    phys.entry(1, idx(va_1g, 39), 2 * PAGE | PTE_PRESENT)
    phys.entry(2, idx(va_1g, 30), 1 * GiB | PTE_PSE | PTE_PRESENT)
    phys.entry(1, idx(va_2m, 39), 3 * PAGE | PTE_PRESENT)
    phys.entry(3, idx(va_2m, 30), 4 * PAGE | PTE_PRESENT)
    phys.entry(4, idx(va_2m, 21), 6 * MiB | PTE_PSE | PTE_PRESENT)
    phys.entry(1, idx(va_4k, 39), 5 * PAGE | PTE_PRESENT)
    phys.entry(5, idx(va_4k, 30), 6 * PAGE | PTE_PRESENT)
    phys.entry(6, idx(va_4k, 21), 7 * PAGE | PTE_PRESENT)
    phys.entry(7, idx(va_4k, 12), 0x42 * PAGE | PTE_PRESENT | 1 << 63)  # NX is not address
    return PAGE, {"1g": va_1g, "2m": va_2m, "4k": va_4k}


def test_leaf_sizes_and_what_is_left_of_each() -> None:
    phys = Phys()
    root, va = four_level(phys)
    walker = PageTableWalker(phys.read, root)
    assert walker.translate(va["1g"] + 0x12345678) == (GiB + 0x12345678, GiB - 0x12345678)
    assert walker.translate(va["2m"] + 0x1234) == (6 * MiB + 0x1234, 2 * MiB - 0x1234)
    assert walker.translate(va["4k"] + 0x10) == (0x42 * PAGE + 0x10, PAGE - 0x10)


def test_cached_translations_agree_with_walks() -> None:
    phys = Phys()
    root, va = four_level(phys)
    walker = PageTableWalker(phys.read, root)
    addrs = [va["1g"] + 3 * MiB + 5, va["1g"] + 3 * MiB + 9, va["2m"] + 77, va["2m"] + 1 * MiB,
             va["4k"] + 1, va["4k"] + 4000]
    first = [walker.translate(a)[0] for a in addrs]
    walks = phys.reads
    assert [walker.translate(a)[0] for a in addrs] == first
    assert phys.reads == walks  # second round: from the cache
    fresh = PageTableWalker(phys.read, root)
    assert [fresh.translate(a)[0] for a in addrs[::-1]] == first[::-1]


def test_unmapped_and_missing_tables_are_one_line_errors() -> None:
    phys = Phys()
    root, va = four_level(phys)
    walker = PageTableWalker(phys.read, root, space="dom0")
    with pytest.raises(VmcoreError, match="virtual address 0xffffc90000005000 is not mapped in the dom0 page tables"):
        walker.translate(va["4k"] + 2 * PAGE)
    phys.entry(1, idx(0xFFFF900000000000, 39), 0x99 * PAGE | PTE_PRESENT)  # an L3 the dump lacks
    with pytest.raises(VmcoreError, match=r"dom0 page table at 0x99000 is not in the dump \(translating"):
        walker.translate(0xFFFF900000000000)


def test_read_crosses_mappings() -> None:
    phys = Phys()
    root, va = four_level(phys)
    phys.entry(7, idx(va["4k"] + PAGE, 12), 0x50 * PAGE | PTE_PRESENT)
    phys.page(0x42)[-3:] = b"abc"
    phys.page(0x50)[:4] = b"defg"
    walker = PageTableWalker(phys.read, root)
    assert walker.read(va["4k"] + PAGE - 3, 7) == b"abcdefg"
    assert read_translated(walker.translate, phys.read, va["4k"] + PAGE - 3, 7) == b"abcdefg"


def test_kernel_tables_from_vmcoreinfo_five_level_and_sme() -> None:
    """Root = __pa_symbol(init_top_pgt) with phys_base; a 5th level; the SME bit masked off."""
    phys = Phys()
    sme = 1 << 47
    phys_base = 0x100 * PAGE
    pgd_va = START_KERNEL_MAP + 0x2000
    root = pgd_va - START_KERNEL_MAP + phys_base
    va = 0xFF11000000000000
    phys.entry(root // PAGE, idx(va, 48), 0x201 * PAGE | sme | PTE_PRESENT)
    phys.entry(0x201, idx(va, 39), 0x202 * PAGE | sme | PTE_PRESENT)
    phys.entry(0x202, idx(va, 30), 2 * GiB | sme | PTE_PSE | PTE_PRESENT)
    info = VmcoreInfo(f"SYMBOL(init_top_pgt)={pgd_va:x}\nNUMBER(phys_base)={phys_base}\n"
                      f"NUMBER(pgtable_l5_enabled)=1\nNUMBER(sme_mask)={sme}\n".encode())
    tables = PageTables(phys.read, info)
    assert (tables.root, tables.levels) == (root, 5)
    assert tables.translate(va + 5)[0] == 2 * GiB + 5
    with pytest.raises(VmcoreError, match="lacks SYMBOL"):
        PageTables(phys.read, VmcoreInfo(b"NUMBER(phys_base)=0\n"))
