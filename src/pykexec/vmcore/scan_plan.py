"""What the dump-level scan looks for in the struct pages (:class:`ScanPlan`), decided
once from VMCOREINFO and the dump level: which fields and flag bits of ``struct page``
each rule reads, which rules the kernel lets us run at all, and, for those it does
not, the one-line note saying which pages are kept and why.
"""

from __future__ import annotations

from pykexec.layouts.kdump import DL_EXCLUDE_CACHE, DL_EXCLUDE_CACHE_PRI, DL_EXCLUDE_FREE, DL_EXCLUDE_USER_DATA
from pykexec.vmcore.page_rules import decision
from pykexec.vmcore.sparsemem import LAYOUT_KEYS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pykexec.vmcore.vmcoreinfo import VmcoreInfo


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


def asked_kinds(level: int) -> list[str]:
    """The kinds ``level`` asks for, as notes name them."""
    return [kind for bit, kind in ((DL_EXCLUDE_FREE, "free"), (DL_EXCLUDE_CACHE | DL_EXCLUDE_CACHE_PRI, "cache"),
                                   (DL_EXCLUDE_USER_DATA, "user")) if level & bit]


def kept_note(why: str, kinds: list[str]) -> str:
    """A note: ``why`` these kinds of pages are kept."""
    listed = " and ".join([", ".join(kinds[:-1]), kinds[-1]] if len(kinds) > 1 else kinds)
    return f"{why}: {listed} pages kept"


class ScanPlan:
    """What to look for, decided once from VMCOREINFO and the dump level.

    Field offsets are in bytes within ``struct page``; flag numbers are bit
    numbers in ``page.flags``; ``None`` means "not looked for".
    """

    __slots__ = ("scan", "notes", "kept_why", "size", "flags", "mapping", "mapcount", "private", "head",
                 "lru", "priv_bit", "swapcache", "swapbacked", "slab_bit", "hwpoison", "head_mask",
                 "buddy", "offline", "slab_type", "huge_type", "huge_next_bit", "huge_dtor", "order_next",
                 "free", "cache", "anon", "max_order", "decision", "columns", "refcount", "list", "percpu")

    def __init__(self, info: VmcoreInfo, level: int) -> None:
        def off(name: str) -> int | None:
            return info.offset(name) if f"OFFSET({name})" in info else None

        def num(name: str) -> int | None:
            return info.number(name) if info.has_number(name) else None

        asked = asked_kinds(level)
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

        missing = next((k for k in LAYOUT_KEYS if k not in info), None)
        why = f"VMCOREINFO has no {missing}" if missing else _implausible(info)
        if why:
            self._cannot(why, asked)
            self.scan = False
            self.free = self.cache = self.anon = self.percpu = False
            self.refcount = self.list = None
            self.buddy = self.huge_type = self.huge_next_bit = self.huge_dtor = self.order_next = None
            self.decision = b""
            self.columns: tuple[int, ...] = ()
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
        # free on a per-CPU list (percpu_free.py): needs the reference count and the list links.
        self.refcount, self.list = off("page._refcount"), off("page.lru")
        self.percpu = (self.free and None not in (self.refcount, self.list, self.mapping, self.flags, self.head)
                       and self.size > 0)

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
        self.decision = decision(level)
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
        if self.percpu:
            field(self.refcount, 0xFFFFFFFF)
            field(self.list, (1 << 128) - 1)   # lru.next, lru.prev
            field(self.mapping, (1 << 64) - 1)
            field(self.mapcount, 0xFFFFFFFF)
            for bit in (self.lru, self.slab_bit, self.priv_bit, self.swapcache, self.swapbacked):
                flag(bit)
            if self.head_mask is not None:
                field(self.flags, self.head_mask)
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
        return "; ".join([*self.notes, *(kept_note(why, kinds) for why, kinds in self.kept_why.items())])

