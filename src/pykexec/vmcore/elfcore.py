"""Read-only access to an ELF64 little-endian core file such as ``/proc/vmcore``.

The file is memory-mapped (read-only) and never read as a whole: reads that
fall inside one PT_LOAD's file bytes are zero-copy ``memoryview`` slices of
the map (of a flattened stream's map, through :class:`~pykexec.vmcore.flattened.FlattenedFile`,
when one record holds them).  Only reads that straddle segments or run into the zero-filled
tail of a segment (``p_filesz < p_memsz``) are assembled into new bytes,
and those are capped at :data:`MAX_COPY`.

Address translation, as vmcore-dmesg does it:

* virtual: the first PT_LOAD whose ``[p_vaddr, p_vaddr + p_memsz)`` covers
  the address; failing that, a direct-map address
  (``NUMBER(PAGE_OFFSET)`` <= addr) is turned into a physical one,
  ``addr - PAGE_OFFSET + PHYS_OFFSET``, and looked up by ``p_paddr``;
* physical: the first PT_LOAD whose ``[p_paddr, p_paddr + p_memsz)`` covers it.

``/proc/vmcore`` on x86_64 is mapped a window at a time
(:class:`~pykexec.vmcore.mapping.MapWindows`) and the pages of ``vmcore save``
(:meth:`ElfCore.readinto`) are copied out of those maps; other files are mapped whole
and their pages read with pread(2).  A read of /proc/vmcore copies each page through
``copy_oldmem_page``, which maps and unmaps it (ioremap, a TLB flush) on every call:
7-8% of a save in a TCG crash kernel (docs/benchmarks.md).
The map is safe there (fs/proc/vmcore.c): ``mmap_vmcore`` installs every page table
entry when the map is made (``remap_pfn_range``; the zero page for pages a
hypervisor says are not RAM, which read() returns as zeros too), so touching it
never faults; its fault handler, which answers SIGBUS, serves s390 alone.  Left:
a machine check on bad RAM, which kills us with SIGBUS through the map, and through
read() hits the kernel's own copy, which has no machine-check recovery (a panic);
hwpoisoned pages are left out by the dump-level scan anyway.  A regular file
stays on pread: its map raises SIGBUS, which Python cannot catch, for a disk's
I/O error or a file cut short under us, where pread says EIO or reads short.
``PYKEXEC_VMCORE_READ=pread`` (or ``map``) forces one way, for benchmarks and tests.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections import namedtuple

from pykexec.layouts.elf import (
    EHDR64_FMT,
    EI_CLASS,
    EI_DATA,
    ELFCLASS32,
    ELFCLASS64,
    ELFDATA2LSB,
    ELFMAG,
    ET_CORE,
    NT_VMCOREINFO,
    PHDR64_FMT,
    PT_LOAD,
    PT_NOTE,
    Note,
    NoteFormatError,
    iter_notes,
)
from pykexec.vmcore.errors import VmcoreError
from pykexec.vmcore.mapping import MapWindows, map_readonly
from pykexec.vmcore.vmcoreinfo import VmcoreInfo

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pykexec.vmcore.flattened import FlattenedFile

#: Largest read that has to be copied together (straddling segments or zero fill).
MAX_COPY = 256 << 20
#: Largest PT_NOTE we parse; real ones are a few KiB per CPU.
MAX_NOTE_SEGMENT = 64 << 20
#: Most notes we keep, over all PT_NOTEs (several PT_NOTEs may point at the same bytes):
#: Linux writes one or two per CPU plus VMCOREINFO, Xen a few per CPU; NR_CPUS <= 8192.
MAX_NOTES = 1 << 17
PN_XNUM = 0xFFFF
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_MASK64 = (1 << 64) - 1

Buffer = bytes | memoryview


def _copy_from_map(path: str) -> bool:
    """Whether :meth:`ElfCore.readinto` may copy ``path``'s pages from its map: a procfs
    file (/proc/vmcore) on x86_64, unless ``PYKEXEC_VMCORE_READ`` says otherwise."""
    forced = os.environ.get("PYKEXEC_VMCORE_READ")
    if forced in ("map", "pread"):
        return forced == "map"
    try:
        return os.uname().machine == "x86_64" and os.stat(path).st_dev == os.stat("/proc/self").st_dev
    except OSError:
        return False


# namedtuple, not typing.NamedTuple: importing typing costs a third of a dmesg run.
class Load(namedtuple("Load", "offset vaddr paddr filesz memsz avail")):
    """One PT_LOAD.  ``avail`` is how much of ``filesz`` the file really holds
    (less than ``filesz`` only when the dump is truncated)."""

    __slots__ = ()
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    avail: int


class ElfCore:
    """An open ELF core, as :class:`~pykexec.vmcore.dump_memory.DumpMemory`.  Use as a
    context manager, or call :meth:`close`.

    Raises :class:`VmcoreError` (one line, naming the file) for anything that
    is not a readable ELF64 little-endian core.
    """

    format = "elf64"

    def __init__(self, path: str | os.PathLike[str], source: FlattenedFile | None = None) -> None:
        """``source``: the flattened stream at ``path``, already indexed, read as the
        core it rebuilds (:func:`pykexec.vmcore.open.open_dump` passes it)."""
        self.path = os.fspath(path)
        self._map: mmap.mmap | None = None
        self._source = source
        self._fd = -1  # for readinto, opened on first use
        self._windows: MapWindows | None = None
        #: readinto copies from the map (not pread): see the module's docstring.
        self.copy_from_map = False
        if source is not None:
            self._view = source.view
            self.size = source.size
            if self.size < EHDR64_FMT.size:
                source.close()
                raise VmcoreError(f"{self.path}: not an ELF file (a flattened stream of only {self.size} bytes)")
        else:
            self._map_file()
        try:
            self._parse()
        except BaseException:
            self.close()
            raise

    def _map_file(self) -> None:
        def too_small(size: int) -> str:
            return f"not an ELF file (only {size} bytes)"

        self.copy_from_map = _copy_from_map(self.path)
        if self.copy_from_map:  # /proc/vmcore: a window at a time (MapWindows says why)
            self._windows = MapWindows(self.path, EHDR64_FMT.size, too_small)
            self.size = self._windows.size
            self._view = self._windows.view
            return
        self._map = map_readonly(self.path, EHDR64_FMT.size, too_small)
        self._mv = memoryview(self._map)
        self.size = len(self._mv)
        self._view = self._map_view

    def _map_view(self, offset: int, size: int) -> Buffer:
        return self._mv[offset:offset + size]

    # -- parsing -------------------------------------------------------------
    def _err(self, msg: str) -> VmcoreError:
        return VmcoreError(f"{self.path}: {msg}")

    def _parse(self) -> None:
        mv = self._view(0, EHDR64_FMT.size)
        if bytes(mv[:4]) != ELFMAG:
            raise self._err("not an ELF file")
        if mv[EI_CLASS] == ELFCLASS32:
            raise self._err("ELF32 core files are not supported (only ELF64 little-endian)")
        if mv[EI_CLASS] != ELFCLASS64:
            raise self._err(f"unknown ELF class {mv[EI_CLASS]}")
        if mv[EI_DATA] != ELFDATA2LSB:
            raise self._err("big-endian core files are not supported (only ELF64 little-endian)")
        (_ident, e_type, self.machine, _ver, _entry, phoff, shoff, flags, _ehsize,
         phentsize, phnum, _shentsize, _shnum, _shstrndx) = EHDR64_FMT.unpack_from(mv, 0)
        if e_type != ET_CORE:
            raise self._err(f"not a core file (ELF type {e_type})")
        if phnum == PN_XNUM:
            # Extended numbering: the real count is sh_info of section header 0.
            if shoff + 64 > self.size:
                raise self._err("truncated: section header 0 (extended phnum) past the end of the file")
            phnum = _U32.unpack(self._view(shoff + 44, 4))[0]
        if phnum and phentsize != PHDR64_FMT.size:
            raise self._err(f"unexpected program header size {phentsize}")
        if phoff + phnum * PHDR64_FMT.size > self.size:
            raise VmcoreError(f"DUMP INCOMPLETE: {self.path}: the file ends at byte {self.size}, inside its "
                              f"{phnum} program headers (nothing to read)")
        #: e_flags 1: the writer stopped early (makedumpfile's, and ours, mark of an incomplete dump).
        self.flagged = bool(flags & 1)
        self.notes_cut = False

        self.loads: list[Load] = []
        self.notes: list[Note] = []
        note_bytes = 0
        for (p_type, _pflags, off, vaddr, paddr, filesz, memsz, _align) in PHDR64_FMT.iter_unpack(
                self._view(phoff, phnum * PHDR64_FMT.size)):
            if p_type == PT_LOAD:
                if memsz == 0:
                    continue
                filesz = min(filesz, memsz)
                avail = max(0, min(filesz, self.size - off))
                self.loads.append(Load(off, vaddr, paddr, filesz, memsz, avail))
            elif p_type == PT_NOTE:
                note_bytes += filesz  # each note's bytes are copied: bound them all, not each PT_NOTE
                if note_bytes > MAX_NOTE_SEGMENT:
                    raise self._err(f"PT_NOTEs of {note_bytes} bytes in all are implausibly large")
                have = max(0, min(filesz, self.size - off))  # a file cut short: the notes that arrived
                self.notes_cut = self.notes_cut or have < filesz
                try:
                    for note in iter_notes(self._view(off, have) if have else b""):
                        if len(self.notes) >= MAX_NOTES:
                            raise self._err(f"more than {MAX_NOTES} notes: corrupt program headers")
                        self.notes.append(note)
                except NoteFormatError as err:
                    if have == filesz:
                        raise self._err(f"corrupt note: {err}") from None

        raw = next((n.desc for n in self.notes
                    if n.name == b"VMCOREINFO" and n.type == NT_VMCOREINFO), None)
        self.vmcoreinfo: VmcoreInfo | None = VmcoreInfo(raw) if raw is not None else None
        self._page_offset: int | None = None
        self._phys_offset = 0
        if self.vmcoreinfo is not None:
            info = self.vmcoreinfo
            for key in ("PAGE_OFFSET", "page_offset_base"):
                if info.has_number(key):
                    self._page_offset = info.number(key) & _MASK64
                    break
            for key in ("PHYS_OFFSET", "phys_ram_base"):
                if info.has_number(key):
                    self._phys_offset = info.number(key) & _MASK64
                    break

    @property
    def memory_bytes(self) -> int:
        """The memory the PT_LOADs describe."""
        return sum(seg.memsz for seg in self.loads)

    def damage(self) -> str:
        """"" for a whole dump; else why it is not whole and what is missing, one line:
        flagged incomplete (``e_flags`` 1), a flattened stream cut short, or a file that
        ends early (by the byte where it ends)."""
        why = []
        if self.flagged:
            why.append("flagged incomplete (ELF e_flags 1: the save stopped early)")
        short = [seg for seg in self.loads if seg.avail < seg.filesz]
        stream_cut = self._source is not None and not self._source.complete
        if stream_cut:
            assert self._source is not None
            why.append(f"a flattened stream that ends at byte {self._source.stream_size} without its end marker")
        elif short or self.notes_cut:
            where = ("inside its notes" if self.notes_cut
                     else f"inside PT_LOAD {self.loads.index(short[0]) + 1} of {len(self.loads)}")
            why.append(f"the file ends at byte {self.size}, {where}")
        if not why:
            return ""
        lost = sum(seg.filesz - seg.avail for seg in short)
        total = sum(seg.filesz for seg in self.loads)
        if short:
            missing = (f"{lost / (1 << 20):.1f} of {total / (1 << 20):.1f} MiB of memory missing, "
                       f"in {len(short)} of {len(self.loads)} PT_LOADs")
        elif self.notes_cut:
            missing = "notes cut short, no memory"
        else:
            missing = f"its PT_LOADs hold {total / (1 << 20):.1f} MiB; memory it did not reach is missing"
        return f"{' and '.join(why)} ({missing})"

    def require_vmcoreinfo(self) -> VmcoreInfo:
        if self.vmcoreinfo is None:
            raise self._err("no VMCOREINFO note: not a Linux kernel dump")
        return self.vmcoreinfo

    # -- reading -------------------------------------------------------------
    def _lookup(self, addr: int, physical: bool) -> Load | None:
        for seg in self.loads:
            start = seg.paddr if physical else seg.vaddr
            if start <= addr < start + seg.memsz:
                return seg
        return None

    def _translate(self, addr: int, physical: bool) -> tuple[Load, int, bool]:
        """(segment, address, physical) for ``addr``, using the direct-map fallback."""
        seg = self._lookup(addr, physical)
        if seg is not None:
            return seg, addr, physical
        if not physical and self._page_offset is not None and addr >= self._page_offset:
            paddr = addr - self._page_offset + self._phys_offset
            seg = self._lookup(paddr, True)
            if seg is not None:
                return seg, paddr, True
        kind = "physical" if physical else "virtual"
        raise VmcoreError(f"no PT_LOAD covers {kind} address {addr:#x}: dump incomplete or corrupt")

    def read(self, addr: int, size: int, *, physical: bool = False) -> Buffer:
        """``size`` bytes at kernel virtual (or ``physical``) address ``addr``.

        Zero-copy (a memoryview of the map) when one segment's file bytes
        hold the range.  Bytes past a segment's ``p_filesz`` read as zeros.
        """
        if size < 0 or addr < 0 or addr + size > 1 << 64:
            raise VmcoreError(f"bad read of {size} bytes at {addr:#x}")
        if size == 0:
            return b""
        seg, a, phys = self._translate(addr, physical)
        rel = a - (seg.paddr if phys else seg.vaddr)
        if rel + size <= seg.avail:
            return self._view(seg.offset + rel, size)
        if size > MAX_COPY:
            raise VmcoreError(f"refusing to assemble a {size}-byte read at {addr:#x} "
                              f"(more than {MAX_COPY >> 20} MiB across segments)")
        out = bytearray()
        while True:
            if rel < seg.avail:
                n = min(size - len(out), seg.avail - rel)
                out += self._view(seg.offset + rel, n)
                rel += n
            if len(out) < size and rel < seg.filesz:
                raise VmcoreError(f"{self.path}: truncated: address {addr + len(out):#x} "
                                  f"is past the end of the file")
            if len(out) < size and rel < seg.memsz:
                n = min(size - len(out), seg.memsz - rel)
                out += bytes(n)
                rel += n
            if len(out) == size:
                return bytes(out)
            a = (seg.paddr if phys else seg.vaddr) + seg.memsz  # where the next segment must start
            seg, a, phys = self._translate(a, phys)
            rel = a - (seg.paddr if phys else seg.vaddr)

    def u64(self, addr: int, *, physical: bool = False) -> int:
        return int(_U64.unpack_from(self.read(addr, 8, physical=physical))[0])

    def u32(self, addr: int, *, physical: bool = False) -> int:
        return int(_U32.unpack_from(self.read(addr, 4, physical=physical))[0])

    def readinto(self, buf: memoryview, offset: int) -> int:
        """Bytes of the file at ``offset`` into ``buf`` (as ``os.preadv``): how the writers
        of ``vmcore save`` copy pages.  From the map for /proc/vmcore, else with pread(2),
        whose errors (EIO) are an OSError where the map of a regular file raises SIGBUS."""
        if self._source is not None:
            return self._source.readinto(buf, offset)
        if self._windows is not None:
            return self._windows.readinto(buf, offset)
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return os.preadv(self._fd, [buf], offset)

    # -- lifetime ------------------------------------------------------------
    def close(self) -> None:
        if self._windows is not None:
            self._windows.close()
            self._windows = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._source is not None:
            self._source.close()
        if self._map is not None:
            try:
                self._mv.release()
                self._map.close()
            except BufferError:
                pass  # record views still alive; the map goes with them
            self._map = None

    def __enter__(self) -> "ElfCore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
