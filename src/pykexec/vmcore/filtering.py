"""Which pages of a dump to leave out: makedumpfile's dump levels (``-d``).

Pages are counted by pfn; every function here takes and returns sorted,
merged half-open pfn ranges.  Zero pages (bit 1) are found while copying,
by the writer; everything else is decided here from the crashed kernel's
``struct page`` array, reached through SPARSEMEM ``mem_section`` and the
kernel's page tables, with VMCOREINFO only (no debug symbols).

The per-page rules are makedumpfile's (``__exclude_unnecessary_pages``),
tried in this order on each page that is not a compound tail:

* **free** (bit 16): a buddy block head, ``_mapcount`` (``page_type``) equal
  to ``NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)`` and not a slab page; the block is
  ``1 << page.private`` pages (the low byte of ``private``; an order above
  ``LENGTH(zone.free_area) - 1`` is not believed: that page is kept, as later
  makedumpfile releases do).
* **cache** (bit 2): a cache page (``PG_lru``, or ``PG_swapcache`` together
  with ``PG_swapbacked`` where that flag exists) that is not anonymous and
  has no ``PG_private``.
* **cache_private** (bit 4): a cache page that is not anonymous, private or
  not (those without ``PG_private`` count as "cache").
* **user** (bit 8): an anonymous page (bit 0 of ``page.mapping``) that is
  not a slab page, or the head of a hugetlbfs folio.
* **hwpoison** (``PG_hwpoison``) and **offline** (``_mapcount`` equal to
  ``NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)``, not slab): left out at any dump
  level whenever the struct pages are scanned, which is when bit 2, 4 or 8
  is asked for, the kernel exports ``PG_hwpoison``, or bit 16 is asked for
  and buddy pages can be recognised -- makedumpfile's condition.

A compound head (``NUMBER(PG_head_mask)``) decides for its whole compound
page: its order is the byte at ``OFFSET(page.compound_order)`` of the next
struct page (kernels that export it, 6.1 does; ``compound_dtor`` there equal
to ``NUMBER(HUGETLB_PAGE_DTOR)`` marks hugetlbfs), or, for kernels that export
``NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE)`` (6.9+; the head's page type marks
hugetlbfs) or ``NUMBER(PG_hugetlb)`` (6.6-6.8; a flag of the next page),
the low byte of the next page's flags (``folio._flags_1``).  An order that
does not fit the head's pfn alignment counts as 0.  Tails (bit 0 of
``page.compound_head``) are never judged on their own.  Slab pages are
``PG_slab`` up to 6.9 and a page type (``PAGE_SLAB_MAPCOUNT_VALUE``) since.
Page-type values come in two encodings: one cleared bit in ``0xffffffff``
(up to 6.11) or ``PGTY_x << 24`` (6.12+); both are handled.

Deliberate differences from makedumpfile 1.7.2 (Debian 12's), both only on
kernels newer than it knows (measured on the 6.12 test dump; on 6.1 the
choice of pages is identical at every level):

* 1.7.2 calls any page with bit 0 of the ``mapping`` word set anonymous.
  Since 6.2 that word of a slab page is ``slab->slabs`` (a count), so 1.7.2
  drops every slab page with an odd count as "user data" (bit 8: 124 pages
  of the 6.12 test dump); those are kernel data and are kept here, as later
  makedumpfile releases do (their ``isAnon()`` excludes slab pages).
* 1.7.2 cannot find the order of a 6.6+ folio (no ``OFFSET(page.compound_order)``)
  and so leaves out only the head of an excluded large folio, keeping its
  tails; here the whole folio goes, as in later makedumpfile releases (none
  in the test dumps).

Entry point: :func:`excluded_pages` (every kind, one scan of the struct pages).

Speed: the struct pages are read in 2048-page pieces, and only the bytes the
rules look at are kept, as one-byte-per-page columns (``bytes[off::size]``).
The rules then run on whole sections at once: each test is a
``bytes.translate`` into 0/1 bytes, tests are combined as Python ints (one
byte per page), and one last ``translate`` maps each page's feature byte to
its kind.  Only compound heads and buddy heads are visited one by one.
"""

from __future__ import annotations

import struct

from pykexec.layouts.kdump import DL_EXCLUDE_CACHE, DL_EXCLUDE_CACHE_PRI, DL_EXCLUDE_FREE, DL_EXCLUDE_USER_DATA
from pykexec.vmcore import VmcoreError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from pykexec.vmcore.kdump import PageTables
    from pykexec.vmcore.vmcoreinfo import VmcoreInfo

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


# -- the result ----------------------------------------------------------------------------

#: The kinds of excluded pages, in makedumpfile's order; ``Exclusion.counts`` has each key.
KINDS = ("free", "cache", "cache_private", "user", "hwpoison", "offline")
# A page's kind while classifying (one byte per page): 0 = kept, else 1 + index in KINDS.
_FREE, _CACHE, _CACHE_PRIVATE, _USER, _HWPOISON, _OFFLINE = range(1, 7)


class Exclusion:
    """The pages to leave out of a dump, and why.

    ``ranges``: merged, sorted half-open pfn ranges (within the RAM asked
    about); ``counts``: pages per kind (every key of :data:`KINDS`);
    ``note``: "" or one line saying which requested kinds could not be
    looked for, and why (those pages are kept).
    """

    __slots__ = ("ranges", "counts", "note")

    def __init__(self, ranges: list[tuple[int, int]], counts: dict[str, int], note: str = "") -> None:
        self.ranges = ranges
        self.counts = counts
        self.note = note

    @property
    def pages(self) -> int:
        """Pages left out, all kinds together."""
        return sum(self.counts.values())

    def __repr__(self) -> str:
        return f"Exclusion({len(self.ranges)} ranges, {self.counts}, note={self.note!r})"


class _UnknownLayout(Exception):
    """VMCOREINFO describes a memory layout the walk does not know; the message says which."""


# -- what to look for ----------------------------------------------------------------------

# One bit per test in a page's feature byte.
_F_TAIL, _F_BUDDY, _F_CACHE, _F_PRIVATE, _F_ANON, _F_HUGETLB, _F_HWPOISON, _F_OFFLINE = (1 << i for i in range(8))

_LAYOUT_KEYS = ("SYMBOL(mem_section)", "LENGTH(mem_section)", "SIZE(mem_section)",
                "OFFSET(mem_section.section_mem_map)", "NUMBER(SECTION_SIZE_BITS)",
                "NUMBER(MAX_PHYSMEM_BITS)", "SIZE(page)")


def _page_type(value: int) -> tuple[int, int]:
    """(mask, want) on the 32-bit ``page_type`` for a ``NUMBER(PAGE_*_MAPCOUNT_VALUE)`` type.

    6.12+ stores ``PGTY_x << 24`` (the low 24 bits are the type's own);
    earlier kernels clear one bit of ``0xffffffff`` (kernel ``PageType()``:
    the top bit set and that bit clear).
    """
    value &= 0xFFFFFFFF
    if value & 0xFFFFFF == 0:
        return 0xFF000000, value
    return 0x80000000 | (~value & 0x7FFFFFFF), 0x80000000


def _implausible(info: VmcoreInfo) -> str:
    """"" or which VMCOREINFO value no kernel has (a damaged or hostile dump): the
    scan reads fields, bits and sections where these say, so they must make sense."""
    size = info.size("page")
    checks: list[tuple[str, int, int, int]] = [("SIZE(page)", size, 32, 512)]
    for key in info.entries:
        if key.startswith("OFFSET(page."):
            checks.append((key, info.offset(key[7:-1]), 0, size - 4))
        elif key.startswith("NUMBER(PG_") and key != "NUMBER(PG_head_mask)":
            checks.append((key, info.number(key[7:-1]), 0, 63))
    if info.has_number("PG_head_mask"):
        checks.append(("NUMBER(PG_head_mask)", info.number("PG_head_mask"), 1, (1 << 64) - 1))
    if "LENGTH(zone.free_area)" in info:
        checks.append(("LENGTH(zone.free_area)", info.length("zone.free_area"), 1, 64))
    section_bits = info.number("SECTION_SIZE_BITS")
    checks += [("NUMBER(SECTION_SIZE_BITS)", section_bits, 13, 40),
               ("NUMBER(MAX_PHYSMEM_BITS)", info.number("MAX_PHYSMEM_BITS"), section_bits, 64),
               ("SIZE(mem_section)", info.size("mem_section"), 8, 4096),
               ("OFFSET(mem_section.section_mem_map)", info.offset("mem_section.section_mem_map"), 0,
                info.size("mem_section") - 8),
               ("LENGTH(mem_section)", info.length("mem_section"), 1, 1 << 40)]
    for key, value, lo, hi in checks:
        if not lo <= value <= hi:
            return f"VMCOREINFO has an implausible {key}={value}"
    return ""


def _asked(level: int) -> list[str]:
    """The kinds ``level`` asks for, as notes name them."""
    return [kind for bit, kind in ((DL_EXCLUDE_FREE, "free"), (DL_EXCLUDE_CACHE | DL_EXCLUDE_CACHE_PRI, "cache"),
                                   (DL_EXCLUDE_USER_DATA, "user")) if level & bit]


def _kept(why: str, kinds: list[str]) -> str:
    """A note: ``why`` these kinds of pages are kept."""
    listed = " and ".join([", ".join(kinds[:-1]), kinds[-1]] if len(kinds) > 1 else kinds)
    return f"{why}: {listed} pages kept"


def _decision(level: int) -> bytes:
    """Feature byte -> kind code, makedumpfile's chain of tests for ``level``."""
    table = bytearray(256)
    for f in range(256):
        if f & _F_TAIL:
            kind = 0   # judged with its head
        elif f & _F_BUDDY:
            kind = _FREE
        elif level & DL_EXCLUDE_CACHE and f & _F_CACHE and not f & _F_PRIVATE:
            kind = _CACHE
        elif level & DL_EXCLUDE_CACHE_PRI and f & _F_CACHE:
            kind = _CACHE_PRIVATE if f & _F_PRIVATE else _CACHE
        elif level & DL_EXCLUDE_USER_DATA and f & (_F_ANON | _F_HUGETLB):
            kind = _USER
        elif f & _F_HWPOISON:
            kind = _HWPOISON
        elif f & _F_OFFLINE:
            kind = _OFFLINE
        else:
            kind = 0
        table[f] = kind
    return bytes(table)


class _Plan:
    """What to look for, decided once from VMCOREINFO and the dump level.

    Field offsets are in bytes within ``struct page``; flag numbers are bit
    numbers in ``page.flags``; ``None`` means "not looked for".
    """

    __slots__ = ("scan", "notes", "kept_why", "size", "flags", "mapping", "mapcount", "private", "head",
                 "lru", "priv_bit", "swapcache", "swapbacked", "slab_bit", "hwpoison", "head_mask",
                 "buddy", "offline", "slab_type", "huge_type", "huge_next_bit", "huge_dtor", "order_next",
                 "free", "cache", "anon", "max_order", "decision", "columns")

    def __init__(self, info: VmcoreInfo, level: int) -> None:
        def off(name: str) -> int | None:
            return info.offset(name) if f"OFFSET({name})" in info else None

        def num(name: str) -> int | None:
            return info.number(name) if info.has_number(name) else None

        asked = _asked(level)
        self.notes: list[str] = []
        self.kept_why: dict[str, list[str]] = {}
        self.size = info.size("page") if "SIZE(page)" in info else 0
        self.flags, self.mapping = off("page.flags"), off("page.mapping")
        self.mapcount, self.private, self.head = off("page._mapcount"), off("page.private"), off("page.compound_head")
        self.lru, self.priv_bit = num("PG_lru"), num("PG_private")
        self.swapcache, self.swapbacked = num("PG_swapcache"), num("PG_swapbacked")
        self.slab_bit = num("PG_slab") if self.flags is not None else None
        self.hwpoison = num("PG_hwpoison") if self.flags is not None else None
        self.head_mask = num("PG_head_mask") if self.flags is not None else None
        self.max_order = info.length("zone.free_area") - 1 if "LENGTH(zone.free_area)" in info else 10

        mc = self.mapcount
        value = num("PAGE_SLAB_MAPCOUNT_VALUE")
        self.slab_type = _page_type(value) if value is not None and mc is not None else None
        value = num("PAGE_OFFLINE_MAPCOUNT_VALUE")
        self.offline = value & 0xFFFFFFFF if value is not None and mc is not None else None

        missing = next((k for k in _LAYOUT_KEYS if k not in info), None)
        why = f"VMCOREINFO has no {missing}" if missing else _implausible(info)
        if why:
            self._cannot(why, asked)
            self.scan = False
            self.free = self.cache = self.anon = False
            self.buddy = self.huge_type = self.huge_next_bit = self.huge_dtor = self.order_next = None
            self.decision, self.columns = b"", ()
            return

        # free: buddy heads (page_is_buddy_v3; the PG_buddy flag of 2.6.37 and older is not handled).
        self.buddy = None
        self.free = False
        if level & DL_EXCLUDE_FREE:
            need = [k for k in ("NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)", "OFFSET(page._mapcount)",
                                "OFFSET(page.private)") if k not in info]
            if need:
                self._cannot(f"VMCOREINFO has no {need[0]}", ["free"])
            else:
                self.buddy = info.number("PAGE_BUDDY_MAPCOUNT_VALUE") & 0xFFFFFFFF
                self.free = True

        # cache: the anonymous test needs page.mapping (anonymous pages are on the LRU too).
        self.cache = False
        if level & (DL_EXCLUDE_CACHE | DL_EXCLUDE_CACHE_PRI):
            need = [k for k in ("OFFSET(page.flags)", "NUMBER(PG_lru)", "OFFSET(page.mapping)") if k not in info]
            if need:
                self._cannot(f"VMCOREINFO has no {need[0]}", ["cache"])
            elif self.priv_bit is None and not level & DL_EXCLUDE_CACHE_PRI:
                self._cannot("VMCOREINFO has no NUMBER(PG_private) (private cache pages cannot be told apart)",
                             ["cache"])
            else:
                self.cache = True
                if self.swapcache is None:
                    self.notes.append("VMCOREINFO has no NUMBER(PG_swapcache): swap cache pages off the LRU kept")

        # user: anonymous pages, told from slab pages (whose mapping word is a count since 6.2).
        self.anon = False
        self.huge_type = self.huge_next_bit = self.huge_dtor = None
        if level & DL_EXCLUDE_USER_DATA:
            need = [k for k in ("OFFSET(page.flags)", "OFFSET(page.mapping)") if k not in info]
            if need:
                self._cannot(f"VMCOREINFO has no {need[0]}", ["user"])
            elif self.slab_bit is None and self.slab_type is None:
                self._cannot("VMCOREINFO has neither NUMBER(PG_slab) nor NUMBER(PAGE_SLAB_MAPCOUNT_VALUE) "
                             "(slab pages cannot be told apart)", ["anonymous user"])
            else:
                self.anon = True

        # Compound pages: where the order (and hugetlbfs) is.  Without PG_head_mask or a way
        # to the order, heads go alone and tails stay; without page.compound_head, tails are
        # not recognised and judged on their own (makedumpfile does both the same).
        self.order_next = None
        if self.head_mask is not None:
            huge_value, huge_flag = num("PAGE_HUGETLB_MAPCOUNT_VALUE"), num("PG_hugetlb")
            if huge_value is not None or huge_flag is not None:
                self.order_next = self.flags   # low byte of folio._flags_1
                if huge_value is not None and mc is not None:
                    self.huge_type = _page_type(huge_value)
                elif huge_flag is not None:
                    self.huge_next_bit = huge_flag
            elif "OFFSET(page.compound_order)" in info:
                self.order_next = info.offset("page.compound_order")
                dtor = off("page.compound_dtor")
                if dtor is not None and info.has_number("HUGETLB_PAGE_DTOR"):
                    self.huge_dtor = (dtor, info.number("HUGETLB_PAGE_DTOR"))
        if not level & DL_EXCLUDE_USER_DATA:
            self.huge_type = self.huge_next_bit = self.huge_dtor = None

        self.scan = bool(level & (DL_EXCLUDE_CACHE | DL_EXCLUDE_CACHE_PRI | DL_EXCLUDE_USER_DATA)
                         or self.hwpoison is not None or self.free)
        self.decision = _decision(level)
        self.columns = self._columns()

    def _cannot(self, why: str, kinds: list[str]) -> None:
        if kinds:  # one note per reason: "X: cache and user pages kept"
            self.kept_why.setdefault(why, []).extend(kinds)

    def _columns(self) -> tuple[int, ...]:
        """Byte offsets within struct page that the tests read."""
        cols: set[int] = set()

        def flag(bit: int | None) -> None:
            if bit is not None and self.flags is not None:
                cols.add(self.flags + bit // 8)

        def field(offset: int | None, mask: int) -> None:
            k = 0
            while offset is not None and mask >> (8 * k):
                if mask >> (8 * k) & 0xFF:
                    cols.add(offset + k)
                k += 1

        if self.head is not None:
            cols.add(self.head)
        slab = self.anon or self.free or self.offline is not None
        if slab:
            flag(self.slab_bit)
            if self.slab_type:
                field(self.mapcount, self.slab_type[0])
        if self.free:
            field(self.mapcount, 0xFFFFFFFF)
            assert self.private is not None
            cols.add(self.private)
        if self.offline is not None:
            field(self.mapcount, 0xFFFFFFFF)
        if self.cache:
            for bit in (self.lru, self.priv_bit, self.swapcache, self.swapbacked):
                flag(bit)
        if self.cache or self.anon:
            assert self.mapping is not None
            cols.add(self.mapping)
        flag(self.hwpoison)
        if self.head_mask is not None and self.order_next is not None:
            field(self.flags, self.head_mask)
            cols.add(self.order_next)
            if self.huge_type:
                field(self.mapcount, self.huge_type[0])
            flag(self.huge_next_bit)
            if self.huge_dtor:
                cols.add(self.huge_dtor[0])
        return tuple(sorted(c for c in cols if 0 <= c < self.size))

    @property
    def note(self) -> str:
        return "; ".join([*self.notes, *(_kept(why, kinds) for why, kinds in self.kept_why.items())])


# -- classification of one run of struct pages ----------------------------------------------

_TABLES: dict[tuple[str, int, int], bytes] = {}


def _table(kind: str, mask: int, want: int = 0) -> bytes:
    """A translate table to 0/1: "any" (a bit of ``mask`` set) or "eq" (``b & mask == want``)."""
    key = (kind, mask, want)
    t = _TABLES.get(key)
    if t is None:
        if kind == "any":
            t = bytes(1 if b & mask else 0 for b in range(256))
        else:
            t = bytes(1 if b & mask == want else 0 for b in range(256))
        _TABLES[key] = t
    return t


_NONZERO = bytes([0] + [1] * 255)
_EXCLUDED_NOT_FREE = bytes(1 if 0 < k and k != _FREE else 0 for k in range(256))


class _Segment:
    """Tests over ``n`` consecutive struct pages, given their byte columns.

    Every test returns an int holding one byte per page (page ``i`` is
    byte ``i``, little-endian), 1 where the test holds, else 0.
    """

    __slots__ = ("cols", "n", "ones")

    def __init__(self, cols: dict[int, bytes], n: int) -> None:
        self.cols = cols
        self.n = n
        self.ones = int.from_bytes(b"\x01" * n, "little")

    def column(self, offset: int, table: bytes, nxt: bool = False) -> int:
        """The column at ``offset`` through ``table`` (of the next struct page if ``nxt``)."""
        col = self.cols.get(offset)
        if col is None:
            return 0   # a field VMCOREINFO places outside struct page: never matches
        if nxt:
            col = col[1:] + b"\0"   # the next struct page's byte; none after the last
        return int.from_bytes(col.translate(table), "little")

    def any_bits(self, offset: int | None, mask: int, nxt: bool = False) -> int:
        """Some bit of ``mask`` set in the little-endian field at ``offset``."""
        out = 0
        k = 0
        while offset is not None and mask >> (8 * k):
            m = mask >> (8 * k) & 0xFF
            if m:
                out |= self.column(offset + k, _table("any", m), nxt)
            k += 1
        return out

    def flag(self, flags: int | None, bit: int | None, nxt: bool = False) -> int:
        return 0 if bit is None or flags is None else self.any_bits(flags, 1 << bit, nxt)

    def equals(self, offset: int | None, mask: int, want: int) -> int:
        """``field & mask == want`` for the little-endian field at ``offset``."""
        if offset is None:
            return 0
        out = self.ones
        k = 0
        while mask >> (8 * k):
            m = mask >> (8 * k) & 0xFF
            if m:
                out &= self.column(offset + k, _table("eq", m, want >> (8 * k) & 0xFF))
            k += 1
        return out

    def positions(self, mask: int | bytes | bytearray, code: int = 1) -> list[int]:
        """Indexes whose byte is ``code`` (in an int from the tests, or in bytes)."""
        data = mask.to_bytes(self.n, "little") if isinstance(mask, int) else mask
        out = []
        i = data.find(code)
        while i >= 0:
            out.append(i)
            i = data.find(code, i + 1)
        return out


def _classify(plan: _Plan, cols: dict[int, bytes], n: int, base: int,
              carry: tuple[int, int]) -> tuple[bytearray, tuple[int, int]]:
    """Kind codes of pfns ``[base, base + n)`` and the exclusion still running past them.

    ``carry`` is (end pfn, kind) of a compound page or buddy block begun in
    an earlier run of pages (makedumpfile skips those pages).
    """
    seg = _Segment(cols, n)
    flags = plan.flags
    slab = seg.flag(flags, plan.slab_bit)
    if plan.slab_type:
        slab |= seg.equals(plan.mapcount, *plan.slab_type)
    not_slab = seg.ones ^ slab

    feat = seg.any_bits(plan.head, 1) * _F_TAIL
    if plan.free:
        feat |= (seg.equals(plan.mapcount, 0xFFFFFFFF, plan.buddy or 0) & not_slab) * _F_BUDDY
    anon = seg.any_bits(plan.mapping, 1) if plan.cache or plan.anon else 0
    if plan.cache:
        swap = seg.flag(flags, plan.swapcache)
        if plan.swapbacked is not None:
            swap &= seg.flag(flags, plan.swapbacked)
        cache = (seg.flag(flags, plan.lru) | swap) & (seg.ones ^ anon)
        feat |= cache * _F_CACHE | seg.flag(flags, plan.priv_bit) * _F_PRIVATE
    if plan.anon:
        feat |= (anon & not_slab) * _F_ANON
    head = 0
    if plan.head_mask is not None and plan.order_next is not None:
        head = seg.any_bits(flags, plan.head_mask)
        huge = 0
        if plan.huge_type:
            huge = seg.equals(plan.mapcount, *plan.huge_type)
        elif plan.huge_next_bit is not None:
            huge = seg.flag(flags, plan.huge_next_bit, nxt=True)
        elif plan.huge_dtor:
            dtor, value = plan.huge_dtor
            huge = seg.column(dtor, _table("eq", 0xFF, value), nxt=True) if 0 <= value < 256 else 0
        feat |= (head & huge) * _F_HUGETLB
    if plan.hwpoison is not None:
        feat |= seg.flag(flags, plan.hwpoison) * _F_HWPOISON
    if plan.offline is not None:
        feat |= (seg.equals(plan.mapcount, 0xFFFFFFFF, plan.offline) & not_slab) * _F_OFFLINE
    kinds = bytearray(feat.to_bytes(n, "little").translate(plan.decision))

    # Heads that exclude more than themselves, in pfn order, as makedumpfile meets them.
    starts = seg.positions(kinds, _FREE) if plan.free else []
    if head:
        starts += seg.positions(head & int.from_bytes(kinds.translate(_EXCLUDED_NOT_FREE), "little"))
        starts.sort()
    skip = 0
    end, kind = carry
    if end > base:
        skip = end - base
        kinds[0:min(n, skip)] = bytes([kind]) * min(n, skip)
    carry = carry if skip > n else (0, 0)
    private = cols.get(plan.private) if plan.private is not None else None
    order_next = cols.get(plan.order_next) if plan.order_next is not None else None
    for i in starts:
        if i < skip:
            continue   # inside a block or compound page already left out
        kind = kinds[i]
        if kind == _FREE:
            order = private[i] if private is not None else 0
            if order > plan.max_order:
                kinds[i] = 0   # not a believable buddy block: keep the page
                continue
        else:
            order = order_next[i + 1] if order_next is not None and i + 1 < n else 0
            if order >= 64 or (base + i) & ((1 << order) - 1):
                continue   # not a believable order: the head page goes alone
        skip = i + (1 << order)
        kinds[i:min(n, skip)] = bytes([kind]) * (min(n, skip) - i)
        if skip > n:
            carry = (base + skip, kind)
    return kinds, carry


# -- the walk over mem_section ---------------------------------------------------------------

#: Struct pages read at once: small enough that the allocator reuses the buffer
#: (a fresh multi-MiB buffer costs more in page faults than the copy).
_PIECE_PAGES = 2048


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


def _columns(tables: PageTables, mem_map: int, pfn: int, stop: int, size: int,
             offsets: Sequence[int]) -> dict[int, bytes]:
    """The bytes at ``offsets`` of the struct pages of ``[pfn, stop)``, one column each."""
    parts: dict[int, list[bytes]] = {o: [] for o in offsets}
    for first in range(pfn, stop, _PIECE_PAGES):
        count = min(_PIECE_PAGES, stop - first)
        buf = _read(tables, mem_map + first * size, count * size)
        for o, part in parts.items():
            part.append(buf[o::size])
    return {o: b"".join(part) for o, part in parts.items()}


def _walk(plan: _Plan, info: VmcoreInfo, tables: PageTables, ram: Sequence[tuple[int, int]],
          page: int) -> tuple[list[tuple[int, int]], list[int]]:
    """Excluded pfn ranges and pages per kind code, section by section."""
    page_shift = page.bit_length() - 1
    pfn_shift = info.number("SECTION_SIZE_BITS") - page_shift   # pfns per section = 1 << pfn_shift
    if pfn_shift <= 0:
        raise _UnknownLayout(f"NUMBER(SECTION_SIZE_BITS) is not above the page shift ({page_shift})")
    size_ms = info.size("mem_section")
    off_smm = info.offset("mem_section.section_mem_map")
    nr_sections = 1 << (info.number("MAX_PHYSMEM_BITS") - info.number("SECTION_SIZE_BITS"))
    per_root = page // size_ms
    roots = info.length("mem_section")
    extreme = roots * per_root == nr_sections   # else: a flat array of nr_sections structs
    if not extreme and roots != nr_sections:
        raise _UnknownLayout(f"LENGTH(mem_section)={roots} matches neither SPARSEMEM layout")
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

    ranges: list[tuple[int, int]] = []
    counts = [0] * (len(KINDS) + 1)
    carry = (0, 0)
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
                mem_map = (smm & ~0xFFF) & 0xFFFFFFFFFFFFFFFF
                cols = _columns(tables, mem_map, pfn, stop, plan.size, plan.columns)
                kinds, carry = _classify(plan, cols, stop - pfn, pfn, carry)
                for code in range(1, len(counts)):
                    counts[code] += kinds.count(code)
                _runs(kinds.translate(_NONZERO), pfn, ranges)
            pfn = stop
    return merge(ranges), counts


def _runs(mask: bytes, base: int, out: list[tuple[int, int]]) -> None:
    """Append the runs of 1 bytes in ``mask`` as pfn ranges from ``base``."""
    i = mask.find(1)
    while i >= 0:
        j = mask.find(0, i)
        if j < 0:
            j = len(mask)
        out.append((base + i, base + j))
        i = mask.find(1, j)


# -- entry points ----------------------------------------------------------------------------

def excluded_pages(info: VmcoreInfo, tables: PageTables, ram: Sequence[tuple[int, int]], page: int,
                   dump_level: int) -> Exclusion:
    """The RAM pages ``dump_level`` leaves out, as makedumpfile chooses them (see the
    module docstring for the rules and the documented differences).

    ``ram`` is the sorted, merged pfn ranges of RAM in the dump; ``page`` the
    page size.  Call it at every dump level: like makedumpfile, it also
    leaves out hwpoison and offline pages whenever it scans the struct pages
    at all.  Missing VMCOREINFO keys never raise: the pages they would
    decide are kept and ``note`` says so.  Unreadable parts of the struct
    page array keep their pages.
    """
    counts = dict.fromkeys(KINDS, 0)
    note = ""
    try:
        plan = _Plan(info, dump_level)
        note = plan.note
        if not plan.scan:
            return Exclusion([], counts, plan.note)
        ranges, by_code = _walk(plan, info, tables, ram, page)
    except (_UnknownLayout, VmcoreError) as err:   # a malformed value, a layout we do not know
        asked = _asked(dump_level)
        return Exclusion([], counts, "; ".join(n for n in (note, _kept(str(err), asked) if asked else "") if n))
    for code, kind in enumerate(KINDS, 1):
        counts[kind] = by_code[code]
    return Exclusion(ranges, counts, note)
