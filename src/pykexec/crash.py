"""Crash kernels (kdump): what the dying kernel must describe to the crash kernel.

The elfcorehdr is an ELF64 core header whose program headers point at physical
memory: one PT_NOTE per possible CPU (the kernel fills these notes when it panics),
one for VMCOREINFO, a PT_LOAD for the kernel image's virtual mapping, and a PT_LOAD
per RAM range outside the crash region. The crash kernel turns it into /proc/vmcore.

Low memory: since Linux 5.6 a kernel booted with crashkernel= keeps the first MiB out
of its own use (since 5.13 it always does), so the crash kernel may use it and the
dump still shows what it held. Only a crashed kernel older than 5.6 needs the first
640 KiB copied aside by purgatory before the crash kernel runs ("backup").
"""

from __future__ import annotations

import ctypes
import os
import re
import struct
from collections import namedtuple

from pykexec.layouts import elf as E
from pykexec.layouts.x86_paging import START_KERNEL_MAP
from pykexec.memory import MiB, MemoryMap, MemType, Range, Region, subtract

DEFAULT_PAGE_OFFSET = 0xFFFF888000000000  # x86_64 direct map without KASLR
BACKUP_END = 0xA0000  # 640 KiB: the conventional memory a pre-5.6 kernel may have used
BACKUP_SINCE = (5, 6)
NO_PADDR = (1 << 64) - 1  # /proc/kcore's p_paddr for mappings without one


class KernelImage(namedtuple("KernelImage", "vaddr paddr size")):
    """The running kernel's text..end, as mapped at __START_KERNEL_map."""

    __slots__ = ()
    vaddr: int
    paddr: int
    size: int


class DumpSources(namedtuple("DumpSources", "cpu_notes vmcoreinfo kernel_image page_offset kernel_release "
                                            "extra_notes xen_phys_start xen_symbols",
                             defaults=((), None, None, DEFAULT_PAGE_OFFSET, None, (), None, None))):
    """Where the running kernel (or Xen) keeps what a dump needs: per-CPU note buffers
    and VMCOREINFO (Ranges), the kernel image mapping, the direct map's base. Under Xen:
    Xen's per-pCPU notes and VMCOREINFO_XEN, ``extra_notes`` (dom0's VMCOREINFO, so its
    log can be read later) and ``xen_phys_start`` (written into a note of our own)."""

    __slots__ = ()
    cpu_notes: tuple[Range, ...]
    vmcoreinfo: Range | None
    kernel_image: KernelImage | None
    page_offset: int
    kernel_release: str | None
    extra_notes: tuple[Range, ...]
    xen_phys_start: int | None
    xen_symbols: bytes | None  # Xen's console-ring symbols read in dom0 at load time

    @property
    def needs_backup(self) -> bool:
        # Xen keeps its trampoline in low memory and does not leave it to the crash
        # kernel the way Linux 5.6+ does: copy it aside, as kexec-tools does under Xen.
        return self.xen_phys_start is not None or release_tuple(self.kernel_release) < BACKUP_SINCE

    def own_notes(self) -> bytes:
        """Notes we write ourselves into the elfcorehdr segment."""
        out = b""
        if self.xen_phys_start is not None:
            out += E.pack_note(E.PYKEXEC_NOTE_NAME, E.NT_PYKEXEC_XEN_PHYS_START,
                               struct.pack("<Q", self.xen_phys_start))
        if self.xen_symbols:
            out += E.pack_note(E.PYKEXEC_NOTE_NAME, E.NT_PYKEXEC_XEN_SYMBOLS, self.xen_symbols)
        return out


def release_tuple(release: str | None) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release or "")
    return (int(m.group(1)), int(m.group(2))) if m else (99, 0)


# --- probing the running kernel ---------------------------------------------------------

def _possible_cpus(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.strip().split(","):
        if "-" in part:
            lo, hi = part.split("-")
            cpus.extend(range(int(lo), int(hi) + 1))
        elif part:
            cpus.append(int(part))
    return cpus


def _text(path: str) -> str:
    with open(path) as f:
        return f.read()


def probe_dump_sources(sysfs: str | os.PathLike[str] = "/sys",
                       kcore: str | os.PathLike[str] = "/proc/kcore") -> DumpSources:
    notes = []
    try:
        cpus = _possible_cpus(_text(os.path.join(sysfs, "devices/system/cpu/possible")))
    except (OSError, ValueError):
        cpus = []
    for cpu in cpus:
        d = os.path.join(sysfs, f"devices/system/cpu/cpu{cpu}")
        try:
            addr = int(_text(os.path.join(d, "crash_notes")).strip(), 16)
            size = int(_text(os.path.join(d, "crash_notes_size")).strip(), 0)
        except (OSError, ValueError):
            continue  # CPU absent: kexec-tools skips it too
        notes.append(Range.sized(addr, size))
    vmcoreinfo = None
    try:
        addr_s, size_s = _text(os.path.join(sysfs, "kernel/vmcoreinfo")).split()[:2]
        vmcoreinfo = Range.sized(int(addr_s, 16), int(size_s, 16))
    except (OSError, ValueError):
        pass
    image, page_offset = read_kcore_layout(kcore)
    return DumpSources(tuple(notes), vmcoreinfo, image, page_offset or DEFAULT_PAGE_OFFSET, os.uname().release)


def read_kcore_layout(path: str | os.PathLike[str]) -> tuple[KernelImage | None, int | None]:
    """The kernel image mapping and the direct map's base (KASLR moves both), from
    /proc/kcore's program headers: the kernel gives their physical addresses there."""
    try:
        with open(path, "rb") as f:
            ehdr = E.EHDR64_FMT.unpack(f.read(E.EHDR64_FMT.size))
            phoff, phnum = ehdr[5], ehdr[10]
            if ehdr[0][:4] != E.ELFMAG or not 0 < phnum < 4096:
                return None, None
            f.seek(phoff)
            table = f.read(phnum * E.PHDR64_FMT.size)
    except (OSError, struct.error, ValueError):  # lockdown=confidentiality, no CONFIG_PROC_KCORE; bad e_phoff
        return None, None
    image = page_offset = None
    for i in range(len(table) // E.PHDR64_FMT.size):
        p_type, _, _, vaddr, paddr, _, memsz, _ = E.PHDR64_FMT.unpack_from(table, i * E.PHDR64_FMT.size)
        if p_type != E.PT_LOAD or paddr == NO_PADDR:  # vmalloc, modules: no physical address
            continue
        if vaddr >= START_KERNEL_MAP:
            image = image or KernelImage(vaddr, paddr, memsz)
        elif page_offset is None:
            page_offset = vaddr - paddr
    return image, page_offset


# --- the elfcorehdr ------------------------------------------------------------------------

def dump_ranges(memory: MemoryMap, crash_region: Range) -> list[Range]:
    """The memory a dump contains: all RAM except the crash kernel's own region."""
    return subtract(memory.ram(), [crash_region])


def backup_source(memory: MemoryMap) -> Range | None:
    """The RAM below 640 KiB that a pre-5.6 kernel may have used."""
    low = [r for r in (ram.intersect(Range(0, BACKUP_END)) for ram in memory.ram()) if r is not None]
    return Range(low[0].start, low[-1].end) if low else None


def build_elfcorehdr(sources: DumpSources, ranges: list[Range], *, machine: int = E.EM_X86_64,
                     backup: tuple[Range, int] | None = None, address: int = 0) -> bytes:
    """The ELF64 core header, to be loaded at ``address``. ``backup`` = (source range,
    address of its copy): the PT_LOAD for that range then reads from the copy, as the
    dump must show the memory as it was before the crash kernel ran. Our own notes follow
    the program headers, in the same segment, with a PT_NOTE pointing at them.

    Every PT_NOTE comes before the first PT_LOAD: the crash kernel's /proc/vmcore merges
    the notes into one PT_NOTE and then drops the first N-1 program headers, assuming
    they were the notes (fs/proc/vmcore.c, merge_note_headers_elf64); a PT_NOTE among
    the PT_LOADs cost a Xen dump its first PT_LOAD and left a stale PT_NOTE behind."""
    def saved_at(r: Range) -> int:
        """Where ``r`` is read from: its copy when it lies in the backed-up range (a Xen
        crash kernel's backup reaches the crashed kernel's notes and image)."""
        if backup is not None and backup[0].contains(r):
            return backup[1] + r.start - backup[0].start
        return r.start

    phdrs: list[E.Elf64_Phdr] = []
    own = sources.own_notes()
    for note in sources.cpu_notes:
        phdrs.append(E.Elf64_Phdr(p_type=E.PT_NOTE, p_offset=saved_at(note), p_paddr=note.start,
                                  p_filesz=note.size, p_memsz=note.size))
    for v in ((sources.vmcoreinfo,) if sources.vmcoreinfo is not None else ()) + tuple(sources.extra_notes):
        phdrs.append(E.Elf64_Phdr(p_type=E.PT_NOTE, p_offset=saved_at(v), p_paddr=v.start, p_filesz=v.size,
                                  p_memsz=v.size))
    loads: list[E.Elf64_Phdr] = []
    rwx = E.PF_R | E.PF_W | E.PF_X
    if sources.kernel_image is not None:
        k = sources.kernel_image
        at = saved_at(Range.sized(k.paddr, k.size))
        loads.append(E.Elf64_Phdr(p_type=E.PT_LOAD, p_flags=rwx, p_offset=at, p_vaddr=k.vaddr,
                                  p_paddr=k.paddr, p_filesz=k.size, p_memsz=k.size))
    for r in ranges:
        pieces = [(r, r.start)]
        if backup is not None and r.overlaps(backup[0]):
            src, copy = backup
            inside = r.intersect(src)
            assert inside is not None
            pieces = [(p, p.start) for p in r.minus(src)] + [(inside, copy + inside.start - src.start)]
        for piece, offset in sorted(pieces, key=lambda x: x[0].start):
            loads.append(E.Elf64_Phdr(p_type=E.PT_LOAD, p_flags=rwx, p_offset=offset,
                                      p_vaddr=sources.page_offset + piece.start, p_paddr=piece.start,
                                      p_filesz=piece.size, p_memsz=piece.size))
    if own:  # just past the program headers
        at = address + ctypes.sizeof(E.Elf64_Ehdr) + (len(phdrs) + 1 + len(loads)) * ctypes.sizeof(E.Elf64_Phdr)
        phdrs.append(E.Elf64_Phdr(p_type=E.PT_NOTE, p_offset=at, p_paddr=at, p_filesz=len(own), p_memsz=len(own)))
    phdrs += loads
    ehdr = E.Elf64_Ehdr(e_type=E.ET_CORE, e_machine=machine, e_version=E.EV_CURRENT,
                        e_phoff=ctypes.sizeof(E.Elf64_Ehdr), e_ehsize=ctypes.sizeof(E.Elf64_Ehdr),
                        e_phentsize=ctypes.sizeof(E.Elf64_Phdr), e_phnum=len(phdrs))
    ehdr.e_ident[:7] = list(E.ELFMAG) + [E.ELFCLASS64, E.ELFDATA2LSB, E.EV_CURRENT]
    return bytes(ehdr) + b"".join(bytes(p) for p in phdrs) + own


def elfcorehdr_size(sources: DumpSources, ranges: list[Range], backup: bool) -> int:
    """Size of the header :func:`build_elfcorehdr` will produce (known before placing it)."""
    n = len(sources.cpu_notes) + (sources.vmcoreinfo is not None) + (sources.kernel_image is not None)
    n += len(sources.extra_notes) + len(ranges) + (2 if backup else 0)
    own = sources.own_notes()
    n += 1 if own else 0
    return ctypes.sizeof(E.Elf64_Ehdr) + n * ctypes.sizeof(E.Elf64_Phdr) + len(own)


# --- the crash kernel's view of memory ---------------------------------------------------

def crash_memory_map(memory: MemoryMap, crash_region: Range, exclude: list[Range]) -> MemoryMap:
    """What the crash kernel may use: RAM below 1 MiB and the crash region, minus the
    elfcorehdr (and backup copy), plus every non-RAM region so ACPI tables stay found."""
    low_ram = [r for r in (x.intersect(Range(0, MiB)) for x in memory.ram()) if r]
    usable = subtract(low_ram + [crash_region], exclude)
    regions = [Region(r, MemType.RAM) for r in usable]
    regions += [reg for reg in memory if reg.type is not MemType.RAM]
    return MemoryMap(regions)


def memmap_cmdline(crash_map: MemoryMap) -> str:
    """The same map as memmap=exactmap options (kexec-tools' --pass-memmap-cmdline)."""
    words = ["memmap=exactmap"]
    for reg in crash_map:
        start_k, size_k = reg.range.start // 1024, reg.range.size // 1024
        if reg.type is MemType.RAM:
            if reg.range.size >= 100 * 1024:  # tiny RAM pieces only confuse the parser
                words.append(f"memmap={size_k}K@{start_k}K")
        elif reg.type in (MemType.ACPI, MemType.NVS):
            words.append(f"memmap={size_k}K#{start_k}K")
        elif reg.type is MemType.PRAM:
            words.append(f"memmap={size_k}K!{start_k}K")
    return " ".join(words)
