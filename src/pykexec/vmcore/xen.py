"""Dumps of a whole Xen machine: the hypervisor's console ring, and dom0's kernel log.

A crash dump taken under Xen (``/proc/vmcore`` in the crash kernel Xen started, or a
copy) is a dump of *machine* memory: its PT_LOADs' ``p_paddr`` are machine addresses.
Its notes are Xen's (per-pCPU "CORE" registers, "Xen" crash registers and, on CPU 0,
the crash-info note ``crash_xen_info_t``), ``VMCOREINFO_XEN``, and -- when the crash
kernel was loaded by pykexec -- dom0's own ``VMCOREINFO`` and a note with
``xen_phys_start``.

Hypervisor addresses (x86_64, Xen 4.4 and later, 4.17 checked):

* Xen's image (text, data, bss) is mapped at ``XEN_VIRT_START = 0xffff82d040000000``
  (1 GiB); ``maddr = va - XEN_VIRT_START + xen_phys_start``.  ``xen_phys_start`` is
  in the crash-info note (Xen 4.3+), or pykexec's load-time note;
* everything else -- the direct map at ``0xffff830000000000``, where the console ring
  lives once ``console_init_ring`` has moved it to the Xen heap -- is found by walking
  Xen's idle page tables (``SYMBOL(pgd_l4)`` of VMCOREINFO_XEN, reached through the
  image mapping; their entries hold machine addresses).  Without that symbol the
  direct map is taken as linear, ``maddr = va - DIRECTMAP_VIRT_START`` (no PDX
  compression, no BIGMEM).

Dom0 (a PV guest) addresses:

* dom0's page tables hold *machine* frame numbers, so a walk from its top-level table
  yields machine addresses directly;
* the top-level table is ``init_top_pgt``, whose *pseudo-physical* address is
  ``SYMBOL(init_top_pgt) - __START_KERNEL_map + NUMBER(phys_base)`` (dom0's VMCOREINFO);
* pseudo-physical frame -> machine frame goes through dom0's p2m, published to Xen as
  a 3-level list of machine frames from the crash-info note's
  ``dom0_pfn_to_mfn_frame_list_list`` (:class:`~pykexec.vmcore.xen_dom0.P2m`);
* dom0's VMCOREINFO is pykexec's load-time note or, for a crash kernel another loader
  (kexec-tools) put there, the one Linux keeps in dom0's memory, found through the p2m
  (:func:`~pykexec.vmcore.xen_dom0.find_vmcoreinfo`) and accepted when its own
  symbols lead to its OSRELEASE.

Console ring (``xen/drivers/char/console.c``): ``char *conring`` (initially the
16 KiB ``_conring`` in the image, later a Xen-heap buffer), ``uint32_t conring_size``
(a power of two), and free-running ``uint32_t`` indices ``conringp`` (producer) and
``conringc`` (where ``xl dmesg`` starts).  Their addresses come from an unstripped
``xen-syms`` (``--xen-syms``) or from a pykexec note recorded at load time from
dom0's ``/proc/xen/xensyms`` (:mod:`pykexec.xen_symbols`).

Both page-table walks are :class:`~pykexec.vmcore.paging.PageTableWalker`'s.
"""

from __future__ import annotations

import struct

from pykexec.layouts.elf import (
    EHDR64_FMT,
    EI_CLASS,
    EI_DATA,
    ELFCLASS64,
    ELFDATA2LSB,
    ELFMAG,
    NT_PYKEXEC_XEN_PHYS_START,
    NT_PYKEXEC_XEN_SYMBOLS,
    PYKEXEC_NOTE_NAME,
    SHDR64_FMT,
    SHT_SYMTAB,
)
from pykexec.layouts.x86_paging import PAGE_SHIFT, PAGE_SIZE
from pykexec.layouts.xen import (
    DIRECTMAP_VIRT_END,
    DIRECTMAP_VIRT_START,
    VMCOREINFO_XEN_NOTE_NAME,
    XEN_ELFNOTE_CRASH_INFO,
    XEN_NOTE_NAME,
    XEN_VIRT_START,
)
from pykexec.vmcore.errors import VmcoreError
from pykexec.vmcore.paging import PageTableWalker, pa_symbol, read_translated, top_table_symbol
from pykexec.vmcore.xen_dom0 import INVALID_P2M_ENTRY, P2m, find_vmcoreinfo
from pykexec.xen_symbols import CONRING_SYMBOLS, REQUIRED_CONRING_SYMBOLS, parse_symbol_lines

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from pykexec.layouts.elf import Note
    from pykexec.vmcore.dump_memory import DumpMemory
    from pykexec.vmcore.elfcore import Load
    from pykexec.vmcore.vmcoreinfo import VmcoreInfo

#: Xen's image mapping (Xen 4.4+, x86_64): 1 GiB from XEN_VIRT_START; linked at +2 MiB.
XEN_VIRT_SIZE = 1 << 30

#: Bigger rings are corruption (Xen caps conring_size far below this).
MAX_CONRING_SIZE = 1 << 28

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")

NO_DOM0_VMCOREINFO = ("this Xen dump has no dom0 VMCOREINFO: neither saved at load time (pykexec -p) "
                      "nor found in dom0's memory")


# -- what kind of dump ------------------------------------------------------------------

def is_xen_dump(notes: list[Note]) -> bool:
    """True for a dump of a Xen machine (it carries Xen's crash-info note)."""
    return any(n.name == XEN_NOTE_NAME and n.type == XEN_ELFNOTE_CRASH_INFO for n in notes)


class XenCrashFacts:
    """What a Xen dump's notes say about the hypervisor.

    ``version`` ("4.17"), ``xen_phys_start`` (crash-info note, else pykexec's load-time
    note; None if neither), ``dom0_p2m_root`` (MFN; None or 0 if absent), ``vmcoreinfo``
    (VMCOREINFO_XEN, or None), ``symbols`` (pykexec's load-time symbol record).
    """

    def __init__(self, notes: list[Note]) -> None:
        from pykexec.layouts.xen import parse_crash_xen_info
        from pykexec.vmcore.vmcoreinfo import VmcoreInfo

        self.version: str | None = None
        self.xen_phys_start: int | None = None
        self.dom0_p2m_root: int | None = None
        self.vmcoreinfo: VmcoreInfo | None = None
        self.symbols: dict[str, int] = {}
        at_load: int | None = None
        for note in notes:
            if note.name == XEN_NOTE_NAME and note.type == XEN_ELFNOTE_CRASH_INFO and self.version is None:
                try:
                    ci = parse_crash_xen_info(bytes(note.desc))
                except ValueError as err:
                    raise VmcoreError(str(err)) from None
                self.version = f"{ci.major}.{ci.minor}"
                self.xen_phys_start = ci.xen_phys_start
                self.dom0_p2m_root = ci.dom0_p2m_root
            elif note.name == PYKEXEC_NOTE_NAME and note.type == NT_PYKEXEC_XEN_PHYS_START \
                    and len(note.desc) >= 8:
                at_load = _U64.unpack_from(note.desc)[0]
            elif note.name == PYKEXEC_NOTE_NAME and note.type == NT_PYKEXEC_XEN_SYMBOLS:
                self.symbols.update(parse_symbol_lines(bytes(note.desc)))
            elif note.name == VMCOREINFO_XEN_NOTE_NAME and note.type == 0 and self.vmcoreinfo is None:
                self.vmcoreinfo = VmcoreInfo(bytes(note.desc))
        if not self.xen_phys_start and at_load:
            self.xen_phys_start = at_load


# -- xen-syms ---------------------------------------------------------------------------

def read_elf_symbols(path: str, names: tuple[str, ...]) -> dict[str, int]:
    """Values of the symbols ``names`` in an unstripped ELF64 (``xen-syms``), from its
    ``.symtab`` (local symbols included: the console-ring variables are static).

    Raises :class:`VmcoreError` for a file that is not an ELF64 with a symbol table.
    """
    from pykexec.errors import read_input

    data = read_input(path, "xen-syms", VmcoreError)
    if data[:4] != ELFMAG or len(data) < EHDR64_FMT.size or data[EI_CLASS] != ELFCLASS64 \
            or data[EI_DATA] != ELFDATA2LSB:
        raise VmcoreError(f"{path}: not an ELF64 little-endian file (expected an unstripped xen-syms)")
    ehdr = EHDR64_FMT.unpack_from(data)
    shoff, shentsize, shnum = ehdr[6], ehdr[11], ehdr[12]
    if shentsize != SHDR64_FMT.size or shoff + shnum * SHDR64_FMT.size > len(data):
        raise VmcoreError(f"{path}: truncated or corrupt section headers")
    sections = [SHDR64_FMT.unpack_from(data, shoff + i * SHDR64_FMT.size) for i in range(shnum)]
    want = set(names)
    out: dict[str, int] = {}
    for sh in sections:
        if sh[1] != SHT_SYMTAB:
            continue
        off, size, link, entsize = sh[4], sh[5], sh[6], sh[9] or 24
        if link >= len(sections) or off + size > len(data):
            raise VmcoreError(f"{path}: corrupt symbol table")
        str_off, str_size = sections[link][4], sections[link][5]
        strtab = data[str_off:str_off + str_size]
        for pos in range(off, off + size - entsize + 1, entsize):  # Elf64_Sym: st_name +0, st_value +8
            st_name, = _U32.unpack_from(data, pos)
            end = strtab.find(b"\0", st_name)
            name = strtab[st_name:end].decode("ascii", "replace")
            if name in want and name not in out:
                out[name] = _U64.unpack_from(data, pos + 8)[0]
        break
    else:
        raise VmcoreError(f"{path}: no symbol table (stripped?): use the unstripped xen-syms "
                          "(Debian: xen-hypervisor-4.17-amd64-dbg)")
    return out


# -- machine memory -----------------------------------------------------------------------

def _machine_reader(core: DumpMemory) -> Callable[[int, int], bytes]:
    """``read(maddr, size) -> bytes`` of a core's physical (= machine) memory."""
    read = core.read

    def read_machine(maddr: int, size: int) -> bytes:
        return bytes(read(maddr, size, physical=True))

    return read_machine


class XenMemory:
    """The hypervisor's virtual address space in a Xen dump (x86_64)."""

    def __init__(self, core: DumpMemory, facts: XenCrashFacts | None = None) -> None:
        self.facts = facts or XenCrashFacts(core.notes)
        self.path = core.path
        self._read_machine = _machine_reader(core)
        if not self.facts.xen_phys_start:
            raise VmcoreError(f"{self.path}: no xen_phys_start (neither in Xen's crash-info note nor "
                              "recorded at load time): cannot place Xen's image")
        self._walker: PageTableWalker | None = None
        info = self.facts.vmcoreinfo
        if info is not None and info.has_symbol("pgd_l4"):
            pgd = info.symbol("pgd_l4")
            if XEN_VIRT_START <= pgd < XEN_VIRT_START + XEN_VIRT_SIZE:
                self._walker = PageTableWalker(self._read_machine, self._image_maddr(pgd), space="Xen")

    def _image_maddr(self, va: int) -> int:
        return va - XEN_VIRT_START + int(self.facts.xen_phys_start or 0)

    def translate(self, va: int) -> tuple[int, int]:
        """(machine address, bytes left in the mapping) of a Xen virtual address."""
        if XEN_VIRT_START <= va < XEN_VIRT_START + XEN_VIRT_SIZE:
            return self._image_maddr(va), XEN_VIRT_START + XEN_VIRT_SIZE - va
        if self._walker is not None:
            return self._walker.translate(va)
        if DIRECTMAP_VIRT_START <= va < DIRECTMAP_VIRT_END:
            return va - DIRECTMAP_VIRT_START, DIRECTMAP_VIRT_END - va
        raise VmcoreError(f"Xen virtual address {va:#x} is neither in Xen's image nor in its direct map "
                          "(and VMCOREINFO_XEN has no SYMBOL(pgd_l4) to walk)")

    def read(self, va: int, size: int) -> bytes:
        try:
            return read_translated(self.translate, self._read_machine, va, size)
        except VmcoreError as err:
            raise VmcoreError(f"{self.path}: {err}") from None

    def u32(self, va: int) -> int:
        return int(_U32.unpack(self.read(va, 4))[0])

    def u64(self, va: int) -> int:
        return int(_U64.unpack(self.read(va, 8))[0])


def resolve_conring_symbols(facts: XenCrashFacts, xen_syms: str | None, path: str) -> dict[str, int]:
    """The console-ring symbols, from ``xen_syms`` if given, else from the load-time note.

    A ``xen_syms`` whose ``domain_list`` differs from VMCOREINFO_XEN's is refused: it
    belongs to another build of Xen.
    """
    if xen_syms is not None:
        syms = read_elf_symbols(xen_syms, CONRING_SYMBOLS + ("domain_list",))
        info = facts.vmcoreinfo
        if info is not None and info.has_symbol("domain_list") and "domain_list" in syms \
                and syms["domain_list"] != info.symbol("domain_list"):
            raise VmcoreError(f"{xen_syms} is not the dumped Xen's: its domain_list is at "
                              f"{syms['domain_list']:#x}, VMCOREINFO_XEN says {info.symbol('domain_list'):#x}")
        source = xen_syms
    elif facts.symbols:
        syms, source = facts.symbols, "the load-time symbol note"
    else:
        raise VmcoreError(f"{path}: Xen's console-ring symbols (conring, conring_size, conringp) are not "
                          "in the dump (not recorded at load time): pass --xen-syms FILE, the unstripped "
                          "xen-syms of this Xen (Debian: xen-hypervisor-4.17-amd64-dbg)")
    missing = [n for n in REQUIRED_CONRING_SYMBOLS if n not in syms]
    if missing:
        raise VmcoreError(f"{source} has no symbol {missing[0]}: cannot find Xen's console ring")
    return syms


def xen_console_ring(core: DumpMemory, xen_syms: str | None = None,
                     symbols: dict[str, int] | None = None) -> bytes:
    """The hypervisor's console ring (what ``xl dmesg`` would have printed) in a Xen dump.

    From ``conringc`` (or the oldest byte still in the ring) to ``conringp``, NUL bytes
    dropped.  The symbols come from ``xen_syms`` (a file), else ``symbols``, else the
    dump's load-time symbol note.  Raises :class:`VmcoreError` (one line) when the dump
    is not a Xen dump or what the ring needs is missing.
    """
    path = core.path
    notes = core.notes
    if not is_xen_dump(notes):
        raise VmcoreError(f"{path}: not a dump of a Xen machine (no Xen crash-info note)")
    facts = XenCrashFacts(notes)
    if symbols is not None:
        facts.symbols = dict(symbols)
    syms = resolve_conring_symbols(facts, xen_syms, path)
    mem = XenMemory(core, facts)
    ring = mem.u64(syms["conring"])
    size = mem.u32(syms["conring_size"])
    prod = mem.u32(syms["conringp"])
    if size == 0 or size & (size - 1) or size > MAX_CONRING_SIZE:
        raise VmcoreError(f"{path}: implausible conring_size {size} (wrong xen-syms?)")
    cons = mem.u32(syms["conringc"]) if "conringc" in syms else 0
    used = (prod - cons) & 0xFFFFFFFF
    if "conringc" not in syms or used > size:
        used = min(prod, size)
    start = (prod - used) & 0xFFFFFFFF
    data = mem.read(ring, size)
    first = start & (size - 1)
    text = data[first:first + used]
    if len(text) < used:
        text += data[:used - len(text)]
    return text.replace(b"\0", b"")


# -- dom0 ----------------------------------------------------------------------------------

class Dom0Memory:
    """Dom0's kernel memory in a Xen dump, as :class:`~pykexec.vmcore.dump_memory.DumpMemory`.

    ``read(va, size)`` translates a dom0 kernel virtual address through dom0's own
    page tables (entries are machine frames: PV); ``read(pa, size, physical=True)``
    takes a dom0 *pseudo-physical* address through the p2m.  The notes, PT_LOADs and
    size are the whole dump's.
    """

    def __init__(self, core: DumpMemory) -> None:
        self.path = core.path
        self.format = core.format
        self.notes = core.notes
        self.vmcoreinfo: VmcoreInfo | None = core.vmcoreinfo
        self.machine = core.machine
        self.loads: Sequence[Load] = core.loads
        self.memory_bytes = core.memory_bytes
        self._read_machine = _machine_reader(core)
        facts = XenCrashFacts(self.notes)
        if self.vmcoreinfo is None and not facts.dom0_p2m_root:
            raise VmcoreError(NO_DOM0_VMCOREINFO)
        if not facts.dom0_p2m_root:
            raise VmcoreError(f"{self.path}: Xen's crash-info note has no dom0 p2m root "
                              "(dom0 is not PV, or Xen is too old): cannot translate dom0 addresses")
        self.p2m_root = facts.dom0_p2m_root
        self._p2m = P2m(self._read_machine, self.p2m_root)
        #: Where dom0's VMCOREINFO came from: "note" or "dom0 memory".
        self.vmcoreinfo_from = "note"
        if self.vmcoreinfo is None:
            self.vmcoreinfo = find_vmcoreinfo(self._read_machine, self._p2m, self._leads_to_itself)
            self.vmcoreinfo_from = "dom0 memory"
            if self.vmcoreinfo is None:
                raise VmcoreError(NO_DOM0_VMCOREINFO)
        self._walker = self._dom0_walker(self.vmcoreinfo)

    @property
    def p2m(self) -> P2m:
        return self._p2m

    @property
    def walker(self) -> PageTableWalker:
        """Dom0's page tables (their entries, and so their reads, are machine addresses)."""
        return self._walker

    def _dom0_walker(self, info: VmcoreInfo) -> PageTableWalker:
        name = top_table_symbol(info)
        if name is None:
            raise VmcoreError(f"{self.path}: dom0's VMCOREINFO lacks SYMBOL(init_top_pgt): "
                              "cannot walk dom0's page tables")
        phys_base = info.number("phys_base") if info.has_number("phys_base") else 0
        root_pfn = pa_symbol(info.symbol(name), phys_base) >> PAGE_SHIFT
        return PageTableWalker(self._read_machine, self.pfn_to_mfn(root_pfn) << PAGE_SHIFT, space="dom0")

    def _leads_to_itself(self, info: VmcoreInfo) -> bool:
        """A VMCOREINFO found in memory is dom0's own when its page tables and
        ``init_uts_ns`` give back its OSRELEASE (not a stale copy of another's)."""
        from pykexec.layouts.kdump import NewUtsname  # ctypes: not on every Xen dump's path

        release = (info.osrelease or "").encode()
        try:
            uts = info.symbol("init_uts_ns") + info.offset("uts_namespace.name")
            got = self._dom0_walker(info).read(uts + NewUtsname.release.offset, len(release) + 1)
        except VmcoreError:
            return False
        return bool(release) and got == release + b"\0"

    def require_vmcoreinfo(self) -> VmcoreInfo:
        assert self.vmcoreinfo is not None
        return self.vmcoreinfo

    def pfn_to_mfn(self, pfn: int) -> int:
        """Dom0 pseudo-physical frame -> machine frame, through the 3-level p2m frame list."""
        return self._p2m.pfn_to_mfn(pfn)

    def translate(self, va: int) -> tuple[int, int]:
        return self._walker.translate(va)

    def read(self, addr: int, size: int, *, physical: bool = False) -> bytes:
        if size < 0 or addr < 0:
            raise VmcoreError(f"bad read of {size} bytes at {addr:#x}")
        try:
            if physical:
                def translate(pa: int) -> tuple[int, int]:
                    off = pa & (PAGE_SIZE - 1)
                    return (self.pfn_to_mfn(pa >> PAGE_SHIFT) << PAGE_SHIFT) + off, PAGE_SIZE - off

                return read_translated(translate, self._read_machine, addr, size)
            return self._walker.read(addr, size)
        except VmcoreError as err:
            raise VmcoreError(f"{self.path}: {err}") from None

    def u64(self, addr: int, *, physical: bool = False) -> int:
        return int(_U64.unpack(self.read(addr, 8, physical=physical))[0])

    def u32(self, addr: int, *, physical: bool = False) -> int:
        return int(_U32.unpack(self.read(addr, 4, physical=physical))[0])


def dom0_memory(core: DumpMemory) -> DumpMemory:
    """Dom0's memory of a Xen dump (see :class:`Dom0Memory`); one-line errors."""
    return Dom0Memory(core)


__all__ = ["Dom0Memory", "INVALID_P2M_ENTRY", "NO_DOM0_VMCOREINFO", "XenCrashFacts", "XenMemory", "dom0_memory", "is_xen_dump",
           "read_elf_symbols", "resolve_conring_symbols", "xen_console_ring"]
