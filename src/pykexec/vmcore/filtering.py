"""Which pages of a dump to leave out: makedumpfile's dump levels (``-d``).

Pages are counted by pfn, in sorted, merged half-open pfn ranges
(:mod:`pykexec.vmcore.pfn_runs`).  Zero pages (bit 1) are found while
copying, by the writer; everything else is decided here from the crashed
kernel's ``struct page`` array, with VMCOREINFO only (no debug symbols):

* :mod:`pykexec.vmcore.scan_plan` -- what to look for, from VMCOREINFO and the level;
* :mod:`pykexec.vmcore.sparsemem` -- where the struct pages are, and their bytes;
* :mod:`pykexec.vmcore.page_rules` -- makedumpfile's per-page rules, the kinds of
  pages left out, and the documented differences from makedumpfile 1.7.2;
* :mod:`pykexec.vmcore.percpu_free` -- free pages on the per-CPU lists, which
  makedumpfile keeps and we leave out with the free pages (bit 16).

Entry point: :func:`excluded_pages` (every kind, one scan of the struct pages).
"""

from __future__ import annotations

from pykexec.vmcore.errors import VmcoreError
from pykexec.vmcore.page_rules import KINDS, classify
from pykexec.vmcore.percpu_free import mark_percpu_free
from pykexec.vmcore.pfn_runs import mask_runs, merge
from pykexec.vmcore.scan_plan import ScanPlan, asked_kinds, kept_note
from pykexec.vmcore.sparsemem import UnknownLayout, present_sections, read_columns

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from pykexec.vmcore.paging import PageTables
    from pykexec.vmcore.vmcoreinfo import VmcoreInfo

# Kind code -> 1 for every excluded kind (code 0 is "kept").
_NONZERO = bytes([0] + [1] * 255)


class Exclusion:
    """The pages to leave out of a dump, and why.

    ``ranges``: merged, sorted half-open pfn ranges (within the RAM asked
    about); ``counts``: pages per kind (every key of
    :data:`~pykexec.vmcore.page_rules.KINDS`); ``note``: "" or one line saying
    which requested kinds could not be looked for, and why (those pages are kept).
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


def _walk(plan: ScanPlan, info: VmcoreInfo, tables: PageTables, ram: Sequence[tuple[int, int]],
          page: int) -> tuple[list[tuple[int, int]], list[int]]:
    """Excluded pfn ranges and pages per kind code, section by section."""
    ranges: list[tuple[int, int]] = []
    counts = [0] * (len(KINDS) + 1)
    carry = (0, 0)
    for pfn, stop, mem_map in present_sections(info, tables, ram, page):
        cols = read_columns(tables, mem_map, pfn, stop, plan.size, plan.columns)
        kinds, carry = classify(plan, cols, stop - pfn, pfn, carry)
        if plan.percpu:
            mark_percpu_free(plan, cols, stop - pfn, pfn, kinds, mem_map, tables.read)
        for code in range(1, len(counts)):
            counts[code] += kinds.count(code)
        mask_runs(kinds.translate(_NONZERO), pfn, ranges)
    return merge(ranges), counts


def excluded_pages(info: VmcoreInfo, tables: PageTables, ram: Sequence[tuple[int, int]], page: int,
                   dump_level: int) -> Exclusion:
    """The RAM pages ``dump_level`` leaves out, as makedumpfile chooses them (see
    :mod:`pykexec.vmcore.page_rules` for the rules and the documented differences).

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
        plan = ScanPlan(info, dump_level)
        note = plan.note
        if not plan.scan:
            return Exclusion([], counts, plan.note)
        ranges, by_code = _walk(plan, info, tables, ram, page)
    except (UnknownLayout, VmcoreError) as err:   # a malformed value, a layout we do not know
        asked = asked_kinds(dump_level)
        return Exclusion([], counts, "; ".join(n for n in (note, kept_note(str(err), asked) if asked else "") if n))
    for code, kind in enumerate(KINDS, 1):
        counts[kind] = by_code[code]
    return Exclusion(ranges, counts, note)
