"""Which kind each page is, from its struct page: makedumpfile's rules for its dump
levels, run over columns of struct pages.

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

Deliberate differences from makedumpfile 1.7.2 (Debian 12's): with bit 16, the free
pages waiting on the per-CPU lists are left out too (:mod:`pykexec.vmcore.percpu_free`;
kind ``free_percpu``: 73 pages of the 6.1 test dump, 11,091 of the 6.12 one), which no
makedumpfile release does; and two only on kernels newer than it knows (measured on the
6.12 test dump; on 6.1 the choice of pages is otherwise identical at every level):

* 1.7.2 calls any page with bit 0 of the ``mapping`` word set anonymous.
  Since 6.2 that word of a slab page is ``slab->slabs`` (a count), so 1.7.2
  drops every slab page with an odd count as "user data" (bit 8: 124 pages
  of the 6.12 test dump); those are kernel data and are kept here, as later
  makedumpfile releases do (their ``isAnon()`` excludes slab pages).
* 1.7.2 cannot find the order of a 6.6+ folio (no ``OFFSET(page.compound_order)``)
  and so leaves out only the head of an excluded large folio, keeping its
  tails; here the whole folio goes, as in later makedumpfile releases (none
  in the test dumps).


Speed: the rules run on whole sections at once, over the columns of struct page
bytes :func:`pykexec.vmcore.sparsemem.read_columns` reads: each test is a
``bytes.translate`` into 0/1 bytes, tests are combined as Python ints (one
byte per page), and one last ``translate`` maps each page's feature byte to
its kind.  Only compound heads and buddy heads are visited one by one.
"""

from __future__ import annotations

from pykexec.layouts.kdump import DL_EXCLUDE_CACHE, DL_EXCLUDE_CACHE_PRI, DL_EXCLUDE_USER_DATA

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pykexec.vmcore.scan_plan import ScanPlan

#: The kinds of excluded pages, in makedumpfile's order, then ours (free pages on the
#: per-CPU lists: :mod:`pykexec.vmcore.percpu_free`); ``filtering.Exclusion.counts`` has each key.
KINDS = ("free", "cache", "cache_private", "user", "hwpoison", "offline", "free_percpu")
# A page's kind while classifying (one byte per page): 0 = kept, else 1 + index in KINDS.
_FREE, _CACHE, _CACHE_PRIVATE, _USER, _HWPOISON, _OFFLINE, FREE_PERCPU = range(1, 8)
# One bit per test in a page's feature byte.
_F_TAIL, _F_BUDDY, _F_CACHE, _F_PRIVATE, _F_ANON, _F_HUGETLB, _F_HWPOISON, _F_OFFLINE = (1 << i for i in range(8))


def decision(level: int) -> bytes:
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


_EXCLUDED_NOT_FREE = bytes(1 if 0 < k and k != _FREE else 0 for k in range(256))


class Segment:
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


def classify(plan: ScanPlan, cols: dict[int, bytes], n: int, base: int,
              carry: tuple[int, int]) -> tuple[bytearray, tuple[int, int]]:
    """Kind codes of pfns ``[base, base + n)`` and the exclusion still running past them.

    ``carry`` is (end pfn, kind) of a compound page or buddy block begun in
    an earlier run of pages (makedumpfile skips those pages).
    """
    seg = Segment(cols, n)
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
