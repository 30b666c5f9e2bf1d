"""x86-64 paging (4- and 5-level) and the fixed addresses of Linux's kernel mapping.

The only definition of these constants in pykexec: the dump readers' page-table
walker (:mod:`pykexec.vmcore.paging`), the Xen dump reader and the elfcorehdr
builder (:mod:`pykexec.crash`) import them.
"""

from __future__ import annotations

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
#: Each level's table: 512 eight-byte entries, 9 bits of the virtual address.
TABLE_INDEX_BITS = 9
TABLE_ENTRIES = 1 << TABLE_INDEX_BITS
#: Virtual-address shift of the top-level table with 4-level paging (PGDIR_SHIFT).
PGDIR_SHIFT_4LEVEL = 39
#: Leaf sizes an entry may map: 4 KiB (PTE), 2 MiB (PMD with PSE), 1 GiB (PUD with PSE).
PMD_SHIFT = 21
PUD_SHIFT = 30

# Entry bits.
PTE_PRESENT = 0x1
PTE_PSE = 0x80  # a 2 MiB or 1 GiB leaf in a PMD or PUD entry
#: Bits 12-51 of an entry: the (physical or, under Xen PV, machine) address it points at.
PTE_ADDR_MASK = 0x000FFFFFFFFFF000

#: ``__START_KERNEL_map``: where Linux maps its image; ``__pa_symbol(x)`` is
#: ``x - START_KERNEL_MAP + phys_base``.
START_KERNEL_MAP = 0xFFFFFFFF80000000
