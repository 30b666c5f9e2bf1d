"""``vmcore save --format elf``: the same page selection as the kdump writer, as an
uncompressed ELF core laid out as makedumpfile ``-E`` lays it out (read by
vmcore-dmesg, crash and gdb).

The source's PT_LOADs in order, each split where at least :data:`ELF_GAP_PAGES`
(256, makedumpfile's ``PFN_EXCLUDED``) consecutive pages are left out.  A piece's
``p_memsz`` runs up to the next piece (or the end of the source segment), its
``p_filesz`` only to its last kept page, so every left-out page still reads as
zeros and the PT_LOADs cover exactly the memory the source covered.  Shorter
left-out runs stay inside a piece as zeros (holes in DST: sparse), where
makedumpfile keeps their old content; so does a short left-out run at a segment's
end, because vmcore-dmesg reads whole buffers straight from the file and fails on
bytes past ``p_filesz`` (a log buffer with 256+ empty pages at its end defeats it,
as on makedumpfile -E output; our reader reads zeros there).  Notes are copied into
one PT_NOTE; ``e_flags = 1`` marks an incomplete dump, as makedumpfile does.  Until the
end, the program headers of what is written so far are rewritten after each batch of pages
(under the flagged header), so that a save killed mid-way reads up to where it stopped.  The
header and program headers are rewritten at the end (space for the most program
headers the selection can need is kept after the ELF header, where crash(8)
expects them); in a flattened stream (``-F``) they are written only then, once.
"""

from __future__ import annotations

from pykexec.layouts.elf import (
    EHDR64_FMT,
    ELFCLASS64,
    ELFDATA2LSB,
    ELFMAG,
    ET_CORE,
    EV_CURRENT,
    PHDR64_FMT,
    PT_LOAD,
    PT_NOTE,
    SHDR64_FMT,
)
from pykexec.vmcore.elfcore import PN_XNUM
from pykexec.vmcore.errors import VmcoreError
from pykexec.vmcore.output import CHUNK_PAGES, note_blob, open_output

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pykexec.vmcore.elfcore import ElfCore
    from pykexec.vmcore.output import Output
    from pykexec.vmcore.save import Progress, SaveResult

#: Left-out runs of at least this many pages split a PT_LOAD (makedumpfile's
#: PFN_EXCLUDED); shorter ones are stored as zeros.
ELF_GAP_PAGES = 256
_EHDR, _PHDR, _SHDR = EHDR64_FMT.size, PHDR64_FMT.size, SHDR64_FMT.size


class _ElfPiece:
    """One output PT_LOAD: ``[paddr, paddr + memsz)`` of a source segment, whose first
    ``filesz`` bytes are at ``offset`` in DST."""

    __slots__ = ("vaddr", "paddr", "offset", "filesz", "memsz")

    def __init__(self, vaddr: int, paddr: int, offset: int) -> None:
        self.vaddr, self.paddr, self.offset = vaddr, paddr, offset
        self.filesz = 0
        self.memsz = 0


def elf_header(machine: int, phnum: int, incomplete: bool) -> bytes:
    """ELF64 core header, program headers right after it; section header 0 carries
    the count when there are PN_XNUM (0xffff) or more of them."""
    ident = ELFMAG + bytes([ELFCLASS64, ELFDATA2LSB, EV_CURRENT]) + bytes(9)
    xnum = phnum >= PN_XNUM
    shoff = _EHDR + phnum * _PHDR if xnum else 0
    return EHDR64_FMT.pack(ident, ET_CORE, machine, EV_CURRENT, 0, _EHDR, shoff, 1 if incomplete else 0,
                           _EHDR, _PHDR, PN_XNUM if xnum else phnum, _SHDR if xnum else 0, 1 if xnum else 0, 0)


def _checkpoint(out: Output, machine: int, note_ph: bytes, pieces: list[_ElfPiece], result: SaveResult) -> None:
    """The program headers of what is written so far, under a header still flagged
    incomplete: a save killed now (kill -9) leaves a core readable up to where it stopped."""
    if len(pieces) + 1 >= PN_XNUM:
        return  # the count would go in section header 0: written at the end only
    table = note_ph + b"".join(PHDR64_FMT.pack(PT_LOAD, 7, p.offset, p.vaddr, p.paddr, p.filesz,
                                               max(p.memsz, p.filesz), 0) for p in pieces)
    try:
        out.write_at(table, _EHDR)
        out.write_at(elf_header(machine, len(pieces) + 1, True), 0)
    except OSError as err:
        result.incomplete = f"cannot write {out.name}: {err.strerror}"


def write_elf(core: ElfCore, dst: str | int, force: bool, *, kept: list[tuple[int, int]], page: int, bar: Progress,
              result: SaveResult, exclude_zero: bool) -> None:
    """Write the ``kept`` pages of ``core`` to a new file ``dst`` (or a flattened stream:
    :func:`~pykexec.vmcore.output.open_output`) as a filtered ELF core (see the module
    docstring for the layout), filling ``result``."""
    loads = list(core.loads)
    # Kept pfn ranges of each source segment, and the most PT_LOADs they can need.
    per_load: list[list[tuple[int, int]]] = []
    bound = 1  # the PT_NOTE
    for seg in loads:
        lo = seg.paddr // page
        hi = -(-(seg.paddr + seg.filesz) // page)
        ranges = [(max(s, lo), min(e, hi)) for s, e in kept if s < hi and e > lo]
        per_load.append(ranges)
        bound += 1 + len(ranges) + sum(e - s for s, e in ranges) // ELF_GAP_PAGES
    notes = note_blob(core)
    head = _EHDR + bound * _PHDR + (_SHDR if bound >= PN_XNUM else 0)
    note_off = head
    data_start = -(-(note_off + len(notes)) // page) * page

    out = open_output(dst, force)
    pieces: list[_ElfPiece] = []
    end_of_data = data_start
    try:
        try:
            # Incomplete until the end: a header with only the notes, flagged (a stream
            # has its end marker, and one header: see the kdump writer's docstring).
            note_ph = PHDR64_FMT.pack(PT_NOTE, 0, note_off, 0, 0, len(notes), len(notes), 0)
            if not out.marks_end:
                out.write_at(elf_header(core.machine, 1, True) + note_ph, 0)
            out.write_at(notes, note_off)
        except OSError as err:
            raise VmcoreError(f"{out.name}: cannot write: {err.strerror}") from None
        buf = bytearray(CHUNK_PAGES * page)
        zero_page = bytes(page)
        next_off = data_start
        for seg, ranges in zip(loads, per_load):
            seg_end = seg.paddr + seg.memsz
            data_end = seg.paddr + seg.filesz
            cur: _ElfPiece | None = None
            last = seg.paddr  # end of the last kept bytes (paddr)

            def start_piece(paddr: int) -> _ElfPiece:
                off = next_off + (paddr - next_off) % page  # file offset = paddr (mod page)
                piece = _ElfPiece(seg.vaddr + (paddr - seg.paddr), paddr, off)
                pieces.append(piece)
                return piece

            for s, e in ranges:
                pfn = s
                while pfn < e and not result.incomplete:
                    n = min(e - pfn, CHUNK_PAGES)
                    a = max(pfn * page, seg.paddr)  # bytes [a, b) of this chunk inside the segment
                    b = min((pfn + n) * page, data_end)
                    view = memoryview(buf)[:(pfn + n - pfn) * page]
                    lead = a - pfn * page
                    if lead or b < (pfn + n) * page:
                        view[:] = bytes(len(view))
                    want = min(b, seg.paddr + seg.avail) - a
                    if want < b - a:
                        result.incomplete = f"{core.path} is truncated at offset {seg.offset + seg.avail:#x}"
                    if want > 0:
                        try:
                            got = core.readinto(view[lead:lead + want], seg.offset + a - seg.paddr)
                        except OSError as err:
                            result.incomplete = f"read error in {core.path}: {err.strerror}"
                            break
                        if got != want:
                            result.incomplete = f"{core.path} ends early (truncated)"
                            break
                    # Runs of kept, non-zero pages of this chunk, as byte ranges.
                    i = 0
                    while i < n:
                        if exclude_zero and buf.startswith(zero_page, i * page):
                            result.zero_pages += 1
                            i += 1
                            continue
                        j = i + 1
                        while j < n and not (exclude_zero and buf.startswith(zero_page, j * page)):
                            j += 1
                        ra = max((pfn + i) * page, a)
                        rb = min((pfn + j) * page, b)
                        if rb > ra:
                            if cur is None:
                                if ra - seg.paddr >= ELF_GAP_PAGES * page:  # long leading gap
                                    start_piece(seg.paddr).memsz = ra - seg.paddr
                                    cur = start_piece(ra)
                                else:
                                    cur = start_piece(seg.paddr)
                            elif ra - last >= ELF_GAP_PAGES * page:
                                cur.memsz = ra - cur.paddr
                                next_off = cur.offset + cur.filesz
                                cur = start_piece(ra)
                            try:
                                out.write_at(view[ra - pfn * page:rb - pfn * page], cur.offset + (ra - cur.paddr))
                            except OSError as err:
                                result.incomplete = f"cannot write {out.name}: {err.strerror}"
                                break
                            cur.filesz = rb - cur.paddr
                            last = rb
                            result.saved_pages += j - i
                            end_of_data = max(end_of_data, cur.offset + cur.filesz)
                        i = j
                    result.read_bytes += n * page
                    bar.update(result.read_bytes)
                    pfn += n
                    if not out.marks_end and not result.incomplete:
                        _checkpoint(out, core.machine, note_ph, pieces, result)
                if result.incomplete:
                    break
            if cur is None:  # nothing kept: the whole segment reads as zeros
                cur = start_piece(seg.paddr)
            if not result.incomplete and data_end - last < ELF_GAP_PAGES * page:
                cur.filesz = data_end - cur.paddr  # a short left-out tail: zeros (holes) in DST
                end_of_data = max(end_of_data, cur.offset + cur.filesz)
            cur.memsz = seg_end - cur.paddr
            next_off = -(-(cur.offset + cur.filesz) // page) * page
            if result.incomplete:
                break
        bar.finish()
        if len(pieces) + 1 > bound:  # cannot happen: the bound counts every possible split
            raise VmcoreError(f"internal error: {len(pieces) + 1} program headers, room for {bound}")
        phdrs = [note_ph]
        phdrs += [PHDR64_FMT.pack(PT_LOAD, 7, p.offset, p.vaddr, p.paddr, p.filesz, p.memsz, 0)
                  for p in pieces]
        table = b"".join(phdrs)
        if len(phdrs) >= PN_XNUM:  # section header 0: sh_info = the real count
            table += SHDR64_FMT.pack(0, 0, 0, 0, 0, 0, 0, len(phdrs), 0, 0)
        try:
            out.extend_to(max(end_of_data, data_start))  # trailing left-out pages: holes
            out.write_at(table, _EHDR)
            if not result.incomplete:
                out.sync_data()
            out.write_at(elf_header(core.machine, len(phdrs), bool(result.incomplete)), 0)
            out.finish()
        except OSError as err:
            result.incomplete = result.incomplete or f"cannot finish {out.name}: {err.strerror}"
        result.out_bytes = out.size()
    finally:
        out.close()
