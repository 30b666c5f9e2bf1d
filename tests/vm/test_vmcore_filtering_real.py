"""Dump levels on the real cached 6.1 / 6.12 dumps (no VM boots once they are cached):
:func:`pykexec.vmcore.filtering.excluded_pages` against makedumpfile 1.7.2's own
choice of pages (the 2nd bitmap of ``makedumpfile -l -d N``, read with our
:class:`~pykexec.vmcore.kdump.KdumpFile`) and its page counts (``--message-level``
report).  Levels without bit 1: makedumpfile finds zero pages while copying, and
so do we.

On 6.1 the pages kept are the same at every level.  On 6.12 they differ by what
the module docstring of ``filtering.py`` documents, and this test computes both
sets on its own, from the struct pages, and asserts the difference is exactly them:

* slab pages with bit 0 of their ``mapping`` word set (6.2+ ``slab->slabs``):
  1.7.2 drops them as user data (bit 8), we keep them;
* tails of large folios whose head is left out, when VMCOREINFO has no
  ``OFFSET(page.compound_order)`` (6.6+): 1.7.2 keeps them, we leave them out.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from pykexec.vmcore.elfcore import ElfCore
from pykexec.vmcore.errors import VmcoreError
from pykexec.vmcore.filtering import Exclusion, excluded_pages
from pykexec.vmcore.kdump import KdumpFile
from pykexec.vmcore.page_rules import KINDS
from pykexec.vmcore.paging import PageTables
from pykexec.vmcore.pfn_runs import merge
from pykexec.vmcore.save import ram_runs

PAGE = 4096
LEVELS = (2, 4, 8, 16, 30)
#: makedumpfile's report line -> our kind.
REPORT = {"Non-private cache pages": "cache", "Private cache pages": "cache_private",
          "User process data pages": "user", "Free pages": "free", "Hwpoison pages": "hwpoison",
          "Offline pages": "offline"}

Oracle = Callable[[Path, int], tuple[set[int], dict[str, int]]]


def _makedumpfile() -> str:
    path = shutil.which("makedumpfile")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("makedumpfile missing in CI")
        pytest.skip("makedumpfile not installed")
    return path


@pytest.fixture(scope="session")
def makedumpfile_choice(tmp_path_factory: pytest.TempPathFactory) -> Oracle:
    """(pfns makedumpfile keeps, its excluded page counts) for a dump and level; each
    makedumpfile run is made once per session."""
    tool = _makedumpfile()
    out_dir = tmp_path_factory.mktemp("makedumpfile")
    cache: dict[tuple[Path, int], tuple[set[int], dict[str, int]]] = {}

    def choice(src: Path, level: int) -> tuple[set[int], dict[str, int]]:
        if (src, level) not in cache:
            dst = out_dir / f"{src.stem}-d{level}.kdump"
            # -l (lzo): the same bitmaps as -c, eight times faster on these dumps.
            res = subprocess.run([tool, "--message-level", "20", "-l", "-d", str(level), str(src), str(dst)],
                                 capture_output=True, text=True)
            assert res.returncode == 0, res.stdout + res.stderr
            counts = {}
            for line in res.stdout.splitlines():
                name, _, value = line.partition(":")
                if name.strip() in REPORT:
                    counts[REPORT[name.strip()]] = int(value, 16)
            assert set(counts) == set(KINDS) - {"free_percpu"}, res.stdout   # ours alone
            with KdumpFile(dst) as k:
                assert k.sub.dump_level == level and not k.incomplete
                cache[src, level] = set(k.saved_pfns()), counts
            dst.unlink()
        return cache[src, level]

    return choice


class Dump:
    """A real dump's RAM and its struct pages, read here one by one (not through filtering.py)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with ElfCore(path) as core:
            self.info = info = core.require_vmcoreinfo()
            self.ram = merge([(r.pfn, r.end) for r in ram_runs(core.loads, PAGE)])
            self.tables = PageTables(lambda a, n: core.read(a, n, physical=True), info)
            self.pages = self._struct_pages()
            self.percpu = self._percpu_free()   # reads list heads: while the dump is open
            start = time.perf_counter()
            self.exclusion: dict[int, Exclusion] = {}
            for level in (*LEVELS, 31):
                self.exclusion[level] = excluded_pages(info, self.tables, self.ram, PAGE, level)
            self.seconds = time.perf_counter() - start
            self.best31 = min(self._timed(31) for _ in range(3))

    def _timed(self, level: int) -> float:
        start = time.perf_counter()
        excluded_pages(self.info, self.tables, self.ram, PAGE, level)
        return time.perf_counter() - start

    def _struct_pages(self) -> dict[int, tuple[int, int, int, int]]:
        """pfn -> (flags, compound_head, mapping, _mapcount & 0xffffffff, _refcount, lru.prev),
        SPARSEMEM_EXTREME (both test kernels), for every RAM pfn; compound_head is lru.next."""
        info = self.info
        fields = {name: info.offset(f"page.{name}") for name in ("flags", "compound_head", "mapping", "_mapcount",
                                                                 "_refcount")}
        fields["lru.prev"] = info.offset("page.lru") + 8
        self.mem_maps: list[tuple[int, int, int]] = []   # (first pfn, end pfn, address of pfn 0's struct page)
        size = info.size("page")
        shift = info.number("SECTION_SIZE_BITS") - 12
        per_root = PAGE // info.size("mem_section")
        assert info.length("mem_section") * per_root << info.number("SECTION_SIZE_BITS") \
            == 1 << info.number("MAX_PHYSMEM_BITS")
        u64 = struct.Struct("<Q")
        out = {}
        for start, end in self.ram:
            pfn = start
            while pfn < end:
                nr = pfn >> shift
                stop = min(end, (nr + 1) << shift)
                root = u64.unpack(self.tables.read(info.symbol("mem_section") + 8 * (nr // per_root), 8))[0]
                smm = u64.unpack(self.tables.read(root + (nr % per_root) * info.size("mem_section")
                                                  + info.offset("mem_section.section_mem_map"), 8))[0]
                assert smm & 3 == 3, f"section {nr} has no mem_map"
                raw = self.tables.read((smm & ~0xFFF) + pfn * size, (stop - pfn) * size)
                self.mem_maps.append((pfn, stop, smm & ~0xFFF))
                for i in range(stop - pfn):
                    base = i * size
                    out[pfn + i] = tuple(int.from_bytes(raw[base + off:base + off + (4 if name[0] == "_" else 8)],
                                                        "little") for name, off in fields.items())
                pfn = stop
        return out

    def _percpu_free(self) -> set[int]:
        """Free pages on the per-CPU lists, found page by page (filtering's rule, this
        test's reader): no reference, mapping, page type or page-use flag, not a tail, and
        linked both ways through page.lru (list heads read through the page tables)."""
        info, size = self.info, self.info.size("page")
        link = info.offset("page.lru")
        flags_mask = sum(1 << info.number(f"PG_{n}") for n in ("lru", "private", "swapcache", "swapbacked", "slab")
                         if info.has_number(f"PG_{n}")) | info.number("PG_head_mask")

        def lru_of(pfn: int) -> int:
            return next(m for s, e, m in self.mem_maps if s <= pfn < e) + pfn * size + link

        by_lru = {lru_of(pfn): pfn for pfn in self.pages}

        def word(addr: int, prev: bool) -> int | None:   # next (or prev) of the list_head at addr
            pfn = by_lru.get(addr)
            if pfn is not None:
                return self.pages[pfn][5] if prev else self.pages[pfn][1]
            try:
                return int.from_bytes(self.tables.read(addr + 8 * prev, 8), "little")
            except VmcoreError:
                return None

        out = set()
        for pfn, (flags, nxt, mapping, mapcount, refcount, prev) in self.pages.items():
            me = lru_of(pfn)
            if (refcount == 0 and mapping == 0 and mapcount == 0xFFFFFFFF and not flags & flags_mask
                    and not nxt & 1 and me not in (nxt, prev) and word(nxt, True) == me and word(prev, False) == me):
                out.add(pfn)
        return out

    def ram_pfns(self) -> set[int]:
        return {p for s, e in self.ram for p in range(s, e)}

    def slab_with_anon_bit(self) -> set[int]:
        """Slab pages (not tails) that makedumpfile 1.7.2's anonymous test takes for user pages."""
        info = self.info
        slab_bit = info.number("PG_slab") if info.has_number("PG_slab") else None
        slab_type = (info.number("PAGE_SLAB_MAPCOUNT_VALUE") & 0xFFFFFFFF) >> 24 \
            if info.has_number("PAGE_SLAB_MAPCOUNT_VALUE") else None
        return {pfn for pfn, (flags, head, mapping, mapcount, *_rest) in self.pages.items()
                if mapping & 1 and not head & 1
                and ((slab_bit is not None and flags >> slab_bit & 1) or mapcount >> 24 == slab_type)}

    def folio_tails(self, left_out_by_them: set[int]) -> set[int]:
        """Tails of large folios whose head makedumpfile 1.7.2 left out alone, unable to find
        the order (no OFFSET(page.compound_order), 6.6+: the order is folio._flags_1's low byte);
        slab heads it took for user pages are kept here, tails and all."""
        if "OFFSET(page.compound_order)" in self.info:
            return set()
        head_mask = self.info.number("PG_head_mask")
        tails = set()
        for pfn in left_out_by_them - self.slab_with_anon_bit():
            flags = self.pages[pfn][0]
            if flags & head_mask and pfn + 1 in self.pages:
                order = self.pages[pfn + 1][0] & 0xFF
                if pfn % (1 << order) == 0:
                    tails.update(p for p in range(pfn + 1, pfn + (1 << order)) if p in self.pages)
        return tails


@pytest.fixture(scope="module")
def dump(vmcore: tuple[str, Path]) -> Dump:
    return Dump(vmcore[1])


@pytest.mark.parametrize("level", LEVELS)
def test_same_pages_as_makedumpfile(dump: Dump, makedumpfile_choice: Oracle, level: int) -> None:
    theirs, their_counts = makedumpfile_choice(dump.path, level)
    ex = dump.exclusion[level]
    assert ex.note == ""
    ram = dump.ram_pfns()
    assert theirs <= ram
    ours = set(ram)
    for start, end in ex.ranges:
        ours.difference_update(range(start, end))
    slab = dump.slab_with_anon_bit() if level & 8 else set()
    assert slab <= ram - theirs   # makedumpfile left each of them out
    tails = dump.folio_tails(ram - theirs)
    # Free pages on the per-CPU lists, which makedumpfile keeps (percpu_free.py).
    percpu = dump.percpu if level & 16 else set()
    assert percpu <= theirs and len(percpu) == ex.counts["free_percpu"]
    # The documented differences, and nothing else.
    assert ours - theirs == slab
    assert theirs - ours == tails | percpu
    diff = {kind: ex.counts[kind] - their_counts.get(kind, 0) for kind in KINDS}
    assert diff["free"] == diff["cache_private"] == diff["hwpoison"] == diff["offline"] == 0, diff
    assert diff["cache"] + diff["user"] == len(tails) - len(slab), diff
    if not tails:
        assert (diff["cache"], diff["user"]) == (0, -len(slab)), diff
    assert sum(ex.counts.values()) == len(ram - ours)


def test_level_31_counts_and_speed(dump: Dump, makedumpfile_choice: Oracle) -> None:
    """-d 31 (makedumpfile's zero pages aside) and the cost of deciding it: the whole
    classification of a 1 GiB guest's struct pages must stay far from a per-page loop."""
    ex = dump.exclusion[31]
    assert (ex.ranges, ex.counts) == (dump.exclusion[30].ranges, dump.exclusion[30].counts)
    assert ex.counts["free"] > dump.ram_pfns().__len__() // 2   # an idle guest
    _, theirs = makedumpfile_choice(dump.path, 30)
    print(f"{dump.path.name}: -d 31 {ex.counts} in {len(ex.ranges)} ranges; makedumpfile -d 30: {theirs}; "
          f"{dump.best31 * 1000:.1f} ms; slab pages 1.7.2 drops: {len(dump.slab_with_anon_bit())}")
    assert dump.best31 < 0.2
