"""Which machine frames of a Xen dump to leave out: Xen's free frames and other
domains' frames, decided from Xen's frame table with VMCOREINFO_XEN alone (no xen-syms).

VMCOREINFO_XEN (xen/common/kexec.c ``crash_save_vmcoreinfo``, x86's
``arch_crash_save_vmcoreinfo``) gives ``SYMBOL(frame_table)`` (a variable holding the
frame table's address), ``SYMBOL(max_page)``, ``SIZE(page_info)``,
``OFFSET(page_info.count_info)``, ``OFFSET(page_info._domain)``,
``OFFSET(domain.domain_id)``, ``SYMBOL(domain_list)``, ``OFFSET(domain.next_in_list)``
and ``SYMBOL(pgd_l4)`` (Xen's page tables, through which the frame table is read).

The rules (makedumpfile's ``exclude_xen4_user_domain``, with the count_info bits of
the dumped release, :func:`pykexec.layouts.xen.pgc_layout`), frame by frame:

* Xen heap frames (PGC_xen_heap) are kept;
* free, offlined and broken frames are left out (dump level bit 16, free pages);
* frames not allocated to a domain (Xen's image, boot allocations, the frame table,
  Xen's page tables) are kept;
* a domain's frames are kept when it has no owner, or its owner is dom0, Xen's
  pseudo-domains (dom_xen, dom_io) or a domain asked for (``keep_domains``); other
  domains' frames are left out (dump level bit 8: a guest's memory is user data to
  the host).  The owner is ``_domain``, the pdx of its ``struct domain``
  (``pdx_to_virt``: ``DIRECTMAP_VIRT_START + (pdx << 12)``), whose ``domain_id``
  is read there.

Where we cannot judge, the frame is kept: page_info not readable, owner not readable,
frames at or above ``max_page``.  The frame table is indexed by pdx, which is the
pfn unless Xen compresses pdx (machines with large holes in their memory map); that
is checked on the direct map (which is pdx-indexed too) before filtering.
"""

from __future__ import annotations

import struct

from pykexec.layouts.xen import (
    DIRECTMAP_VIRT_START,
    DOMID_IO,
    DOMID_XEN,
    PGC_ALLOCATED,
    PGC_STATE_FREE,
    PGC_STATE_OFFLINED,
    PGC_XEN_HEAP,
    pgc_layout,
)
from pykexec.layouts.x86_paging import PAGE_SHIFT
from pykexec.vmcore.errors import VmcoreError
from pykexec.vmcore.pfn_runs import mask_runs, merge

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from pykexec.layouts.xen import PgcState
    from pykexec.vmcore.dump_memory import DumpMemory
    from pykexec.vmcore.xen import XenMemory

NEEDED = ("SYMBOL(frame_table)", "SYMBOL(max_page)", "SIZE(page_info)", "OFFSET(page_info.count_info)",
          "OFFSET(page_info._domain)", "OFFSET(domain.domain_id)", "SYMBOL(pgd_l4)")
#: Page infos read at once (2 MiB of a 32-byte page_info).
CHUNK = 1 << 16
#: More domains than Xen allows (DOMID_FIRST_RESERVED): a corrupt list.
MAX_DOMAINS = 0x7FF0
_KEEP, _FREE, _OWNER = 0, 1, 2
_U16 = struct.Struct("<H")


class XenExclusion:
    """Frames to leave out (merged pfn ranges), pages per kind (``free``, ``guest``),
    pages left out per domain id, the domains found in ``domain_list``, and a note
    ("" or why frames are kept that the level asked to leave out)."""

    __slots__ = ("ranges", "counts", "by_domain", "domains", "note")

    def __init__(self, note: str = "") -> None:
        self.ranges: list[tuple[int, int]] = []
        self.counts = {"free": 0, "guest": 0}
        self.by_domain: dict[int, int] = {}
        self.domains: list[int] = []
        self.note = note


def _decisions(pgc: PgcState, drop_free: bool) -> tuple[bytes, bytes]:
    """Tables turning count_info's top byte into a decision byte per frame.

    The flags tested are all in the top byte: allocated, xen heap, broken and, of the
    2-bit state, its upper bit -- set exactly for offlined (2) and free (3), the
    states left out (4.4-4.16 keep the state's lower bit in the byte below).
    """
    def decision(top: int) -> int:
        word = top << 56
        if word & PGC_XEN_HEAP:
            return _KEEP
        if word & pgc.broken or (word >> pgc.state_shift & 3) in (PGC_STATE_FREE, PGC_STATE_OFFLINED):
            return _FREE if drop_free else _KEEP
        return _OWNER if word & PGC_ALLOCATED else _KEEP

    return bytes(decision(b) for b in range(256)), bytes(1 if c == _FREE else 0 for c in range(256))


def _domain_ids(mem: XenMemory, head_va: int, next_off: int, id_off: int) -> list[int]:
    """Domain ids along ``domain_list`` (stops where it cannot read)."""
    ids: list[int] = []
    va = head_va
    try:
        while va and len(ids) < MAX_DOMAINS:
            ids.append(int(_U16.unpack(mem.read(va + id_off, 2))[0]))
            va = mem.u64(va + next_off)
    except VmcoreError:
        pass
    return ids


def xen_excluded_pages(core: DumpMemory, ram: Sequence[tuple[int, int]], *, drop_free: bool, drop_guests: bool,
                       keep_domains: Iterable[int] = ()) -> XenExclusion:
    """The frames of a Xen dump to leave out (see the module's rules).  Never raises for
    what the dump lacks: the frames are kept and ``note`` says why.  Raises
    :class:`VmcoreError` for a ``keep_domains`` id that is not a domain of the dump."""
    from pykexec.vmcore.xen import XenCrashFacts, XenMemory

    facts = XenCrashFacts(core.notes)
    info = facts.vmcoreinfo
    kept = "Xen's free frames and other domains' frames kept"
    if info is None:
        return XenExclusion(f"no VMCOREINFO_XEN: {kept}")
    missing = next((k for k in NEEDED if k not in info), None)
    if missing:
        return XenExclusion(f"VMCOREINFO_XEN has no {missing}: {kept}")
    major, _, minor = (facts.version or "0.0").partition(".")
    pgc = pgc_layout(int(major), int(minor))
    if pgc is None:
        return XenExclusion(f"Xen {facts.version}'s page_info flags are not known: {kept}")
    try:
        size, count_off = info.size("page_info"), info.offset("page_info.count_info")
        owner_off, id_off = info.offset("page_info._domain"), info.offset("domain.domain_id")
    except VmcoreError as err:   # not a number
        return XenExclusion(f"VMCOREINFO_XEN: {err}: {kept}")
    if not 16 <= size <= 256 or count_off % 8 or owner_off % 4 or size % 8 \
            or count_off + 8 > size or owner_off + 4 > size:
        return XenExclusion(f"VMCOREINFO_XEN's page_info layout is implausible (size {size}): {kept}")
    try:
        mem = XenMemory(core, facts)
        table = mem.u64(info.symbol("frame_table"))
        max_page = mem.u64(info.symbol("max_page"))
        domains = (_domain_ids(mem, mem.u64(info.symbol("domain_list")), info.offset("domain.next_in_list"), id_off)
                   if info.has_symbol("domain_list") and "OFFSET(domain.next_in_list)" in info else [])
    except VmcoreError as err:
        return XenExclusion(f"{err}: {kept}")
    keep = {0, DOMID_XEN, DOMID_IO, *keep_domains}
    absent = sorted(d for d in set(keep_domains) if d not in domains)
    if absent:
        raise VmcoreError(f"{core.path}: no domain {absent[0]} in this Xen dump (its domains: "
                          f"{', '.join(map(str, sorted(domains))) or 'none found'})")
    ram = [(s, min(e, max_page)) for s, e in ram if s < max_page]
    if not ram:
        return XenExclusion(f"max_page {max_page:#x} is below every frame of the dump: {kept}")
    last = ram[-1][1] - 1
    try:
        direct = mem.translate(DIRECTMAP_VIRT_START + (last << PAGE_SHIFT))[0]
    except VmcoreError:
        direct = -1
    if direct != last << PAGE_SHIFT:
        return XenExclusion(f"Xen's direct map is not 1:1 at frame {last:#x} (pdx compression?): {kept}")

    out = XenExclusion()
    out.domains = domains
    decide, is_free = _decisions(pgc, drop_free)
    owner_ids: dict[int, int | None] = {}
    free_runs: list[tuple[int, int]] = []
    guest_runs: list[tuple[int, int]] = []
    for start, end in ram:
        for a in range(start, end, CHUNK):
            n = min(CHUNK, end - a)
            for base, data in _page_infos(mem, table + a * size, size, n):
                b = a + base
                codes = data[count_off + 7::size].translate(decide)
                mask_runs(codes.translate(is_free), b, free_runs)
                if drop_guests:
                    _owners(codes, memoryview(data).cast("I")[owner_off // 4::size // 4], b, owner_ids, mem,
                            id_off, keep, guest_runs, out.by_domain)
    out.counts["free"] = sum(e - s for s, e in free_runs)
    out.counts["guest"] = sum(e - s for s, e in guest_runs)
    out.ranges = merge(free_runs + guest_runs)
    return out


def _page_infos(mem: XenMemory, va: int, size: int, n: int) -> list[tuple[int, bytes]]:
    """(index of the first, bytes) of ``n`` page_infos from ``va``; parts Xen did not map
    (holes in the frame table) are left out, so their frames are kept."""
    try:
        return [(0, mem.read(va, n * size))]
    except VmcoreError:
        pass
    out: list[tuple[int, bytes]] = []
    step = max(1, 4096 // size)
    for i in range(0, n, step):
        m = min(step, n - i)
        try:
            out.append((i, mem.read(va + i * size, m * size)))
        except VmcoreError:
            continue
    return out


def _owners(codes: bytes, owners: memoryview, base: int, ids: dict[int, int | None], mem: XenMemory, id_off: int,
            keep: set[int], runs: list[tuple[int, int]], by_domain: dict[int, int]) -> None:
    """Frames allocated to a domain: those of domains not kept, as runs from ``base``."""
    drop = bytearray(len(codes))
    i = codes.find(_OWNER)
    while i >= 0:
        pdx = owners[i]
        if pdx:
            domid = ids.get(pdx, -1)
            if domid == -1:
                try:
                    got = mem.read(DIRECTMAP_VIRT_START + (pdx << PAGE_SHIFT) + id_off, 2)
                    domid = ids[pdx] = int(_U16.unpack(got)[0])
                except VmcoreError:
                    domid = ids[pdx] = None
            if domid is not None and domid not in keep:
                drop[i] = 1
                by_domain[domid] = by_domain.get(domid, 0) + 1
        i = codes.find(_OWNER, i + 1)
    mask_runs(drop, base, runs)


def dom0_excluded_frames(core: DumpMemory, dump_level: int) -> tuple[list[tuple[int, int]], dict[str, int], str]:
    """The machine frames of dom0's memory that ``dump_level`` leaves out, decided as for
    a Linux dump (:func:`pykexec.vmcore.filtering.excluded_pages`) from dom0's struct
    pages, read through dom0's own page tables; dom0's pseudo-physical frames are mapped
    to machine frames through its p2m (FOREIGN entries, other domains' frames, are not
    dom0's and never judged).  Returns (merged machine-frame runs, pages per kind, note);
    never raises: what cannot be judged is kept and the note says why."""
    from pykexec.vmcore.filtering import excluded_pages
    from pykexec.vmcore.xen import Dom0Memory

    try:
        dom0 = Dom0Memory(core)
        info = dom0.require_vmcoreinfo()
        ram = dom0.p2m.runs()
        # Dom0's walker reads machine memory (PV page tables hold MFNs): it is what the
        # struct-page scan needs of PageTables (read, translate).
        ex = excluded_pages(info, dom0.walker, ram, 1 << PAGE_SHIFT, dump_level)  # type: ignore[arg-type]
        runs = dom0.p2m.machine_runs(ex.ranges)
    except VmcoreError as err:
        return [], {}, f"dom0's pages kept whole: {err}"
    return runs, ex.counts, ex.note and f"dom0: {ex.note}"


__all__ = ["XenExclusion", "dom0_excluded_frames", "xen_excluded_pages"]
