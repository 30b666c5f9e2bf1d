"""Reading dumps of a Xen machine, on synthetic machine memory.

:func:`xen_machine` builds what Xen's crash kernel sees: one PT_LOAD of *machine*
memory, Xen's notes (crash info with ``xen_phys_start`` and dom0's p2m root,
VMCOREINFO_XEN), and optionally dom0's VMCOREINFO and pykexec's symbol note.
Inside the machine:

* Xen's image at ``xen_phys_start``, holding the console-ring variables
  (``conring`` points into the direct map, as after ``console_init_ring``);
* a PV dom0 whose kernel memory (a lockless printk ring from vmcore_synth) sits in
  machine frames scattered at random, described by a 3-level p2m frame list and by
  4-level page tables whose entries are machine frames.

dom0's log must read back exactly as the same memory written as a plain Linux core
(the printk tests compare that one with vmcore-dmesg).
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest
from support.vmcore_synth import (
    BUF_PADDR,
    DIRECT_MAP,
    KERNEL_PADDR,
    KERNEL_VADDR,
    Memory,
    base_vmcoreinfo,
    lockless_log,
    make_msgs,
    write_core,
)

from pykexec import xen_symbols
from pykexec.layouts.elf import (
    EHDR64_FMT,
    NT_PYKEXEC_XEN_SYMBOLS,
    PHDR64_FMT,
    PT_LOAD,
    PT_NOTE,
    PYKEXEC_NOTE_NAME,
    pack_note,
)
from pykexec.layouts.x86_paging import START_KERNEL_MAP
from pykexec.layouts.xen import XEN_ELFNOTE_CRASH_INFO, XEN_VIRT_START
from pykexec.vmcore import cli
from pykexec.vmcore import xen as X
from pykexec.vmcore.elfcore import ElfCore
from pykexec.vmcore.errors import VmcoreError
from pykexec.vmcore.printk import format_log, read_log

PAGE = 4096
MACHINE_FRAMES = 1024                  # 4 MiB of machine memory
XEN_PHYS_START = 0x200000              # machine address of Xen's image mapping base
IMG = XEN_VIRT_START                   # image VA -> machine XEN_PHYS_START
CONRING_VA, CONRING_SIZE_VA, CONRINGP_VA, CONRINGC_VA = IMG + 0x100, IMG + 0x108, IMG + 0x200, IMG + 0x204
DOMAIN_LIST_VA = IMG + 0x300
RING_MFN = 0x300                       # the Xen-heap console ring (direct map)
RING_SIZE = 1 << 12
PGD_L4_VA = IMG + 0x1000               # Xen's idle page tables (for the walked case)
XEN_PT_FRAMES = (0x201, 0x202, 0x203)  # machine frames of Xen's L3/L2/L1 tables
P2M_ROOT, P2M_MID = 0x380, 0x381       # frame-list-list and its one mid-level page
DOM0_POOL = range(0x100, 0x1F0)        # machine frames dom0's pages are scattered over
DOM0_PT_POOL = range(0x3A0, 0x3F0)     # machine frames for dom0's page tables and p2m leaves


class Machine:
    def __init__(self) -> None:
        self.mem = bytearray(MACHINE_FRAMES * PAGE)
        self._pt_frames = iter(DOM0_PT_POOL)

    def u64(self, maddr: int, value: int) -> None:
        struct.pack_into("<Q", self.mem, maddr, value)

    def get64(self, maddr: int) -> int:
        return struct.unpack_from("<Q", self.mem, maddr)[0]

    def new_frame(self) -> int:
        return next(self._pt_frames)

    def map4k(self, root_mfn: int, va: int, mfn: int) -> None:
        """Map ``va`` -> ``mfn`` in the 4-level tables rooted at ``root_mfn`` (entries are MFNs)."""
        table = root_mfn
        for shift in (39, 30, 21):
            slot = table * PAGE + ((va >> shift) & 511) * 8
            entry = self.get64(slot)
            if not entry & 1:
                entry = self.new_frame() * PAGE | 0x67
                self.u64(slot, entry)
            table = (entry & 0x000FFFFFFFFFF000) // PAGE
        self.u64(table * PAGE + ((va >> 12) & 511) * 8, mfn * PAGE | 0x63)


def crash_info(p2m_root: int, xen_phys_start: int = XEN_PHYS_START) -> bytes:
    return struct.pack("<10Q", 4, 17, 0, 0, 0, 0, 0, 0, xen_phys_start, p2m_root)


def write_machine_core(path: Path, m: Machine, notes: bytes) -> Path:
    """An ELF core of machine memory as Xen's crash kernel shows it (p_paddr = maddr)."""
    off = EHDR64_FMT.size + 2 * PHDR64_FMT.size
    phdrs = PHDR64_FMT.pack(PT_NOTE, 0, off, 0, 0, len(notes), len(notes), 0)
    phdrs += PHDR64_FMT.pack(PT_LOAD, 7, off + len(notes), 0, 0, len(m.mem), len(m.mem), 0)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = EHDR64_FMT.pack(ident, 4, 62, 1, 0, 64, 0, 0, 64, 56, 2, 0, 0, 0)
    path.write_bytes(ehdr + phdrs + notes + bytes(m.mem))
    return path


# -- the hypervisor's console ring ---------------------------------------------------------

def xen_ring(m: Machine, text: bytes, *, prod: int, cons: int = 0) -> None:
    """Xen's console ring after ``conringp`` = ``prod`` bytes: ``text`` is the last ones."""
    img = XEN_PHYS_START
    m.u64(img + 0x100, X.DIRECTMAP_VIRT_START + RING_MFN * PAGE)   # char *conring
    struct.pack_into("<I", m.mem, img + 0x108, RING_SIZE)           # conring_size
    struct.pack_into("<II", m.mem, img + 0x200, prod, cons)         # conringp, conringc
    for i, byte in enumerate(text[-RING_SIZE:]):
        m.mem[RING_MFN * PAGE + (prod - len(text[-RING_SIZE:]) + i) % RING_SIZE] = byte


def xen_syms_file(path: Path, symbols: dict[str, int]) -> Path:
    """A minimal unstripped ELF64: section headers null, .symtab, .strtab."""
    strtab = b"\0"
    syms = bytes(24)
    for name, value in symbols.items():
        syms += struct.pack("<IBBHQQ", len(strtab), 1, 0, 6, value, 4)  # local object
        strtab += name.encode() + b"\0"
    sym_off = 64
    str_off = sym_off + len(syms)
    sh_off = (str_off + len(strtab) + 7) & ~7
    sh = bytes(64)
    sh += struct.pack("<IIQQQQIIQQ", 0, 2, 0, 0, sym_off, len(syms), 2, 1, 8, 24)
    sh += struct.pack("<IIQQQQIIQQ", 0, 3, 0, 0, str_off, len(strtab), 0, 0, 1, 0)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = EHDR64_FMT.pack(ident, 2, 62, 1, 0, 0, sh_off, 0, 64, 0, 0, 64, 3, 0)
    body = ehdr + syms + strtab
    path.write_bytes(body + bytes(sh_off - len(body)) + sh)
    return path


RING_SYMBOLS = {"conring": CONRING_VA, "conring_size": CONRING_SIZE_VA, "conringp": CONRINGP_VA,
                "conringc": CONRINGC_VA, "domain_list": DOMAIN_LIST_VA}
VMCOREINFO_XEN = f"PAGESIZE=4096\nSYMBOL(domain_list)={DOMAIN_LIST_VA:x}\n".encode()


def xen_notes(*, p2m_root: int = 0, vmcoreinfo_xen: bytes = VMCOREINFO_XEN, extra: bytes = b"") -> bytes:
    return (pack_note(b"CORE", 1, bytes(336)) + pack_note(b"Xen", 0x1000002, bytes(32))
            + pack_note(b"Xen", XEN_ELFNOTE_CRASH_INFO, crash_info(p2m_root))
            + pack_note(b"VMCOREINFO_XEN", 0, vmcoreinfo_xen) + extra)


def ring_text(n: int) -> bytes:
    return b"".join(f"(XEN) line {i:04d} of the hypervisor's log\n".encode() for i in range(n))


@pytest.mark.parametrize("lines,cons", [(10, 0), (300, 0), (300, 7)])
def test_console_ring_with_xen_syms(tmp_path: Path, lines: int, cons: int) -> None:
    """Not wrapped, wrapped (oldest byte = conringp - size), and conringc past the start."""
    m = Machine()
    text = ring_text(lines)
    xen_ring(m, text, prod=len(text), cons=cons)
    core = write_machine_core(tmp_path / "vmcore", m, xen_notes())
    syms = xen_syms_file(tmp_path / "xen-syms", RING_SYMBOLS)
    with ElfCore(core) as c:
        got = X.xen_console_ring(c, str(syms))
    want = text[max(cons, len(text) - RING_SIZE):]
    assert got == want
    assert len(text) <= RING_SIZE or len(got) == RING_SIZE


def test_console_ring_through_xen_page_tables(tmp_path: Path) -> None:
    """With SYMBOL(pgd_l4) the direct map is walked (here mapped elsewhere than 1:1)."""
    m = Machine()
    text = ring_text(20)
    xen_ring(m, text, prod=len(text))
    moved = 0x3F8
    m.mem[moved * PAGE:(moved + 1) * PAGE] = m.mem[RING_MFN * PAGE:(RING_MFN + 1) * PAGE]
    m.mem[RING_MFN * PAGE:(RING_MFN + 1) * PAGE] = bytes(PAGE)
    pgd = XEN_PHYS_START + (PGD_L4_VA - IMG)
    va = X.DIRECTMAP_VIRT_START + RING_MFN * PAGE
    l3, l2, l1 = XEN_PT_FRAMES
    m.u64(pgd + ((va >> 39) & 511) * 8, l3 * PAGE | 0x63)
    m.u64(l3 * PAGE + ((va >> 30) & 511) * 8, l2 * PAGE | 0x63)
    m.u64(l2 * PAGE + ((va >> 21) & 511) * 8, l1 * PAGE | 0x63)
    m.u64(l1 * PAGE + ((va >> 12) & 511) * 8, moved * PAGE | 0x63)
    info = VMCOREINFO_XEN + f"SYMBOL(pgd_l4)={PGD_L4_VA:x}\n".encode()
    core = write_machine_core(tmp_path / "vmcore", m, xen_notes(vmcoreinfo_xen=info))
    with ElfCore(core) as c:
        assert X.xen_console_ring(c, str(xen_syms_file(tmp_path / "s", RING_SYMBOLS))) == text


def test_console_ring_from_load_time_note_and_cli(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    m = Machine()
    text = ring_text(5)
    xen_ring(m, text, prod=len(text))
    xensyms = "".join(f"{v:016x} d drivers/char/console.c#{k}\n" for k, v in RING_SYMBOLS.items())
    path = tmp_path / "xensyms"
    path.write_text("ffff82d040200000 T _stext\n" + xensyms)
    desc = xen_symbols.xensyms_note_desc(str(path))
    assert desc is not None
    assert xen_symbols.parse_symbol_lines(desc) == {k: v for k, v in RING_SYMBOLS.items()
                                                    if k in xen_symbols.CONRING_SYMBOLS}
    note = pack_note(PYKEXEC_NOTE_NAME, NT_PYKEXEC_XEN_SYMBOLS, desc)
    core = write_machine_core(tmp_path / "vmcore", m, xen_notes(extra=note))
    assert cli.main(["dmesg", "--xen", str(core)]) == 0
    assert capfdbinary.readouterr().out == text


def test_console_ring_errors(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    m = Machine()
    xen_ring(m, ring_text(3), prod=100)
    core = write_machine_core(tmp_path / "vmcore", m, xen_notes())
    assert cli.main(["dmesg", "--xen", str(core)]) == 1
    err = capfdbinary.readouterr().err.decode()
    assert err.count("\n") == 1 and "pass --xen-syms FILE" in err and "conring" in err
    other = dict(RING_SYMBOLS, domain_list=DOMAIN_LIST_VA + 64)
    assert cli.main(["dmesg", "--xen-syms", str(xen_syms_file(tmp_path / "o", other)), str(core)]) == 1
    err = capfdbinary.readouterr().err.decode()
    assert err.count("\n") == 1 and "is not the dumped Xen's" in err
    stripped = tmp_path / "stripped"
    stripped.write_bytes(xen_syms_file(tmp_path / "x", {}).read_bytes())
    assert cli.main(["dmesg", "--xen-syms", str(tmp_path / "nonexistent"), str(core)]) == 1
    assert "does not exist" in capfdbinary.readouterr().err.decode()
    assert cli.main(["dmesg", "--xen-syms", str(stripped), str(core)]) == 1
    assert "has no symbol conring" in capfdbinary.readouterr().err.decode()
    assert cli.main(["dmesg", "--xen", "-x", str(core)]) == 2
    assert "--xen" in capfdbinary.readouterr().err.decode()
    linux = write_core(tmp_path / "linux", Memory.standard(1 << 16), "\n".join(base_vmcoreinfo()))
    assert cli.main(["dmesg", "--xen", str(linux)]) == 1
    assert "not a dump of a Xen machine" in capfdbinary.readouterr().err.decode()


def test_no_xen_phys_start(tmp_path: Path) -> None:
    m = Machine()
    notes = pack_note(b"Xen", XEN_ELFNOTE_CRASH_INFO, crash_info(0, xen_phys_start=0))
    core = write_machine_core(tmp_path / "vmcore", m, notes)
    with ElfCore(core) as c, pytest.raises(VmcoreError, match="no xen_phys_start"):
        X.xen_console_ring(c, symbols={k: v for k, v in RING_SYMBOLS.items()})


# -- dom0's log ------------------------------------------------------------------------------

def dom0_machine(tmp_path: Path, *, with_vmcoreinfo: bool = True, p2m_root: int = P2M_ROOT,
                 n_msgs: int = 40, in_memory: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """(Xen machine dump, the same dom0 memory as a plain Linux core).

    ``in_memory``: OSRELEASEs of VMCOREINFO notes left in dom0's memory, each at the
    start of a page, as Linux's ``vmcoreinfo_note`` (the real one is 6.1.0-synthetic).
    """
    dom0 = Memory.standard(1 << 16)
    info_lines, _ring = lockless_log(dom0, make_msgs(n_msgs), count_bits=5, size_bits=11)
    pgd_va = dom0.alloc(PAGE, 0, align=PAGE)  # init_top_pgt, in the kernel image
    uts_va = dom0.alloc(6 * 65, 0)            # init_uts_ns.name (a struct new_utsname at +0)
    dom0.write(uts_va + 130, b"6.1.0-synthetic\0")
    vmcoreinfo = "\n".join(base_vmcoreinfo() + info_lines
                           + [f"SYMBOL(init_top_pgt)={pgd_va:x}", "NUMBER(phys_base)=0",
                              f"SYMBOL(init_uts_ns)={uts_va:x}", "OFFSET(uts_namespace.name)=0"]) + "\n"
    for release in in_memory:
        text = vmcoreinfo.replace("OSRELEASE=6.1.0-synthetic", f"OSRELEASE={release}")
        dom0.write(dom0.alloc(PAGE, 1, align=PAGE), pack_note(b"VMCOREINFO", 0, text.encode()))
    plain = write_core(tmp_path / "plain.elf", dom0, vmcoreinfo)

    m = Machine()
    pool = list(DOM0_POOL)
    random.Random(5).shuffle(pool)
    frames = iter(pool)
    p2m: dict[int, int] = {}  # dom0 pfn -> mfn
    for region in dom0.regions:
        for off in range(0, len(region.data), PAGE):
            pfn = (region.paddr + off) // PAGE
            mfn = p2m[pfn] = next(frames)
            m.mem[mfn * PAGE:(mfn + 1) * PAGE] = region.data[off:off + PAGE]
    # p2m: frame-list-list -> one mid page (pfn >> 18 == 0) -> leaf pages of 512 MFNs.
    m.mem[P2M_MID * PAGE:(P2M_MID + 1) * PAGE] = b"\xff" * PAGE
    m.u64(P2M_ROOT * PAGE, P2M_MID)
    for pfn, mfn in p2m.items():
        slot = P2M_MID * PAGE + (pfn >> 9) * 8
        leaf = m.get64(slot)
        if leaf == X.INVALID_P2M_ENTRY:
            leaf = m.new_frame()
            m.mem[leaf * PAGE:(leaf + 1) * PAGE] = b"\xff" * PAGE
            m.u64(slot, leaf)
        m.u64(leaf * PAGE + (pfn & 511) * 8, mfn | (1 << 62 if pfn & 1 else 0))  # flags are masked
    # dom0's page tables: machine frames in every entry.
    root = p2m[(pgd_va - START_KERNEL_MAP) // PAGE]
    for region in dom0.regions:
        for off in range(0, len(region.data), PAGE):
            m.map4k(root, region.vaddr + off, p2m[(region.paddr + off) // PAGE])
    extra = pack_note(b"VMCOREINFO", 0, vmcoreinfo.encode()) if with_vmcoreinfo else b""
    core = write_machine_core(tmp_path / "xen.elf", m, xen_notes(p2m_root=p2m_root, extra=extra))
    return core, plain


def _ours(path: Path) -> bytes:
    return cli.dmesg(cli.DmesgOptions(str(path)))


def test_dom0_log_through_p2m_and_pv_page_tables(tmp_path: Path) -> None:
    core, plain = dom0_machine(tmp_path)
    want = _ours(plain)
    assert want.count(b"\n") > 10
    assert _ours(core) == want
    with ElfCore(core) as c:
        dom0 = X.Dom0Memory(c)
        # Pseudo-physical reads go through the p2m too.
        assert dom0.read(KERNEL_PADDR, 64, physical=True) == dom0.read(KERNEL_VADDR, 64)
        assert dom0.read(BUF_PADDR + 8, 16, physical=True) == dom0.read(DIRECT_MAP + BUF_PADDR + 8, 16)
        assert format_log(read_log(dom0)) == want


def test_dom0_log_cli_options(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    core, plain = dom0_machine(tmp_path)
    for opts in (["-x"], ["-l", "err,warn"], ["-T"], ["--show-caller"]):
        assert cli.main(["dmesg", *opts, str(plain)]) == 0
        want = capfdbinary.readouterr().out
        assert cli.main(["dmesg", *opts, str(core)]) == 0
        assert capfdbinary.readouterr().out == want, opts


def test_dom0_log_without_vmcoreinfo(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    core, _ = dom0_machine(tmp_path, with_vmcoreinfo=False)
    assert cli.main(["dmesg", str(core)]) == 1
    assert capfdbinary.readouterr().err.decode() == f"pykexec: {X.NO_DOM0_VMCOREINFO}\n"


def test_dom0_vmcoreinfo_found_in_dom0_memory(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    """No dom0 VMCOREINFO note (a kexec-tools load): the copy Linux keeps in dom0's memory
    is found through the p2m; a stale one (another release) at a lower page is passed over."""
    core, plain = dom0_machine(tmp_path, with_vmcoreinfo=False, in_memory=("5.10.0-stale", "6.1.0-synthetic"))
    assert _ours(core) == _ours(plain)
    with ElfCore(core) as c:
        dom0 = X.Dom0Memory(c)
        assert dom0.vmcoreinfo_from == "dom0 memory" and dom0.vmcoreinfo is not None
        assert dom0.vmcoreinfo.osrelease == "6.1.0-synthetic"
    assert cli.main(["info", "--json", str(core)]) == 0
    described = json.loads(capfdbinary.readouterr().out)
    assert described["osrelease"] == "6.1.0-synthetic"
    assert described["xen"]["dom0_vmcoreinfo_from"] == "dom0 memory"
    core, _ = dom0_machine(tmp_path, with_vmcoreinfo=False, in_memory=("5.10.0-stale",))
    assert cli.main(["dmesg", str(core)]) == 1
    assert capfdbinary.readouterr().err.decode() == f"pykexec: {X.NO_DOM0_VMCOREINFO}\n"


def test_dom0_log_without_p2m_root(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    core, _ = dom0_machine(tmp_path, p2m_root=0)
    assert cli.main(["dmesg", str(core)]) == 1
    err = capfdbinary.readouterr().err.decode()
    assert err.count("\n") == 1 and "no dom0 p2m root" in err


def test_dom0_log_with_broken_p2m(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    """A p2m root outside the dump, and an invalid entry: one line each, no traceback."""
    core, _ = dom0_machine(tmp_path, p2m_root=0x7FFFF)
    assert cli.main(["dmesg", str(core)]) == 1
    err = capfdbinary.readouterr().err.decode()
    assert err.count("\n") == 1 and "p2m frame list" in err
    core, _ = dom0_machine(tmp_path, p2m_root=0x3F9)  # an all-zero page: mid MFN 0, leaf MFN 0
    assert cli.main(["dmesg", str(core)]) == 1
    assert capfdbinary.readouterr().err.decode().count("\n") == 1


def test_parse_xensyms_prefers_first_and_strips_file() -> None:
    lines = [b"ffff82d040000010 t conring\n", b"ffff82d040000020 d x.c#conring\n", b"garbage\n",
             b"zz d conring_size\n", b"ffff82d040000030 b console.c#conringp\n"]
    assert xen_symbols.parse_xensyms(lines) == {"conring": 0xFFFF82D040000010, "conringp": 0xFFFF82D040000030}
    assert xen_symbols.xensyms_note_desc("/nonexistent/xensyms") is None
