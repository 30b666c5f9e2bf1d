"""pykexec.vmcore.elfcore: opening, notes and address translation on synthetic cores."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from support.vmcore_synth import BUF_PADDR, DIRECT_MAP, KERNEL_PADDR, KERNEL_VADDR, Memory, Region, write_core

from pykexec.layouts.elf import pack_note
from pykexec.vmcore.errors import VmcoreError
from pykexec.vmcore.elfcore import ElfCore


def _core(tmp_path: Path, mem: Memory | None = None, info: str = "PAGESIZE=4096\n", **kw: object) -> Path:
    mem = mem or Memory.standard(buf_size=0x2000)
    return write_core(tmp_path / "core", mem, info, **kw)  # type: ignore[arg-type]


def test_notes_and_loads(tmp_path: Path) -> None:
    with ElfCore(_core(tmp_path, extra_notes=pack_note(b"VMCOREINFO", 0, b"SECOND=1\n"))) as c:
        assert [n.name for n in c.notes] == [b"CORE", b"VMCOREINFO", b"VMCOREINFO"]
        assert c.vmcoreinfo is not None and c.vmcoreinfo.get("PAGESIZE") == "4096"  # the first one
        assert "SECOND" not in c.vmcoreinfo
        assert [(seg.vaddr, seg.paddr) for seg in c.loads] == [(KERNEL_VADDR, KERNEL_PADDR),
                                                                (DIRECT_MAP + BUF_PADDR, BUF_PADDR)]


def test_virtual_and_physical_reads(tmp_path: Path) -> None:
    mem = Memory.standard(buf_size=0x2000)
    mem.write(KERNEL_VADDR + 0x100, b"kernel data")
    mem.write(DIRECT_MAP + BUF_PADDR + 0x10, struct.pack("<QI", 0x1122334455667788, 0xAABBCCDD))
    with ElfCore(_core(tmp_path, mem)) as c:
        assert bytes(c.read(KERNEL_VADDR + 0x100, 11)) == b"kernel data"
        assert bytes(c.read(KERNEL_PADDR + 0x100, 11, physical=True)) == b"kernel data"
        assert isinstance(c.read(KERNEL_VADDR, 16), memoryview)  # zero-copy inside one segment
        assert c.u64(DIRECT_MAP + BUF_PADDR + 0x10) == 0x1122334455667788
        assert c.u32(BUF_PADDR + 0x18, physical=True) == 0xAABBCCDD
        with pytest.raises(VmcoreError, match="no PT_LOAD covers virtual address 0xdead0000"):
            c.read(0xDEAD0000, 4)


def test_filesz_below_memsz_reads_zeros_and_straddles(tmp_path: Path) -> None:
    mem = Memory()
    mem.regions.append(Region(0x1000, 0x1000, bytearray(b"A" * 0x100), 0x200))  # 0x100 bytes of zeros after
    mem.regions.append(Region(0x1200, 0x1200, bytearray(b"B" * 0x100), 0x100))  # directly follows
    with ElfCore(_core(tmp_path, mem)) as c:
        assert bytes(c.read(0x10F0, 0x20)) == b"A" * 0x10 + bytes(0x10)
        assert bytes(c.read(0x11F0, 0x20)) == bytes(0x10) + b"B" * 0x10
        assert bytes(c.read(0x10F0, 0x120)) == b"A" * 0x10 + bytes(0x100) + b"B" * 0x10
        with pytest.raises(VmcoreError, match="no PT_LOAD covers virtual address 0x1300"):
            c.read(0x12F0, 0x20)


def test_direct_map_fallback(tmp_path: Path) -> None:
    mem = Memory()
    # A segment with no usable virtual address (as 32-bit highmem: p_vaddr = -1).
    mem.regions.append(Region((1 << 64) - 0x1000, 0x5000, bytearray(b"phys" * 0x100), 0x400))
    page_offset = 0xFFFF888000000000
    with ElfCore(_core(tmp_path, mem, info=f"NUMBER(PAGE_OFFSET)={page_offset}\n")) as c:
        assert bytes(c.read(page_offset + 0x5004, 4)) == b"phys"
    with ElfCore(_core(tmp_path, mem, info="PAGESIZE=4096\n")) as c:
        with pytest.raises(VmcoreError, match="no PT_LOAD covers"):
            c.read(page_offset + 0x5004, 4)


def _bad(tmp_path: Path, data: bytes) -> str:
    p = tmp_path / "bad"
    p.write_bytes(data)
    with pytest.raises(VmcoreError) as e:
        ElfCore(p)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(VmcoreError, match="no such file"):
        ElfCore(tmp_path / "missing")
    with pytest.raises(VmcoreError, match="is a directory"):
        ElfCore(tmp_path)
    good = _core(tmp_path).read_bytes()
    assert "not an ELF file" in _bad(tmp_path, b"")
    assert "not an ELF file" in _bad(tmp_path, b"KDUMP   " + bytes(100))
    assert "ELF32" in _bad(tmp_path, good[:4] + b"\x01" + good[5:])
    assert "big-endian" in _bad(tmp_path, good[:5] + b"\x02" + good[6:])
    assert "not a core file (ELF type 2)" in _bad(tmp_path, good[:16] + b"\x02\x00" + good[18:])
    assert "program headers" in _bad(tmp_path, good[:56] + b"\xff\x7f" + good[58:])
    assert "DUMP INCOMPLETE: " in _bad(tmp_path, good[:100]) and "the file ends at byte 100, inside its 3 program " \
        "headers (nothing to read)" in _bad(tmp_path, good[:100])
    # A note claiming a huge desc inside its PT_NOTE.
    note_off = 64 + 3 * 56
    assert "corrupt note" in _bad(tmp_path, good[:note_off + 4] + b"\xff\xff\xff\x00" + good[note_off + 8:])


def test_truncated_segment_read(tmp_path: Path) -> None:
    p = _core(tmp_path)
    data = p.read_bytes()
    p.write_bytes(data[:-0x1000])  # cut the end of the last PT_LOAD
    with ElfCore(p) as c:
        assert bytes(c.read(DIRECT_MAP + BUF_PADDR, 4)) == bytes(4)
        with pytest.raises(VmcoreError, match="truncated"):
            c.read(DIRECT_MAP + BUF_PADDR + 0x1800, 0x10)


def test_never_writes_the_file(tmp_path: Path) -> None:
    p = _core(tmp_path)
    p.chmod(0o444)
    before = p.read_bytes()
    with ElfCore(p) as c:
        c.read(KERNEL_VADDR, 16)
    assert p.read_bytes() == before
