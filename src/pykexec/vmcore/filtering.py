"""Which pages of a dump to leave out: makedumpfile's dump levels (``-d``).

Pages are counted by pfn; every function here takes and returns sorted,
merged half-open pfn ranges.  Free pages (bit 16) are buddy-allocator blocks
found in the crashed kernel's ``struct page`` array (VMCOREINFO:
``SYMBOL(mem_section)``, ``SIZE(page)``, ``OFFSET(page._mapcount)``,
``OFFSET(page.private)``, ``NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)``, reached
through the kernel's page tables).  A block's head page has ``_mapcount``
(``page_type``) equal to that number (2.6.38+ encoding, including 6.12's
``PGTY_buddy << 24``) and ``1 << page.private`` pages.  Zero pages (bit 1)
are found while copying, by the writer.
"""

from __future__ import annotations

import struct

from pykexec.vmcore import VmcoreError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from pykexec.vmcore.kdump import PageTables
    from pykexec.vmcore.vmcoreinfo import VmcoreInfo

_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")


def subtract(runs: Sequence[tuple[int, int]], holes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted half-open ``runs`` minus sorted, merged ``holes``."""
    out: list[tuple[int, int]] = []
    i = 0
    for start, end in runs:
        while i < len(holes) and holes[i][1] <= start:
            i += 1
        j = i
        while start < end:
            if j >= len(holes) or holes[j][0] >= end:
                out.append((start, end))
                break
            hs, he = holes[j]
            if hs > start:
                out.append((start, hs))
            start = max(start, he)
            j += 1
    return out


def merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    ranges.sort()
    out: list[tuple[int, int]] = []
    for s, e in ranges:
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def set_bits(bitmap: bytearray, start: int, end: int) -> None:
    """Set bits ``[start, end)`` (bit ``pfn % 8`` of byte ``pfn // 8``)."""
    while start < end and start & 7:
        bitmap[start >> 3] |= 1 << (start & 7)
        start += 1
    full = (end - start) >> 3
    if full > 0:
        bitmap[start >> 3:(start >> 3) + full] = b"\xff" * full
        start += full << 3
    while start < end:
        bitmap[start >> 3] |= 1 << (start & 7)
        start += 1


# -- free pages ----------------------------------------------------------------------------

class FreePagesUnavailable(Exception):
    """VMCOREINFO or the dump lacks what the buddy walk needs; the message says what."""


def find_free_pages(info: VmcoreInfo, tables: PageTables,
                    ram: Sequence[tuple[int, int]], page: int) -> list[tuple[int, int]]:
    """Merged pfn ranges of free buddy blocks within ``ram``.

    Walks SPARSEMEM sections (``mem_section``, EXTREME or not): for each
    present section with a mem_map, reads the ``struct page`` array of the
    RAM pfns in it and looks for the buddy marker in ``_mapcount`` with
    ``bytes.find`` (only block heads carry it, so hits are few).  Parts of
    the array that are not mapped are skipped: those pages are kept.
    """
    need = ("SYMBOL(mem_section)", "SIZE(page)", "OFFSET(page._mapcount)", "OFFSET(page.private)",
            "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)", "NUMBER(SECTION_SIZE_BITS)", "SIZE(mem_section)",
            "OFFSET(mem_section.section_mem_map)", "LENGTH(mem_section)", "NUMBER(MAX_PHYSMEM_BITS)")
    missing = [k for k in need if k not in info]
    if missing:
        raise FreePagesUnavailable(f"VMCOREINFO has no {missing[0]}")
    size_page = info.size("page")
    off_mapcount = info.offset("page._mapcount")
    off_private = info.offset("page.private")
    marker = _I32.pack(info.number("PAGE_BUDDY_MAPCOUNT_VALUE") & 0xFFFFFFFF
                       if info.number("PAGE_BUDDY_MAPCOUNT_VALUE") >= 0
                       else info.number("PAGE_BUDDY_MAPCOUNT_VALUE"))
    max_order = info.length("zone.free_area") - 1 if "LENGTH(zone.free_area)" in info else 10
    page_shift = page.bit_length() - 1
    pfn_shift = info.number("SECTION_SIZE_BITS") - page_shift  # pfns per section = 1 << pfn_shift
    size_ms = info.size("mem_section")
    off_smm = info.offset("mem_section.section_mem_map")
    nr_sections = 1 << (info.number("MAX_PHYSMEM_BITS") - info.number("SECTION_SIZE_BITS"))
    per_root = page // size_ms
    roots = info.length("mem_section")
    extreme = roots * per_root == nr_sections  # else: a flat array of nr_sections structs
    if not extreme and roots != nr_sections:
        raise FreePagesUnavailable(f"LENGTH(mem_section)={roots} matches neither SPARSEMEM layout")
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

    free: list[tuple[int, int]] = []
    for start, end in ram:
        pfn = start
        while pfn < end:
            nr = pfn >> pfn_shift
            stop = min(end, (nr + 1) << pfn_shift)
            try:
                smm = section_mem_map(nr)
            except VmcoreError:
                smm = 0
            # SECTION_MARKED_PRESENT | SECTION_HAS_MEM_MAP; the encoded mem_map
            # (mem_map - section_start_pfn * SIZE(page)) is page aligned, so the
            # flag bits (at most 6 of them, kernel-dependent) are below bit 12.
            if smm & 3 == 3:
                _scan(tables, (smm & ~0xFFF) & 0xFFFFFFFFFFFFFFFF, pfn, stop, size_page,
                      off_mapcount, off_private, marker, max_order, free)
            pfn = stop
    return merge(free)


def _scan(tables: PageTables, mem_map: int, pfn: int, stop: int, size_page: int, off_mapcount: int,
          off_private: int, marker: bytes, max_order: int, free: list[tuple[int, int]]) -> None:
    """Find buddy heads among ``struct page`` of ``[pfn, stop)``, mapping by mapping."""
    va = mem_map + pfn * size_page
    end_va = mem_map + stop * size_page
    while va < end_va:
        try:
            _pa, left = tables.translate(va)
        except VmcoreError:
            va = (va | 0xFFF) + 1  # unmapped page of the array: keep those pages
            continue
        n = min(left, end_va - va)
        # Whole struct pages only: round the window to a struct boundary.
        first = va - (va - mem_map) % size_page
        if first < va:
            first += size_page
        last = va + n
        last -= (last - mem_map) % size_page
        if last > first:
            try:
                buf = tables.read(first, last - first)
            except VmcoreError:
                buf = b""
            base_pfn = (first - mem_map) // size_page
            pos = buf.find(marker, off_mapcount)
            while pos >= 0:
                rel = pos - off_mapcount
                if rel % size_page == 0:
                    order = _U64.unpack_from(buf, rel + off_private)[0]
                    if order <= max_order:
                        head = base_pfn + rel // size_page
                        free.append((head, head + (1 << order)))
                    pos = buf.find(marker, pos + 4)
                else:
                    pos = buf.find(marker, pos + 1)
        va += n
