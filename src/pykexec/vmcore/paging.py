"""x86-64 virtual -> physical translation through a dump's own page tables, for every reader.

* :class:`PageTableWalker` -- a 4- or 5-level walk from a given top-level table;
  huge (1 GiB / 2 MiB) mappings are followed.  The Xen reader walks Xen's and dom0's
  tables with it (their entries hold machine addresses).
* :class:`PageTables` -- the crashed kernel's tables, found from VMCOREINFO alone
  (``SYMBOL(init_top_pgt)``, ``NUMBER(phys_base)``).  The kdump-compressed reader
  uses it for every virtual read and the saver to reach ``struct page`` arrays
  (vmemmap is in no PT_LOAD).
* :func:`read_translated` -- a read that may cross mappings, through any translation.

The paging layout is in :mod:`pykexec.layouts.x86_paging`.
"""

from __future__ import annotations

import struct

from pykexec.layouts.x86_paging import (
    PAGE_SHIFT,
    PGDIR_SHIFT_4LEVEL,
    PMD_SHIFT,
    PTE_ADDR_MASK,
    PTE_PRESENT,
    PTE_PSE,
    PUD_SHIFT,
    START_KERNEL_MAP,
    TABLE_ENTRIES,
    TABLE_INDEX_BITS,
)
from pykexec.vmcore.errors import VmcoreError

TYPE_CHECKING = False  # typing costs an import; this name is all type checkers need
if TYPE_CHECKING:
    from collections.abc import Callable

    from pykexec.vmcore.vmcoreinfo import VmcoreInfo

_U64 = struct.Struct("<Q")
_MASK64 = (1 << 64) - 1
_LARGE = 1 << PMD_SHIFT


def read_translated(translate: Callable[[int], tuple[int, int]],
                    read_phys: Callable[[int, int], bytes | memoryview], va: int, size: int) -> bytes:
    """``size`` bytes at ``va``, read piecewise: ``translate(va)`` gives (physical
    address, bytes left in its mapping), ``read_phys`` reads there."""
    out = bytearray()
    while size > 0:
        pa, left = translate(va)
        n = min(size, left)
        out += read_phys(pa, n)
        va += n
        size -= n
    return bytes(out)


def pa_symbol(va: int, phys_base: int) -> int:
    """``__pa_symbol``: the physical address of a virtual address in Linux's image mapping."""
    return (va - START_KERNEL_MAP + phys_base) & _MASK64


def top_table_symbol(info: VmcoreInfo) -> str | None:
    """Which VMCOREINFO symbol names the kernel's top-level page table: ``init_top_pgt``
    (4.13 and later) or ``swapper_pg_dir``; None if neither is there."""
    for name in ("init_top_pgt", "swapper_pg_dir"):
        if info.has_symbol(name):
            return name
    return None


class PageTableWalker:
    """Translation through the tables rooted at physical address ``root``.

    ``read_phys(paddr, size)`` reads where the entries point (physical memory, or
    machine memory for a Xen PV guest's tables); it may raise :class:`VmcoreError`.
    ``addr_mask`` selects the address bits of an entry.  ``space`` names the address
    space in errors ("kernel", "Xen", "dom0").
    """

    def __init__(self, read_phys: Callable[[int, int], bytes | memoryview], root: int, *, levels: int = 4,
                 addr_mask: int = PTE_ADDR_MASK, space: str = "kernel") -> None:
        self._read_phys = read_phys
        self.root = root
        self.levels = levels
        self._addr_mask = addr_mask
        self.space = space
        # Walks already made: 2 MiB slices of huge mappings and 4 KiB pages -> physical base.
        self._large: dict[int, int] = {}
        self._small: dict[int, int] = {}

    def translate(self, va: int) -> tuple[int, int]:
        """(physical address of ``va``, bytes left in its mapping).

        Raises :class:`VmcoreError` if ``va`` is not mapped or a table is not in the dump.
        """
        base = self._large.get(va >> PMD_SHIFT)
        if base is not None:
            off = va & (_LARGE - 1)
            return base + off, _LARGE - off
        base = self._small.get(va >> PAGE_SHIFT)
        if base is not None:
            off = va & ((1 << PAGE_SHIFT) - 1)
            return base + off, (1 << PAGE_SHIFT) - off
        table = self.root
        shift = PGDIR_SHIFT_4LEVEL + TABLE_INDEX_BITS * (self.levels - 4)
        while True:
            slot = table + ((va >> shift) & (TABLE_ENTRIES - 1)) * 8
            try:
                entry = int(_U64.unpack_from(self._read_phys(slot, 8))[0])
            except VmcoreError:
                raise VmcoreError(f"{self.space} page table at {table:#x} is not in the dump "
                                  f"(translating {va:#x})") from None
            if not entry & PTE_PRESENT:
                raise VmcoreError(f"virtual address {va:#x} is not mapped in the {self.space} page tables")
            if shift == PAGE_SHIFT or (shift in (PMD_SHIFT, PUD_SHIFT) and entry & PTE_PSE):
                size = 1 << shift
                base = entry & self._addr_mask & ~(size - 1)
                off = va & (size - 1)
                if shift == PAGE_SHIFT:
                    self._small[va >> PAGE_SHIFT] = base
                else:
                    self._large[va >> PMD_SHIFT] = base + (off & ~(_LARGE - 1))
                return base + off, size - off
            table = entry & self._addr_mask
            shift -= TABLE_INDEX_BITS

    def read(self, va: int, size: int) -> bytes:
        """``size`` bytes at virtual address ``va`` (may cross mappings)."""
        return read_translated(self.translate, self._read_phys, va, size)


class PageTables(PageTableWalker):
    """The crashed kernel's own page tables, from VMCOREINFO alone.

    The root is ``__pa_symbol(init_top_pgt)`` = symbol - __START_KERNEL_map +
    ``NUMBER(phys_base)`` (KASLR included); 5-level when
    ``NUMBER(pgtable_l5_enabled)`` says so; the SME encryption bit is masked off.
    """

    def __init__(self, read_phys: Callable[[int, int], bytes | memoryview], info: VmcoreInfo) -> None:
        name = top_table_symbol(info)
        if name is None or not info.has_number("phys_base"):
            raise VmcoreError("VMCOREINFO lacks SYMBOL(init_top_pgt) or NUMBER(phys_base): "
                              "cannot walk the kernel page tables")
        levels = 5 if info.has_number("pgtable_l5_enabled") and info.number("pgtable_l5_enabled") else 4
        sme = info.number("sme_mask") if info.has_number("sme_mask") else 0
        super().__init__(read_phys, pa_symbol(info.symbol(name), info.number("phys_base")), levels=levels,
                         addr_mask=PTE_ADDR_MASK & ~sme)
