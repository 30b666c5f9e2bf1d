"""Free pages waiting on the per-CPU free lists (kind ``free_percpu``, with dump level
bit 16): pages the buddy allocator handed to a CPU's ``per_cpu_pages`` lists, or that a
freeing task put there, and that nothing uses.  They are not buddy pages (no
``PAGE_BUDDY_MAPCOUNT_VALUE``), so makedumpfile keeps them; on the test bed's 1 GiB
guests they were 3,400 to 11,600 pages of a dump (13 to 45 MiB), a number that moves
with whatever ran last, which made dumps and their predictions vary.

A page is taken for one only when everything says so, read from its struct page:
reference count 0, no ``mapping``, no page type (``_mapcount`` -1), no LRU, slab,
private, swap-cache, swap-backed or compound-head flag, not a compound tail; and it is
linked both ways on a list through ``page.lru`` (``pcp_list`` shares it): the next
entry's ``prev`` and the previous entry's ``next`` point back at it.  A page frozen for
migration keeps its mapping; one merely freed and on no list fails the links; a list
head in the per-CPU area is read through the page tables.  Anything unreadable keeps the
page.
"""

from __future__ import annotations

from pykexec.vmcore.errors import VmcoreError
from pykexec.vmcore.page_rules import FREE_PERCPU, Segment

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from pykexec.vmcore.scan_plan import ScanPlan

_U64 = (1 << 64) - 1


def mark_percpu_free(plan: ScanPlan, cols: dict[int, bytes], n: int, base: int, kinds: bytearray,
                     mem_map: int, read: Callable[[int, int], bytes]) -> None:
    """Set ``kinds[i]`` to :data:`FREE_PERCPU` for each kept page ``base + i`` of the run
    (struct page of pfn ``p`` at ``mem_map + p * plan.size``) that is free on a per-CPU list.
    ``read(vaddr, size)`` reads the crashed kernel's virtual memory (the list heads)."""
    assert plan.refcount is not None and plan.list is not None and plan.flags is not None
    seg = Segment(cols, n)
    cand = (seg.equals(plan.refcount, 0xFFFFFFFF, 0) & seg.equals(plan.mapping, _U64, 0)
            & seg.equals(plan.mapcount, 0xFFFFFFFF, 0xFFFFFFFF))
    used = seg.any_bits(plan.head, 1)   # a compound tail (or a list pointer with bit 0: none is)
    for bit in (plan.lru, plan.slab_bit, plan.priv_bit, plan.swapcache, plan.swapbacked):
        used |= seg.flag(plan.flags, bit)
    if plan.head_mask is not None:
        used |= seg.any_bits(plan.flags, plan.head_mask)
    cand &= seg.ones ^ used
    if not cand:
        return
    size, link = plan.size, plan.list
    lo = mem_map + base * size + link   # address of the first page's lru
    # Every page's lru.next and lru.prev as 64-bit words: words[2 * i], words[2 * i + 1].
    rows = bytearray(16 * n)
    for k in range(16):
        rows[k::16] = cols[link + k]
    words = memoryview(rows).cast("Q")

    def points_back(entry: int, field: int, me: int) -> bool:
        """The ``next`` (``field`` 0) or ``prev`` (1) word of list entry ``entry`` is ``me``."""
        j, rest = divmod(entry - lo, size)
        if rest == 0 and 0 <= j < n:
            return bool(words[2 * j + field] == me)
        try:
            return int.from_bytes(read(entry + 8 * field, 8), "little") == me
        except VmcoreError:
            return False

    for i in seg.positions(cand):
        if kinds[i]:
            continue
        me = lo + i * size
        nxt, prev = words[2 * i], words[2 * i + 1]
        if me in (nxt, prev):
            continue   # an empty (self-linked) list_head: on no list
        if points_back(nxt, 1, me) and points_back(prev, 0, me):
            kinds[i] = FREE_PERCPU
