"""Dom0's pseudo-physical memory in a Xen dump: its p2m, and its VMCOREINFO found in it.

The p2m: Xen's crash-info note gives ``dom0_pfn_to_mfn_frame_list_list``, the MFN of a
page of 512 MFNs (index ``pfn >> 18``), each of a page of 512 MFNs (``(pfn >> 9) & 511``),
each of a p2m page of 512 entries (``pfn & 511``) holding the MFN.  Entries of ``~0``
are missing pages; Linux's FOREIGN (bit 63) and IDENTITY (bit 62) flags are masked off.
Linux points unused slots at shared "missing" pages: each page is read and visited once.

VMCOREINFO in dom0's memory: a crash kernel loaded through Xen by kexec-tools gets no
dom0 VMCOREINFO note (kexec-tools records only Xen's), yet dom0 keeps one: Linux's
``vmcoreinfo_note`` (kernel/crash_core.c, 6.x ``vmcore_info.c``) is a page-aligned,
zeroed buffer (``alloc_pages_exact``) that starts with an ELF note named
``VMCOREINFO``, type 0, whose desc is the VMCOREINFO text.  :func:`find_vmcoreinfo`
looks for it at the start of every page dom0 owns, in pfn order, and keeps the first
candidate its caller's check accepts.
"""

from __future__ import annotations

import struct

from pykexec.layouts.elf import NHDR_FMT, NT_VMCOREINFO, note_pad
from pykexec.layouts.x86_paging import PAGE_SHIFT, PAGE_SIZE
from pykexec.vmcore.errors import VmcoreError
from pykexec.vmcore.pfn_runs import merge
from pykexec.vmcore.vmcoreinfo import VmcoreInfo

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

#: p2m entries: ~0 = no page; Linux's FOREIGN_FRAME_BIT and IDENTITY_FRAME_BIT.
INVALID_P2M_ENTRY = (1 << 64) - 1
P2M_FLAGS = (1 << 63) | (1 << 62)
_FOREIGN = 1 << 63
_ENTRIES = PAGE_SIZE // 8
_U64 = struct.Struct("<Q")
_PAGE_OF_U64 = struct.Struct(f"<{_ENTRIES}Q")

VMCOREINFO_NAME = b"VMCOREINFO"
#: The note's header and name as Linux writes them (namesz counts the NUL; desc size varies).
_NAME_FIELD = VMCOREINFO_NAME + b"\0" * (note_pad(len(VMCOREINFO_NAME) + 1) - len(VMCOREINFO_NAME))
_DESC_OFF = NHDR_FMT.size + len(_NAME_FIELD)
#: Linux's VMCOREINFO_BYTES is one page; its note can spill into a second page.
MAX_DESC = 2 * PAGE_SIZE - _DESC_OFF


class P2m:
    """Dom0's pseudo-physical -> machine frame map, from its root MFN.

    ``read_machine(maddr, size)`` reads machine memory (raises :class:`VmcoreError`
    outside the dump).
    """

    def __init__(self, read_machine: Callable[[int, int], bytes], root_mfn: int) -> None:
        self._read = read_machine
        self.root = root_mfn
        self._leaf: dict[int, int] = {}   # pfn >> 9 -> MFN of that p2m page

    def _u64(self, maddr: int) -> int:
        return int(_U64.unpack(self._read(maddr, 8))[0])

    def _leaf_mfn(self, index: int) -> int:
        mfn = self._leaf.get(index)
        if mfn is None:
            top = index >> 9
            if top >= _ENTRIES:
                raise VmcoreError(f"dom0 pfn {index << 9:#x} is beyond the p2m frame list")
            try:
                mid = self._u64((self.root << PAGE_SHIFT) + top * 8)
                mfn = self._leaf[index] = self._u64((mid << PAGE_SHIFT) + (index & 511) * 8)
            except VmcoreError:
                raise VmcoreError(f"dom0's p2m frame list (root MFN {self.root:#x}) is not in the dump") \
                    from None
        return mfn

    def runs(self) -> list[tuple[int, int]]:
        """Dom0's own pseudo-physical frames (see :meth:`frames`) as merged pfn runs."""
        out: list[tuple[int, int]] = []
        for pfn, _mfn in self.frames():
            if out and out[-1][1] == pfn:
                out[-1] = (out[-1][0], pfn + 1)
            else:
                out.append((pfn, pfn + 1))
        return out

    def machine_runs(self, ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """Sorted, merged machine-frame runs of dom0's pfn ``ranges`` (FOREIGN and missing
        entries left out).  Each p2m page is read once per pass; memory grows with the
        runs, not the frames."""
        runs: list[tuple[int, int]] = []
        index = -1
        leaf: tuple[int, ...] = ()
        for start, end in ranges:
            for pfn in range(start, end):
                if pfn >> 9 != index:
                    index = pfn >> 9
                    leaf = _PAGE_OF_U64.unpack(self._read(self._leaf_mfn(index) << PAGE_SHIFT, PAGE_SIZE))
                mfn = leaf[pfn & 511]
                if mfn & _FOREIGN:
                    continue
                mfn &= ~P2M_FLAGS
                if runs and runs[-1][1] == mfn:
                    runs[-1] = (runs[-1][0], mfn + 1)
                else:
                    runs.append((mfn, mfn + 1))
        return merge(runs)

    def pfn_to_mfn(self, pfn: int) -> int:
        """Dom0 pseudo-physical frame -> machine frame (VmcoreError when there is none)."""
        mfn = self._u64((self._leaf_mfn(pfn >> 9) << PAGE_SHIFT) + (pfn & 511) * 8)
        if mfn == INVALID_P2M_ENTRY:
            raise VmcoreError(f"dom0 pfn {pfn:#x} has no machine frame (p2m entry invalid)")
        return mfn & ~P2M_FLAGS

    def frames(self) -> Iterator[tuple[int, int]]:
        """Every (pfn, mfn) of dom0's own memory, in pfn order: entries flagged FOREIGN
        (another domain's frame that dom0 maps) are skipped, and so are parts of the list
        not in the dump; IDENTITY's flag is masked off."""
        pages: dict[int, tuple[int, ...] | None] = {}   # MFN -> its 512 entries (None: unreadable or empty)

        def entries(mfn: int) -> tuple[int, ...] | None:
            if mfn == INVALID_P2M_ENTRY:
                return None
            mfn &= ~P2M_FLAGS
            if mfn not in pages:
                try:
                    got = _PAGE_OF_U64.unpack(self._read(mfn << PAGE_SHIFT, PAGE_SIZE))
                except VmcoreError:
                    got = None
                # Linux's shared "missing" pages hold only ~0: nothing to visit.
                pages[mfn] = None if got is None or got.count(INVALID_P2M_ENTRY) == _ENTRIES else got
            return pages[mfn]

        top = entries(self.root)
        if top is None:
            raise VmcoreError(f"dom0's p2m frame list (root MFN {self.root:#x}) is not in the dump")
        # Linux shares its "missing" and "identity" pages between slots; real ones are
        # unique.  Each page is visited once, so a damaged list cannot loop for long.
        seen: set[int] = set()
        for i, mid_mfn in enumerate(top):
            mid = entries(mid_mfn) if mid_mfn not in seen else None
            seen.add(mid_mfn)
            if mid is None:
                continue
            for j, leaf_mfn in enumerate(mid):
                leaf = entries(leaf_mfn) if leaf_mfn not in seen else None
                seen.add(leaf_mfn)
                if leaf is None:
                    continue
                base = (i << 18) | (j << 9)
                for k, mfn in enumerate(leaf):
                    if not mfn & _FOREIGN:   # ~0 (missing) has it too
                        yield base + k, mfn & ~P2M_FLAGS


def parse_vmcoreinfo_page(head: bytes) -> int | None:
    """The desc size of a page that starts with Linux's VMCOREINFO note, else None."""
    if len(head) < _DESC_OFF:
        return None
    namesz, descsz, n_type = NHDR_FMT.unpack_from(head)
    if namesz != len(VMCOREINFO_NAME) + 1 or n_type != NT_VMCOREINFO \
            or head[NHDR_FMT.size:_DESC_OFF] != _NAME_FIELD or not 0 < descsz <= MAX_DESC:
        return None
    return int(descsz)


def find_vmcoreinfo(read_machine: Callable[[int, int], bytes], p2m: P2m,
                    accept: Callable[[VmcoreInfo], bool]) -> VmcoreInfo | None:
    """Dom0's VMCOREINFO, from the first page of dom0's memory that holds Linux's
    VMCOREINFO note and that ``accept`` confirms (e.g. its symbols lead to its own
    OSRELEASE); None if there is none."""
    for pfn, mfn in p2m.frames():
        try:
            head = read_machine(mfn << PAGE_SHIFT, _DESC_OFF)
        except VmcoreError:
            continue
        descsz = parse_vmcoreinfo_page(head)
        if descsz is None:
            continue
        try:
            first = min(descsz, PAGE_SIZE - _DESC_OFF)
            desc = read_machine((mfn << PAGE_SHIFT) + _DESC_OFF, first)
            if descsz > first:  # the buffer's second page, through the p2m
                desc += read_machine(p2m.pfn_to_mfn(pfn + 1) << PAGE_SHIFT, descsz - first)
        except VmcoreError:
            continue
        info = VmcoreInfo(desc)
        if info.osrelease and accept(info):
            return info
    return None


__all__ = ["INVALID_P2M_ENTRY", "P2M_FLAGS", "P2m", "find_vmcoreinfo", "parse_vmcoreinfo_page"]
