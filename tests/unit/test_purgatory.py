"""Tests for the x86_64 purgatory: layout, reproducible build, execution.

Execution tests run the committed ``purgatory.bin`` in unicorn (x86-64),
starting it the way the kernel's kexec does: long mode, identity-mapped
paging, with a stack and GDT that the purgatory must not rely on.
"""

from __future__ import annotations

import ctypes
import hashlib
import random
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_HOOK_INSN, UC_MODE_64, Uc, UcError
from unicorn import x86_const as X

from pykexec.layouts.purgatory import (
    PurgatoryHeader,
    PurgatoryParamsBlock,
    PurgatoryRegion,
)
from pykexec.purgatory import (
    MAX_REGIONS,
    Mode,
    Purgatory,
    PurgatoryError,
    PurgatoryParams,
    Region,
)
from pykexec.purgatory import build as purgbuild

REPO = Path(__file__).resolve().parents[2]
BUILD_PY = REPO / "src" / "pykexec" / "purgatory" / "build.py"
GCC_MISSING = (
    "gcc not found: the purgatory tests need gcc and binutils (ld, objcopy) "
    "to rebuild the blob; install them (Debian: apt-get install gcc binutils)"
)


def region_for(mem: int, buf: bytes, memsz: int) -> Region:
    """A region covering ``buf`` zero-padded to ``memsz``: purgatory checks any length."""
    return Region(start=mem, data_len=memsz, sha256=hashlib.sha256(buf + bytes(memsz - len(buf))).digest())


def require_gcc() -> None:
    """Fail (never skip) when the toolchain is missing: CI must have it."""
    for tool in ("gcc", "ld", "objcopy"):
        if shutil.which(tool) is None:
            pytest.fail(GCC_MISSING.replace("gcc not found", f"{tool} not found"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> purgbuild.BuildResult:
    require_gcc()
    return purgbuild.build(tmp_path_factory.mktemp("purgatory"))


# --------------------------------------------------------------------------
# 1. layout: the ctypes definitions agree with purgatory.h / entry.S


def test_header_layout_matches_elf_symbols(built: purgbuild.BuildResult) -> None:
    syms = built.symbols
    for name, _ in PurgatoryHeader._fields_:
        assert f"hdr_{name}" in syms, f"entry.S exports no hdr_{name}"
        assert getattr(PurgatoryHeader, name).offset == syms[f"hdr_{name}"], name
    assert ctypes.sizeof(PurgatoryHeader) == syms["hdr_end"]


def test_params_layout_matches_elf_symbols(built: purgbuild.BuildResult) -> None:
    syms = built.symbols
    base = syms["params"]
    for name, _ in PurgatoryParamsBlock._fields_:
        assert f"params_{name}" in syms, f"entry.S exports no params_{name}"
        assert getattr(PurgatoryParamsBlock, name).offset == syms[f"params_{name}"] - base, name
    assert ctypes.sizeof(PurgatoryParamsBlock) == syms["params_end"] - base
    regions = syms["params_regions"]
    for name, _ in PurgatoryRegion._fields_:
        assert getattr(PurgatoryRegion, name).offset == syms[f"params_region0_{name}"] - regions
    assert ctypes.sizeof(PurgatoryRegion) == syms["params_region1_start"] - regions
    assert PurgatoryParamsBlock.regions.size == MAX_REGIONS * ctypes.sizeof(PurgatoryRegion)


def test_committed_header_matches_build(built: purgbuild.BuildResult) -> None:
    purg = Purgatory.load()
    syms = built.symbols
    assert purg.params_offset == syms["params"]
    assert purg.entry_offset == syms["purgatory_entry"]
    assert purg.memsz == syms["__pyk_memsz"]
    assert syms["stack_top"] <= purg.memsz
    assert len(purg.blob) == syms["__pyk_file_size"]
    # The committed blob carries an all-zero parameter block.
    assert purg.blob[purg.params_offset : syms["params_end"]] == bytes(
        ctypes.sizeof(PurgatoryParamsBlock)
    )


def test_load_rejects_bad_blobs() -> None:
    blob = bytearray(Purgatory.load().blob)
    with pytest.raises(PurgatoryError):
        Purgatory.from_blob(bytes(blob[:-1]))
    bad = bytearray(blob)
    bad[8] ^= 1
    with pytest.raises(PurgatoryError):
        Purgatory.from_blob(bytes(bad))


def test_params_validation() -> None:
    region = Region(0x1000, 0, hashlib.sha256(b"").digest())
    with pytest.raises(PurgatoryError):
        PurgatoryParams(entry=0x1000, regions=[region] * (MAX_REGIONS + 1))
    with pytest.raises(PurgatoryError):
        PurgatoryParams(entry=1 << 32, mode=Mode.JUMP_32)
    with pytest.raises(PurgatoryError):
        Region(0, 1, b"short")
    packed = PurgatoryParams(entry=0x1234, rsi=0x5678, regions=[region]).pack()
    block = PurgatoryParamsBlock.from_buffer_copy(packed)
    assert (block.entry, block.rsi, block.nr_regions) == (0x1234, 0x5678, 1)
    assert bytes(block.regions[0].sha256) == region.sha256


# --------------------------------------------------------------------------
# 2. reproducible build; no load-address dependent relocations


def test_rebuild_matches_committed_blob() -> None:
    require_gcc()
    proc = subprocess.run(
        [sys.executable, str(BUILD_PY), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_build_rejects_absolute_pointer(tmp_path: Path) -> None:
    """An absolute address in the blob must fail the build, not ship."""
    require_gcc()
    src = tmp_path / "src"
    shutil.copytree(purgbuild.SRC, src)
    with open(src / "main.c", "a") as f:
        f.write("\nconst void *const pyk_bad_pointer = &purgatory_main;\n")
    with pytest.raises(purgbuild.BuildError, match="not position independent"):
        purgbuild.build(tmp_path / "out", src=src)


def test_blob_is_small(built: purgbuild.BuildResult) -> None:
    assert len(built.blob) <= 8192
    assert Purgatory.load().memsz <= 16384


# --------------------------------------------------------------------------
# SHA-256, compiled for the host from the same source


@pytest.fixture(scope="module")
def host_sha256(tmp_path_factory: pytest.TempPathFactory) -> Callable[[bytes], bytes]:
    require_gcc()
    d = tmp_path_factory.mktemp("sha")
    (d / "wrap.c").write_text(
        '#include "sha256.c"\n'
        '__attribute__((visibility("default")))\n'
        "void host_sha256(const void *d, u64 n, u8 *o) { sha256(d, n, o); }\n"
    )
    so = d / "sha.so"
    subprocess.run(
        ["gcc", "-O2", "-shared", "-fPIC", "-I", str(purgbuild.SRC), str(d / "wrap.c"), "-o", str(so)],
        check=True,
    )
    lib = ctypes.CDLL(str(so))
    lib.host_sha256.argtypes = [ctypes.c_char_p, ctypes.c_uint64, ctypes.c_char_p]

    def digest(data: bytes) -> bytes:
        out = ctypes.create_string_buffer(32)
        lib.host_sha256(data, len(data), out)
        return out.raw

    return digest


def test_sha256_against_hashlib(host_sha256: Callable[[bytes], bytes]) -> None:
    rng = random.Random(1)
    lengths = [0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 1000, 4096, 100_003]
    lengths += [rng.randrange(0, 3000) for _ in range(50)]
    for n in lengths:
        data = rng.randbytes(n)
        assert host_sha256(data) == hashlib.sha256(data).digest(), n


# --------------------------------------------------------------------------
# 3. execution in unicorn

MEM_SIZE = 64 << 20
PT_BASE = 0x3F00000  # page tables and the "old kernel" GDT live here
COM1 = 0x3F8
EFER = 0xC0000080
CR0_PE, CR0_PG = 1 << 0, 1 << 31
CR4_PAE = 1 << 5
EFER_LME, EFER_LMA = 1 << 8, 1 << 10
EFLAGS_IF = 1 << 9
BOOT_PARAMS = 0x8A000


@dataclass
class Machine:
    """Unicorn set up like the CPU at the moment kexec enters purgatory."""

    uc: Uc
    uart: bytearray = field(default_factory=bytearray)
    stopped_at: dict[str, int] | None = None


def make_machine() -> Machine:
    """64 MiB of RAM, 1 GiB identity mapped with 2 MiB pages, long mode.

    The CPU starts on the old kernel's GDT (code 0x10, data 0x18); the GDTR
    is then pointed at unmapped memory, as after kexec has torn the old
    kernel down, so any segment load before the purgatory's lgdt faults.
    Interrupts are enabled and RSP is unmapped garbage, to show that the
    purgatory does cli and sets up its own stack.
    """
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, MEM_SIZE)
    pml4, pdpt, pd, gdt = PT_BASE, PT_BASE + 0x1000, PT_BASE + 0x2000, PT_BASE + 0x3000
    uc.mem_write(pml4, struct.pack("<Q", pdpt | 0x3))
    uc.mem_write(pdpt, struct.pack("<Q", pd | 0x3))
    uc.mem_write(pd, b"".join(struct.pack("<Q", (i << 21) | 0x83) for i in range(512)))
    uc.mem_write(gdt, struct.pack("<4Q", 0, 0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF))
    uc.reg_write(X.UC_X86_REG_GDTR, (0, gdt, 0x1F, 0))
    uc.reg_write(X.UC_X86_REG_CR3, pml4)
    uc.reg_write(X.UC_X86_REG_CR4, CR4_PAE)
    uc.msr_write(EFER, EFER_LME | EFER_LMA)
    uc.reg_write(X.UC_X86_REG_CR0, CR0_PE | CR0_PG | (1 << 4))
    uc.reg_write(X.UC_X86_REG_CS, 0x10)
    for reg in (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_SS):
        uc.reg_write(reg, 0x18)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, 0xDEAD_0000_0000, 0x1F, 0))
    uc.reg_write(X.UC_X86_REG_RSP, 0x7FFF_0000_0008)
    uc.reg_write(X.UC_X86_REG_EFLAGS, 0x2 | EFLAGS_IF)
    for reg in ("RAX", "RBX", "RCX", "RDX", "RDI", "RBP", "R8", "R12", "R15"):
        uc.reg_write(getattr(X, f"UC_X86_REG_{reg}"), 0x5A5A_5A5A_5A5A_5A5A)

    m = Machine(uc)

    def on_out(uc: Uc, port: int, size: int, value: int, _: object) -> None:
        if port == COM1:
            m.uart.append(value & 0xFF)

    def on_in(uc: Uc, port: int, size: int, _: object) -> int:
        return 0x60 if port == COM1 + 5 else 0xFF  # LSR: THRE | TEMT

    uc.hook_add(UC_HOOK_INSN, on_out, None, 1, 0, X.UC_X86_INS_OUT)
    uc.hook_add(UC_HOOK_INSN, on_in, None, 1, 0, X.UC_X86_INS_IN)
    return m


REGS = {
    "rip": X.UC_X86_REG_RIP, "rsi": X.UC_X86_REG_RSI, "rsp": X.UC_X86_REG_RSP,
    "rax": X.UC_X86_REG_RAX, "rbx": X.UC_X86_REG_RBX, "rcx": X.UC_X86_REG_RCX,
    "rdx": X.UC_X86_REG_RDX, "rdi": X.UC_X86_REG_RDI, "rbp": X.UC_X86_REG_RBP,
    "r8": X.UC_X86_REG_R8, "r12": X.UC_X86_REG_R12, "r15": X.UC_X86_REG_R15,
    "cs": X.UC_X86_REG_CS, "ds": X.UC_X86_REG_DS, "es": X.UC_X86_REG_ES,
    "ss": X.UC_X86_REG_SS, "eflags": X.UC_X86_REG_EFLAGS,
    "cr0": X.UC_X86_REG_CR0, "cr4": X.UC_X86_REG_CR4,
}


def run(m: Machine, base: int, rendered: bytes, entry: int, limit: int = 50_000_000) -> None:
    """Start the purgatory at ``base``; stop when it reaches ``entry``.

    Records the register state at ``entry`` in ``m.stopped_at``.  If the
    purgatory halts instead, unicorn returns from ``hlt`` (or hits the
    instruction limit) and ``stopped_at`` stays None.
    """
    m.uc.mem_write(base, rendered)

    def at_entry(uc: Uc, address: int, size: int, _: object) -> None:
        state = {k: uc.reg_read(r) for k, r in REGS.items()}
        state["efer"] = uc.msr_read(EFER)
        state["gdtr_base"] = uc.reg_read(X.UC_X86_REG_GDTR)[1]
        m.stopped_at = state
        uc.emu_stop()

    m.uc.hook_add(UC_HOOK_CODE, at_entry, None, entry, entry)
    m.uc.emu_start(base + Purgatory.load().entry_offset, -1 & ((1 << 64) - 1), count=limit)


@dataclass(frozen=True)
class Image:
    """Three fake kexec segments already written to emulated memory."""

    regions: list[Region]
    segments: list[tuple[int, bytes, int]]  # (mem, buf, memsz)
    entry: int


def place_segments(m: Machine, seed: int) -> Image:
    rng = random.Random(seed)
    layout = [(0x100000, 0x3210, 0x4000), (0x1000000, 0x2000, 0x2000), (0x2345000, 0x777, 0x1000)]
    segments = []
    for mem, bufsz, memsz in layout:
        buf = rng.randbytes(bufsz)
        m.uc.mem_write(mem, buf)  # the rest up to memsz is zero, as after kexec_load
        segments.append((mem, buf, memsz))
    regions = [region_for(mem, buf, memsz) for mem, buf, memsz in segments]
    return Image(regions=regions, segments=segments, entry=0x1000200)


BASES = [0x9000, 0x2F00000]


@pytest.mark.parametrize("base", BASES)
def test_jump64_reaches_entry(base: int) -> None:
    m = make_machine()
    img = place_segments(m, seed=base)
    params = PurgatoryParams(entry=img.entry, rsi=BOOT_PARAMS, regions=img.regions)
    run(m, base, Purgatory.load().render(params), img.entry)
    st = m.stopped_at
    assert st is not None, "purgatory never reached the kernel entry"
    assert st["rip"] == img.entry
    assert st["rsi"] == BOOT_PARAMS
    assert st["cs"] == 0x10
    assert st["ds"] == st["ss"] == st["es"] == 0x18
    assert not st["eflags"] & EFLAGS_IF, "interrupts must be disabled"
    for reg in ("rax", "rbx", "rcx", "rdx", "rdi", "rbp", "r8", "r12", "r15"):
        assert st[reg] == 0, reg
    purg = Purgatory.load()
    # Own stack and own GDT, both inside the purgatory's reservation.
    assert base <= st["rsp"] <= base + purg.memsz
    assert base <= st["gdtr_base"] < base + len(purg.blob)
    assert st["efer"] & EFER_LMA and st["cr0"] & CR0_PG
    assert m.uart == b"", "console_port=0 must be silent"


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("segment", [0, 1, 2])
def test_corrupted_segment_halts(base: int, segment: int) -> None:
    m = make_machine()
    img = place_segments(m, seed=segment)
    mem, buf, memsz = img.segments[segment]
    # Flip a byte: in the data for two segments, in the zero padding for one.
    offset = memsz - 1 if segment == 0 else len(buf) // 2
    orig = m.uc.mem_read(mem + offset, 1)[0]
    m.uc.mem_write(mem + offset, bytes([orig ^ 0x40]))
    params = PurgatoryParams(
        entry=img.entry, rsi=BOOT_PARAMS, regions=img.regions, console_port=COM1
    )
    run(m, base, Purgatory.load().render(params), img.entry)
    assert m.stopped_at is None, "a corrupted segment must never be entered"
    rip = m.uc.reg_read(X.UC_X86_REG_RIP)
    assert m.uc.mem_read(rip - 1, 1) == b"\xf4", "expected to stop on the halt loop"
    assert not m.uc.reg_read(X.UC_X86_REG_EFLAGS) & EFLAGS_IF
    text = m.uart.decode()
    assert f"pykexec purgatory: sha256 mismatch in segment {segment} at {mem:#x}\r\n" in text
    assert "jumping" not in text


def test_console_progress_lines() -> None:
    m = make_machine()
    img = place_segments(m, seed=7)
    params = PurgatoryParams(
        entry=img.entry, rsi=BOOT_PARAMS, regions=img.regions, console_port=COM1
    )
    run(m, 0x9000, Purgatory.load().render(params), img.entry)
    assert m.stopped_at is not None
    assert m.uart.decode() == (
        "pykexec purgatory: started\r\n"
        "pykexec purgatory: verified 3 segments\r\n"
        f"pykexec purgatory: jumping to {img.entry:#x}\r\n"
    )


def test_sha256_in_purgatory_edge_lengths() -> None:
    """The blob's own SHA-256 on block-boundary lengths, 16 regions at once."""
    m = make_machine()
    rng = random.Random(3)
    lengths = [0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000, 4095, 4096, 4097, 65536 + 9]
    assert len(lengths) == MAX_REGIONS
    regions = []
    addr = 0x400000
    for n in lengths:
        data = rng.randbytes(n)
        m.uc.mem_write(addr, data)
        regions.append(Region(addr, n, hashlib.sha256(data).digest()))
        addr += (n + 0xFFF) & ~0xFFF or 0x1000
    entry = 0x1000000
    run(m, 0x9000, Purgatory.load().render(PurgatoryParams(entry=entry, regions=regions)), entry)
    assert m.stopped_at is not None, "purgatory's SHA-256 disagrees with hashlib"


def test_too_many_regions_in_block_halts() -> None:
    """The C side bounds-checks nr_regions instead of trusting it."""
    m = make_machine()
    purg = Purgatory.load()
    blob = bytearray(purg.render(PurgatoryParams(entry=0x1000000)))
    struct.pack_into("<H", blob, purg.params_offset + PurgatoryParamsBlock.nr_regions.offset, 17)
    run(m, 0x9000, bytes(blob), 0x1000000)
    assert m.stopped_at is None


@pytest.mark.parametrize("base", BASES)
def test_backup_copied_after_verification(base: int) -> None:
    m = make_machine()
    img = place_segments(m, seed=11)
    src, dst, size = 0x1000, 0x3000000, 0xA0000 - 0x1000  # the kdump low-640K backup
    low = random.Random(5).randbytes(size)
    m.uc.mem_write(src, low)
    # Keep the purgatory out of the backup source.
    base = base if base >= 0xA0000 else 0x2E00000
    params = PurgatoryParams(
        entry=img.entry, rsi=BOOT_PARAMS, regions=img.regions,
        backup_src=src, backup_dst=dst, backup_size=size,
    )
    run(m, base, Purgatory.load().render(params), img.entry)
    assert m.stopped_at is not None
    assert bytes(m.uc.mem_read(dst, size)) == low
    assert bytes(m.uc.mem_read(dst + size, 16)) == bytes(16), "copied too much"


def test_backup_not_copied_on_mismatch() -> None:
    m = make_machine()
    img = place_segments(m, seed=12)
    m.uc.mem_write(img.segments[1][0], b"\x00\x01")
    m.uc.mem_write(0x1000, b"backup!")
    params = PurgatoryParams(
        entry=img.entry, regions=img.regions, backup_src=0x1000, backup_dst=0x3000000, backup_size=7
    )
    run(m, 0x2E00000, Purgatory.load().render(params), img.entry)
    assert m.stopped_at is None
    assert bytes(m.uc.mem_read(0x3000000, 7)) == bytes(7)


@pytest.mark.parametrize("base", BASES)
def test_jump32_reaches_protected_mode_entry(base: int) -> None:
    """Long mode -> 32-bit protected mode, paging off (Multiboot entry).

    Unicorn (QEMU TCG) emulates the whole transition: the far return into a
    32-bit code segment (compatibility mode), clearing CR0.PG (which drops
    EFER.LMA), clearing EFER.LME via wrmsr and CR4.PAE; the hook at the
    32-bit entry then sees the real resulting CPU state.
    """
    m = make_machine()
    img = place_segments(m, seed=21)
    params = PurgatoryParams(
        entry=img.entry, mode=Mode.JUMP_32, eax=0x2BADB002, ebx=0x9500,
        regions=img.regions, console_port=COM1,
    )
    run(m, base, Purgatory.load().render(params), img.entry)
    st = m.stopped_at
    assert st is not None, "purgatory never reached the 32-bit entry"
    assert st["rip"] == img.entry
    assert st["rax"] & 0xFFFFFFFF == 0x2BADB002
    assert st["rbx"] & 0xFFFFFFFF == 0x9500
    assert st["cr0"] & CR0_PE and not st["cr0"] & CR0_PG
    assert not st["efer"] & (EFER_LME | EFER_LMA)
    assert not st["cr4"] & CR4_PAE
    assert st["cs"] == 0x20
    assert st["ds"] == st["es"] == st["ss"] == 0x28
    assert not st["eflags"] & EFLAGS_IF
    assert "verified 3 segments" in m.uart.decode()


def test_jump32_corrupted_segment_halts() -> None:
    m = make_machine()
    img = place_segments(m, seed=22)
    m.uc.mem_write(img.segments[2][0] + 5, b"\xff")
    params = PurgatoryParams(
        entry=img.entry, mode=Mode.JUMP_32, eax=0x2BADB002, ebx=0x9500, regions=img.regions
    )
    run(m, 0x9000, Purgatory.load().render(params), img.entry)
    assert m.stopped_at is None
    assert m.uc.reg_read(X.UC_X86_REG_CR0) & CR0_PG, "must halt before leaving long mode"
