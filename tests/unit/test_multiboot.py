"""Multiboot 1 (multiboot-x86): layouts, probing, header flags, the boot information
byte for byte, a.out-kludge loading, and placement (never in the first MiB)."""

from __future__ import annotations

import ctypes
import struct

import pytest

from pykexec import __version__, images
from pykexec import machine_file
from pykexec.errors import ImageFormatError, PlacementError
from pykexec.images import multiboot
from pykexec.request import LoadRequest, Module
from pykexec.layouts import multiboot as mb1
from pykexec.backends.linux import check_segments

from support.synth_images import MACHINE_1G
from support.multiboot_synth import elf32, image_body, mb1_header, xen_like

MACHINE = machine_file.from_dict(MACHINE_1G)


def request(kernel: bytes, *, machine=MACHINE, path: str = "xen", **kw) -> LoadRequest:
    return LoadRequest(kernel_path=path, kernel=kernel, machine=machine, **kw)


def mb1_elf(flags: int = 0x3, paddr: int = 0x1000000) -> bytes:
    return elf32([(paddr, image_body(mb1_header(flags), None), 0x4000)], paddr)


def test_layouts_pinned_against_bytes():
    assert bytes(mb1.Header(0x1BADB002, 3, 0xE4524FFB))[:12] == bytes.fromhex("02b0ad1b 03000000 fb4f52e4")
    assert ctypes.sizeof(mb1.Info) == 116
    offsets = {name: getattr(mb1.Info, name).offset for name in
               ("flags", "mem_lower", "mem_upper", "cmdline", "mods_count", "mods_addr", "mmap_length",
                "mmap_addr", "boot_loader_name", "vbe_mode", "framebuffer_addr", "framebuffer_bpp", "color_info")}
    assert offsets == {"flags": 0, "mem_lower": 4, "mem_upper": 8, "cmdline": 16, "mods_count": 20,
                       "mods_addr": 24, "mmap_length": 44, "mmap_addr": 48, "boot_loader_name": 64,
                       "vbe_mode": 80, "framebuffer_addr": 88, "framebuffer_bpp": 108, "color_info": 110}
    assert bytes(mb1.MmapEntry(20, 0x100000, 0x3FEE0000, 1)) == bytes.fromhex(
        "14000000 0000100000000000 0000ee3f00000000 01000000")
    assert bytes(mb1.Module(0x1000, 0x1010, 0x2000, 0)) == struct.pack("<4I", 0x1000, 0x1010, 0x2000, 0)


def test_probe():
    assert multiboot.probe(mb1_elf()) is None
    assert multiboot.probe(xen_like()) is None
    assert "requires flags 0x8" in multiboot.probe(mb1_elf(0xB))
    assert "no Multiboot header" in multiboot.probe(elf32([(0x1000000, bytes(0x4000), 0x4000)], 0x1000000))
    bad = bytearray(mb1_elf())
    bad[0x100 + 8 + 8] ^= 1
    assert "bad checksum" in multiboot.probe(bytes(bad))
    late = elf32([(0x1000000, bytes(0x2000) + mb1_header(3), 0x4000)], 0x1000000)
    assert "no Multiboot header" in multiboot.probe(late)
    # Not ELF and no address fields: nothing tells us where to load it.
    assert "no ELF magic" in multiboot.probe(b"\0" * 8 + mb1_header(3) + bytes(100))
    # An image with only a Multiboot 1 header probes as multiboot-x86, not multiboot2.
    assert images.select(mb1_elf()).name == "multiboot-x86"


def test_video_mode_is_refused():
    with pytest.raises(ImageFormatError, match="requires a video mode"):
        multiboot.plan(request(mb1_elf(0x7)))


def test_mbi_bytes_exact():
    small = machine_file.from_dict({"memory": [
        {"start": "0x0", "end": "0xfff", "type": "Reserved"},
        {"start": "0x1000", "end": "0x9fbff", "type": "System RAM"},
        {"start": "0x100000", "end": "0x7ffffff", "type": "System RAM"},
    ]})
    module = Module("dom0", b"M" * 100, "dom0 a=1")
    plan = multiboot.plan(request(mb1_elf(), machine=small, cmdline="x=1", modules=[module]))
    segs = {s.role: s for s in plan.segments}
    mbi, at = segs["mbi"].data, segs["mbi"].mem
    assert segs["module"].mem == 0x7FFF000 and at == 0x7FFE000
    name = f"pykexec {__version__}".encode()
    # 116-byte structure, "xen x=1\0" at 116, the name after it, the module list
    # 4-aligned, its command line, the memory map 4-aligned.
    name_at = 116 + 8
    mods_at = (name_at + len(name) + 1 + 3) & ~3
    mcmd_at = mods_at + 16
    mmap_at = (mcmd_at + 9 + 3) & ~3
    info = struct.pack("<IIIIIII", 0x1 | 0x4 | 0x8 | 0x40 | 0x200, 639, 130048, 0, at + 116, 1, at + mods_at)
    info += bytes(16) + struct.pack("<II", 3 * 24, at + mmap_at) + bytes(12) + struct.pack("<I", at + name_at)
    info = info.ljust(116, b"\0")
    expected = bytearray(info + b"xen x=1\0" + name + b"\0")
    expected += bytes(mods_at - len(expected))
    expected += struct.pack("<4I", 0x7FFF000, 0x7FFF064, at + mcmd_at, 0) + b"dom0 a=1\0"
    expected += bytes(mmap_at - len(expected))
    expected += struct.pack("<IQQI", 20, 0, 0x1000, 2)
    expected += struct.pack("<IQQI", 20, 0x1000, 0x9EC00, 1)
    expected += struct.pack("<IQQI", 20, 0x100000, 0x7F00000, 1)
    assert mbi == bytes(expected)
    # mem_lower counts the RAM below 640 KiB even when the first page is reserved.
    assert struct.unpack_from("<I", mbi, 4) == (639,)


def test_xen_as_multiboot1_stays_out_of_low_memory():
    """kexec-tools put this plan's memory map at physical 0, over the IVT and BDA."""
    mods = [Module("vmlinuz", b"K" * 300000, "vmlinuz root=/dev/sda ro")]
    plan = multiboot.plan(request(xen_like(), cmdline="console=com1", modules=mods))
    check_segments(plan, MACHINE)
    for s in plan.segments:
        assert 0x100000 <= s.mem and s.mem + s.memsz <= 1 << 32, s
    segs = {s.role: s for s in plan.segments}
    assert segs["kernel"].mem == 0x200000  # MB1 has no relocation: the link address
    assert plan.kernel_entry == 0x200000
    info = mb1.Info.from_buffer_copy(segs["mbi"].data)
    assert info.mods_count == 1 and info.mmap_length == 7 * 24
    from pykexec.layouts.purgatory import PurgatoryHeader, PurgatoryParamsBlock

    hdr = PurgatoryHeader.from_buffer_copy(segs["purgatory"].data)
    params = PurgatoryParamsBlock.from_buffer_copy(segs["purgatory"].data, hdr.params_offset)
    assert (params.mode, params.eax, params.ebx) == (1, 0x2BADB002, segs["mbi"].mem)


def test_aout_kludge_loading():
    # A raw binary (no ELF) whose header at offset 8 says: file offset 0 goes to
    # 0x1100000, 0x3000 bytes of it, bss up to 0x1106000, entry 0x1100020.
    header = mb1_header(0x10003, aout=(0x1100008, 0x1100000, 0x1103000, 0x1106000, 0x1100020))
    raw = b"\xeb\xfe" + bytes(6) + header + bytes(0x4000)
    assert multiboot.probe(raw) is None
    plan = multiboot.plan(request(raw))
    (kernel,) = [s for s in plan.segments if s.role == "kernel"]
    assert (kernel.mem, kernel.memsz, kernel.data) == (0x1100000, 0x6000, raw[:0x3000])
    assert plan.kernel_entry == 0x1100020
    # load_end_addr 0: the whole file.
    header = mb1_header(0x10003, aout=(0x1100008, 0x1100000, 0, 0, 0x1100020))
    raw = b"\xeb\xfe" + bytes(6) + header + bytes(0x4000)
    (kernel,) = [s for s in multiboot.plan(request(raw)).segments if s.role == "kernel"]
    assert kernel.data == raw and kernel.memsz == 0x5000


@pytest.mark.parametrize("aout,message", [
    ((0x1100008, 0x1100010, 0, 0, 0x1100010), "load_addr 0x1100010 is above header_addr"),
    ((0x1100008, 0x1000000, 0, 0, 0x1000000), "before the start of the file"),
    ((0x1100008, 0x1100000, 0x1900000, 0, 0x1100000), "beyond the end of the"),
    ((0x1100008, 0x1100000, 0x1102000, 0x1101000, 0x1100000), "bss_end_addr 0x1101000 is below"),
    ((0x1100008, 0x1100000, 0, 0, 0x2000000), "entry point 0x2000000 is outside"),
])
def test_aout_kludge_refusals(aout, message):
    raw = b"\xeb\xfe" + bytes(6) + mb1_header(0x10003, aout=aout) + bytes(0x4000)
    with pytest.raises(ImageFormatError, match=message):
        multiboot.plan(request(raw))


def test_aout_header_truncated_is_refused():
    raw = b"\xeb\xfe" + bytes(6) + mb1_header(0x10003)
    assert "address fields" in multiboot.probe(raw)


def test_image_linked_low_or_outside_ram():
    with pytest.raises(ImageFormatError, match="inside the first MiB"):
        multiboot.plan(request(mb1_elf(paddr=0x10000)))
    with pytest.raises(PlacementError, match="not relocatable"):
        multiboot.plan(request(mb1_elf(paddr=0x80000000)))
    with pytest.raises(PlacementError, match="not relocatable"):
        multiboot.plan(request(mb1_elf(), mem_min=0x2000000))
