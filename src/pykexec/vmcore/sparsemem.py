"""The crashed kernel's ``struct page`` array, found through SPARSEMEM's ``mem_section``
with VMCOREINFO only (no debug symbols) and read through its page tables.

Struct pages are read in :data:`_PIECE_PAGES` pieces, and only the bytes a caller
asks for are kept, as one-byte-per-page columns (``bytes[off::size]``): the
dump-level rules test a handful of bytes of each struct page, never whole ones.
"""

from __future__ import annotations

import struct

from pykexec.vmcore.errors import VmcoreError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from pykexec.vmcore.paging import PageTables
    from pykexec.vmcore.vmcoreinfo import VmcoreInfo

_U64 = struct.Struct("<Q")

#: What VMCOREINFO must say for the struct page array to be found at all.
LAYOUT_KEYS = ("SYMBOL(mem_section)", "LENGTH(mem_section)", "SIZE(mem_section)",
               "OFFSET(mem_section.section_mem_map)", "NUMBER(SECTION_SIZE_BITS)",
               "NUMBER(MAX_PHYSMEM_BITS)", "SIZE(page)")

#: Struct pages read at once: small enough that the allocator reuses the buffer
#: (a fresh multi-MiB buffer costs more in page faults than the copy).
_PIECE_PAGES = 2048


class UnknownLayout(Exception):
    """VMCOREINFO describes a memory layout the walk does not know; the message says which."""


def present_sections(info: VmcoreInfo, tables: PageTables, ram: Sequence[tuple[int, int]],
                     page: int) -> Iterator[tuple[int, int, int]]:
    """``(pfn, stop, mem_map)`` for each piece of ``ram`` (sorted pfn ranges) inside one
    present section that has a struct page array, in pfn order: the struct page of
    pfn ``p`` is at virtual address ``mem_map + p * SIZE(page)``.  Sections that
    cannot be read are skipped (their pages are kept).  Raises :class:`UnknownLayout`
    for a SPARSEMEM layout it does not know, before yielding anything.
    """
    page_shift = page.bit_length() - 1
    pfn_shift = info.number("SECTION_SIZE_BITS") - page_shift   # pfns per section = 1 << pfn_shift
    if pfn_shift <= 0:
        raise UnknownLayout(f"NUMBER(SECTION_SIZE_BITS) is not above the page shift ({page_shift})")
    size_ms = info.size("mem_section")
    off_smm = info.offset("mem_section.section_mem_map")
    nr_sections = 1 << (info.number("MAX_PHYSMEM_BITS") - info.number("SECTION_SIZE_BITS"))
    per_root = page // size_ms
    roots = info.length("mem_section")
    extreme = roots * per_root == nr_sections   # else: a flat array of nr_sections structs
    if not extreme and roots != nr_sections:
        raise UnknownLayout(f"LENGTH(mem_section)={roots} matches neither SPARSEMEM layout")
    mem_section = info.symbol("mem_section")
    root_cache: dict[int, int] = {}

    def section_mem_map(nr: int) -> int:
        if extreme:
            root = root_cache.get(nr // per_root)
            if root is None:
                root = root_cache[nr // per_root] = _U64.unpack(tables.read(mem_section + 8 * (nr // per_root), 8))[0]
            if root == 0:
                return 0
            addr = root + (nr % per_root) * size_ms + off_smm
        else:
            addr = mem_section + nr * size_ms + off_smm
        return int(_U64.unpack(tables.read(addr, 8))[0])

    for start, end in ram:
        pfn = start
        while pfn < end:
            nr = pfn >> pfn_shift
            stop = min(end, (nr + 1) << pfn_shift)
            try:
                smm = section_mem_map(nr) if nr < nr_sections else 0
            except VmcoreError:
                smm = 0
            # SECTION_MARKED_PRESENT | SECTION_HAS_MEM_MAP; the encoded mem_map
            # (mem_map - section_start_pfn * SIZE(page)) is page aligned, so the
            # flag bits (at most 6 of them, kernel-dependent) are below bit 12.
            if smm & 3 == 3:
                yield pfn, stop, (smm & ~0xFFF) & 0xFFFFFFFFFFFFFFFF
            pfn = stop


def _read(tables: PageTables, va: int, n: int) -> bytes:
    """``n`` bytes of the struct page array at ``va``; unmapped parts read as zeros
    (a zeroed struct page matches no rule: that page is kept)."""
    try:
        return tables.read(va, n)
    except VmcoreError:
        pass
    out = bytearray(n)
    pos = 0
    while pos < n:
        try:
            _pa, left = tables.translate(va + pos)
            k = min(left, n - pos)
            out[pos:pos + k] = tables.read(va + pos, k)
        except VmcoreError:
            k = min(n - pos, 4096 - ((va + pos) & 0xFFF))
        pos += k
    return bytes(out)


def read_columns(tables: PageTables, mem_map: int, pfn: int, stop: int, size: int,
                 offsets: Sequence[int]) -> dict[int, bytes]:
    """The bytes at ``offsets`` of the struct pages of ``[pfn, stop)``, one column each."""
    parts: dict[int, list[bytes]] = {o: [] for o in offsets}
    for first in range(pfn, stop, _PIECE_PAGES):
        count = min(_PIECE_PAGES, stop - first)
        buf = _read(tables, mem_map + first * size, count * size)
        for o, part in parts.items():
            part.append(buf[o::size])
    return {o: b"".join(part) for o, part in parts.items()}
