"""Multiboot 2 (multiboot2-x86): layouts, probing, header tags and their refusals, the
boot information byte for byte, placement, and the CLI's dry run."""

from __future__ import annotations

import ctypes
import gzip
import json
import struct
from pathlib import Path

import pytest

from pykexec import __version__, cli, images
from pykexec import machine_file
from pykexec.errors import ImageFormatError, PlacementError, UsageError
from pykexec.images import multiboot2, multiboot_common
from pykexec.request import LoadRequest, Module
from pykexec.layouts import multiboot2 as mb2
from pykexec.backends.linux import check_segments

from support.synth_images import MACHINE_1G, make_elf_vmlinux
from support.multiboot_synth import XEN_LINK, elf32, htag, image_body, mb2_elf, mb2_header, rsdp_v2, xen_like

MACHINE = machine_file.from_dict(MACHINE_1G)
# A small BIOS machine for exact bytes: 639 KiB low, 127 MiB from 1 MiB, ACPI and NVS.
SMALL = machine_file.from_dict({"memory": [
    {"start": "0x0", "end": "0x9fbff", "type": "System RAM"},
    {"start": "0x9fc00", "end": "0x9ffff", "type": "Reserved"},
    {"start": "0xf0000", "end": "0xfffff", "type": "Reserved"},
    {"start": "0x100000", "end": "0x7ffffff", "type": "System RAM"},
    {"start": "0x8000000", "end": "0x800ffff", "type": "ACPI Tables"},
    {"start": "0x8010000", "end": "0x801ffff", "type": "ACPI Non-volatile Storage"},
]})


def request(kernel: bytes, *, machine=MACHINE, path: str = "xen", **kw) -> LoadRequest:
    return LoadRequest(kernel_path=path, kernel=kernel, machine=machine, **kw)


def mbi_of(plan) -> bytes:
    return next(s for s in plan.segments if s.role == "mbi").data


def mbi_tags(mbi: bytes) -> dict[int, list[bytes]]:
    tags: dict[int, list[bytes]] = {}
    pos = 8
    while True:
        kind, size = struct.unpack_from("<II", mbi, pos)
        tags.setdefault(kind, []).append(mbi[pos + 8:pos + size])
        if kind == 0:
            return tags
        pos += (size + 7) & ~7


# --- layouts ------------------------------------------------------------------------

def test_layouts_pinned_against_bytes():
    assert bytes(mb2.Header(0xE85250D6, 0, 136, 0x17ADAEA2)) == bytes.fromhex("d65052e8 00000000 88000000 a2aead17")
    assert bytes(mb2.HeaderTag(10, 1, 24)) == bytes.fromhex("0a00 0100 18000000")
    reloc = mb2.RelocatableTag(mb2.HeaderTag(10, 1, 24), 0x200000, 0xFFFFFFFF, 0x200000, 2)
    assert bytes(reloc) == bytes.fromhex("0a000100 18000000 00002000 ffffffff 00002000 02000000")
    addr = mb2.AddressTag(mb2.HeaderTag(2, 0, 24), 1, 2, 3, 4)
    assert bytes(addr)[8:] == struct.pack("<4I", 1, 2, 3, 4)
    assert bytes(mb2.EntryAddressTag(mb2.HeaderTag(3, 0, 12), 0x100010)) == bytes.fromhex("0300 0000 0c000000 10001000")
    assert bytes(mb2.FramebufferTag(mb2.HeaderTag(5, 1, 20), 1, 2, 3))[8:] == struct.pack("<3I", 1, 2, 3)
    assert bytes(mb2.Tag(21, 12)) == struct.pack("<II", 21, 12)
    assert bytes(mb2.BasicMeminfoTag(mb2.Tag(4, 16), 639, 130048)) == struct.pack("<IIII", 4, 16, 639, 130048)
    assert bytes(mb2.ModuleTag(mb2.Tag(3, 20), 0x1000, 0x2000)) == struct.pack("<IIII", 3, 20, 0x1000, 0x2000)
    assert bytes(mb2.MmapTag(mb2.Tag(6, 40), 24, 0)) == struct.pack("<IIII", 6, 40, 24, 0)
    assert bytes(mb2.MmapEntry(0x100000, 0x7F00000, 1, 0)) == struct.pack("<QQII", 0x100000, 0x7F00000, 1, 0)
    assert bytes(mb2.LoadBaseAddrTag(mb2.Tag(21, 12), 0x200000)) == struct.pack("<III", 21, 12, 0x200000)
    assert bytes(mb2.Rsdp.from_buffer_copy(rsdp_v2())) == rsdp_v2()
    assert mb2.Rsdp.from_buffer_copy(rsdp_v2()).xsdt_address == 0x3FFE5678


# --- probing --------------------------------------------------------------------------

def test_xen_like_image_is_multiboot2_by_default_and_multiboot1_when_forced():
    xen = xen_like()
    assert len(xen_like()[0x100 + 0x18:0x100 + 0x18 + 136]) == 136
    assert images.select(xen).name == "multiboot2-x86"
    assert images.select(xen, "multiboot-x86").name == "multiboot-x86"
    # gzip'd, as Xen ships.
    assert images.select(images.decompress(gzip.compress(xen), "xen.gz")).name == "multiboot2-x86"


@pytest.mark.parametrize("image,reason", [
    (b"not an elf" * 10, "no ELF magic"),
    (elf32([(0x1000000, image_body(None, mb2_header()), 0x4000)], 0x1000000, e_type=3), "ELF type 3"),
    (elf32([(0x1000000, image_body(None, mb2_header()), 0x4000)], 0x1000000, e_machine=40), "not i386"),
    (elf32([(0x1000000, bytes(0x100), 0x1000)], 0x1000000), "no Multiboot 2 header"),
    (mb2_elf(), None),
    (elf32([(0x1000000, image_body(None, mb2_header(arch=4)), 0x4000)], 0x1000000), "architecture 4"),
])
def test_probe(image, reason):
    got = multiboot2.probe(image)
    assert got is None if reason is None else reason in got


def test_probe_header_rules():
    good = mb2_elf()
    off = good.find(struct.pack("<I", mb2.HEADER_MAGIC))
    bad_sum = bytearray(good)
    bad_sum[off + 12] ^= 1
    assert "bad checksum" in multiboot2.probe(bytes(bad_sum))
    # Not 8-byte aligned: not a header.
    shifted = good[:off] + b"\0\0\0\0" + good[off:]
    assert "no Multiboot 2 header" in multiboot2.probe(shifted)
    # Beyond the first 32 KiB.
    late = elf32([(0x1000000, bytes(0x8000) + mb2_header(), 0x10000)], 0x1000000)
    assert "no Multiboot 2 header" in multiboot2.probe(late)
    # x86_64 ELF64 with the header: accepted (kexec-tools 2.0.23+ does too).
    elf64 = make_elf_vmlinux([(0x1000000, image_body(None, mb2_header()), 0x4000)], 0x1000000)
    assert multiboot2.probe(elf64) is None
    # Truncated header length.
    short = bytearray(good)
    struct.pack_into("<II", short, off + 8, 0x9000, (-(mb2.HEADER_MAGIC + 0x9000)) & 0xFFFFFFFF)
    assert "runs past" in multiboot2.probe(bytes(short))


# --- header tags ---------------------------------------------------------------------

@pytest.mark.parametrize("tag,message", [
    (htag(5, struct.pack("<III", 1024, 768, 32)), "FRAMEBUFFER"),
    (htag(7), "EFI_BS"),
    (htag(8, struct.pack("<I", 0x1000000)), "ENTRY_ADDRESS_EFI32"),
    (htag(9, struct.pack("<I", 0x1000000)), "ENTRY_ADDRESS_EFI64"),
    (htag(42, b"12345678"), "unknown type 42"),
    (htag(4, struct.pack("<I", 3)), "requires a console"),
    (htag(1, struct.pack("<II", 4, 9)), r"ELF_SECTIONS information \(tag 9\)"),
    (htag(1, struct.pack("<I", 15)), r"ACPI_NEW information \(tag 15\).*RSDP"),
    (htag(1, struct.pack("<I", 99)), "unknown type 99 information"),
    (htag(10, struct.pack("<III", 1, 2, 3)), "RELOCATABLE is 20 bytes, expected 24"),
    (htag(10, struct.pack("<IIII", 0x2000000, 0x1000000, 0x1000, 0)), "min_addr 0x2000000 is above"),
])
def test_required_tags_we_cannot_honour_are_refused_by_name(tag, message):
    with pytest.raises(ImageFormatError, match=message):
        multiboot2.plan(request(mb2_elf(tag)))


def test_optional_tags_we_do_not_honour_are_ignored():
    image = mb2_elf(htag(5, struct.pack("<III", 0, 0, 0), True), htag(7, b"", True),
                    htag(9, struct.pack("<I", 0x1000000), True), htag(42, b"", True),
                    htag(4, struct.pack("<I", 3), True), htag(1, struct.pack("<II", 9, 12), True))
    tags = mbi_tags(mbi_of(multiboot2.plan(request(image))))
    assert not set(tags) & {5, 8, 9, 11, 12, 17, 18, 19, 20}  # no framebuffer, ELF or EFI tags


def test_malformed_tag_lists_are_one_line_errors():
    # A tag whose size runs past the header.
    hdr = bytearray(mb2_header(htag(6)))
    struct.pack_into("<I", hdr, 16 + 4, 0x400)
    with pytest.raises(ImageFormatError, match="MODULE_ALIGN .* outside the header"):
        multiboot2.plan(request(elf32([(0x1000000, image_body(None, bytes(hdr)), 0x4000)], 0x1000000)))
    # No END tag within header_length.
    raw = struct.pack("<IIII", mb2.HEADER_MAGIC, 0, 24, (-(mb2.HEADER_MAGIC + 24)) & 0xFFFFFFFF) + htag(6)
    with pytest.raises(ImageFormatError, match="no END tag"):
        multiboot2.plan(request(elf32([(0x1000000, image_body(None, raw), 0x4000)], 0x1000000)))


def test_entry_address_tag_is_used_and_shifted_when_relocated():
    image = mb2_elf(htag(3, struct.pack("<I", 0x1000040)))
    assert multiboot2.plan(request(image)).kernel_entry == 0x1000040
    image = mb2_elf(htag(3, struct.pack("<I", 0x1000040)),
                    htag(10, struct.pack("<IIII", 0x1000000, 0xFFFFFFFF, 0x200000, 2), True))
    plan = multiboot2.plan(request(image))
    base = min(s.mem for s in plan.segments if s.role == "kernel")
    assert base == 0x3FE00000 and plan.kernel_entry == base + 0x40
    assert mbi_tags(mbi_of(plan))[21] == [struct.pack("<I", base)]
    with pytest.raises(ImageFormatError, match="entry point 0x5000000 is outside the loaded image"):
        multiboot2.plan(request(mb2_elf(htag(3, struct.pack("<I", 0x5000000)))))


def test_address_tag_loads_by_addresses():
    # Header at file offset 0x118 claims physical 0x1100018: load from file offset 0x100
    # (= 0x1100000) to 0x1102000, bss to 0x1105000.
    tag = htag(2, struct.pack("<IIII", 0x1100018, 0x1100000, 0x1102000, 0x1105000))
    image = mb2_elf(tag, htag(3, struct.pack("<I", 0x1100000)))
    plan = multiboot2.plan(request(image))
    (kernel,) = [s for s in plan.segments if s.role == "kernel"]
    assert (kernel.mem, kernel.memsz) == (0x1100000, 0x5000)
    assert kernel.data == image[0x100:0x2100]
    bad = mb2_elf(htag(2, struct.pack("<IIII", 0x1100018, 0x1100000, 0x1900000, 0)))
    with pytest.raises(ImageFormatError, match="beyond the end of the"):
        multiboot2.plan(request(bad))
    bad = mb2_elf(htag(2, struct.pack("<IIII", 0x1100018, 0x1100020, 0, 0)))
    with pytest.raises(ImageFormatError, match="load_addr 0x1100020 is above header_addr"):
        multiboot2.plan(request(bad))


# --- the boot information, byte for byte -------------------------------------------------

def test_mbi_bytes_exact():
    module = Module("dom0", bytes(range(100)), "dom0 root=/dev/sda")
    plan = multiboot2.plan(request(mb2_elf(), machine=SMALL, cmdline="console=com1", modules=[module]))
    mod = next(s for s in plan.segments if s.role == "module")
    assert mod.mem == 0x7FFF000  # highest page below the end of RAM
    name = f"pykexec {__version__}\0".encode()
    name_tag = struct.pack("<II", 2, 8 + len(name)) + name + bytes(-(8 + len(name)) % 8)
    # 8 + CMDLINE 32 + BOOT_LOADER_NAME (24 for "pykexec 0.1.0") + MODULE 40 + BASIC_MEMINFO 16
    # + MMAP 16 + 6 * 24 + END 8
    total = 8 + 32 + len(name_tag) + 40 + 16 + 160 + 8
    expected = b"".join([
        struct.pack("<II", total, 0),
        struct.pack("<II", 1, 25), b"xen console=com1\0", bytes(7),                            # CMDLINE
        name_tag,                                                                              # BOOT_LOADER_NAME
        struct.pack("<IIII", 3, 35, 0x7FFF000, 0x7FFF064), b"dom0 root=/dev/sda\0", bytes(5),  # MODULE
        struct.pack("<IIII", 4, 16, 639, 130048),                                              # BASIC_MEMINFO
        struct.pack("<IIII", 6, 16 + 6 * 24, 24, 0),                                           # MMAP
        struct.pack("<QQII", 0x0, 0x9FC00, 1, 0),
        struct.pack("<QQII", 0x9FC00, 0x400, 2, 0),
        struct.pack("<QQII", 0xF0000, 0x10000, 2, 0),
        struct.pack("<QQII", 0x100000, 0x7F00000, 1, 0),
        struct.pack("<QQII", 0x8000000, 0x10000, 3, 0),
        struct.pack("<QQII", 0x8010000, 0x10000, 4, 0),
        struct.pack("<II", 0, 8),                                                              # END
    ])
    mbi = mbi_of(plan)
    assert mbi == expected
    seg = next(s for s in plan.segments if s.role == "mbi")
    assert seg.bufsz == struct.unpack_from("<I", mbi)[0] == len(mbi)
    assert seg.mem % 8 == 0


def test_mbi_memory_types_and_acpi_tags(monkeypatch):
    machine = machine_file.from_dict({"memory": [
        {"start": "0x1000", "end": "0x9ffff", "type": "System RAM"},
        {"start": "0x100000", "end": "0x3fffffff", "type": "System RAM"},
        {"start": "0x40000000", "end": "0x40ffffff", "type": "Persistent Memory"},
        {"start": "0x41000000", "end": "0x41ffffff", "type": "Persistent Memory (legacy)"},
        {"start": "0x42000000", "end": "0x42ffffff", "type": "Unusable memory"},
    ], "acpi_rsdp": "0xf5a10"})
    monkeypatch.setattr(multiboot_common, "rsdp_bytes", lambda m: rsdp_v2())
    plan = multiboot2.plan(request(mb2_elf(htag(1, struct.pack("<II", 14, 15))), machine=machine))
    tags = mbi_tags(mbi_of(plan))
    entries = tags[6][0][8:]
    kinds = [struct.unpack_from("<QQII", entries, 24 * i)[2] for i in range(len(entries) // 24)]
    assert kinds == [1, 1, 2, 2, 5]  # persistent memory is reserved, unusable is bad RAM
    assert struct.unpack("<II", tags[4][0]) == (640, (0x40000000 - 0x100000) // 1024)
    assert tags[14] == [rsdp_v2()[:20]] and tags[15] == [rsdp_v2()]
    assert 21 not in tags  # not relocatable, not asked for: no LOAD_BASE_ADDR


def test_rsdp_validation():
    assert multiboot_common.valid_rsdp(rsdp_v2() + b"junk") == rsdp_v2()
    v1 = bytearray(rsdp_v2()[:20])
    v1[15] = 0
    v1[8] = 0
    v1[8] = -sum(v1) & 0xFF
    assert multiboot_common.valid_rsdp(bytes(v1) + bytes(16)) == bytes(v1)
    broken = bytearray(rsdp_v2())
    broken[9] ^= 1
    assert multiboot_common.valid_rsdp(bytes(broken)) is None
    assert multiboot_common.valid_rsdp(b"RSD PTX" + bytes(29)) is None
    # A --machine file gives an address only: no bytes, no ACPI tags.
    assert multiboot_common.rsdp_bytes(machine_file.from_dict({**MACHINE_1G, "acpi_rsdp": "0xf5a10"})) is None


# --- placement ---------------------------------------------------------------------------

def _segments(plan):
    return {s.role: s for s in plan.segments}


def test_xen_like_plan_relocates_high_and_keeps_out_of_low_memory():
    mods = [Module("vmlinuz", b"K" * 300000, "vmlinuz root=/dev/sda ro"), Module("initrd", b"I" * 100000, "initrd")]
    plan = multiboot2.plan(request(xen_like(), cmdline="console=com1 dom0_mem=1G", modules=mods))
    check_segments(plan, MACHINE)
    kernel = _segments(plan)["kernel"]
    assert kernel.mem == 0x3FE00000  # highest 2 MiB-aligned spot below the end of RAM
    assert plan.kernel_entry == 0x3FE00000
    for s in plan.segments:
        assert 0x100000 <= s.mem and s.mem + s.memsz <= 1 << 32, s
        assert s.mem % 4096 == 0
    tags = mbi_tags(mbi_of(plan))
    assert tags[21] == [struct.pack("<I", 0x3FE00000)]  # the image's base, not purgatory's
    assert tags[1] == [b"xen console=com1 dom0_mem=1G\0"]
    mod_tags = [struct.unpack_from("<II", t) + (t[8:],) for t in tags[3]]
    assert [t[2] for t in mod_tags] == [b"vmlinuz root=/dev/sda ro\0", b"initrd\0"]
    for (start, end, _), m in zip(mod_tags, mods):
        assert start % 4096 == 0 and end - start == len(m.data)
    assert not set(tags) & {12, 17, 18, 20}  # never EFI64 tags for Xen
    assert plan.notes == ["image relocated from 0x200000 to 0x3fe00000"]
    # The purgatory enters in 32-bit mode with the Multiboot 2 magic and the MBI.
    purg = _segments(plan)["purgatory"]
    from pykexec.layouts.purgatory import PurgatoryHeader, PurgatoryParamsBlock

    hdr = PurgatoryHeader.from_buffer_copy(purg.data)
    params = PurgatoryParamsBlock.from_buffer_copy(purg.data, hdr.params_offset)
    assert (params.mode, params.eax, params.ebx, params.entry) == (1, 0x36D76289, _segments(plan)["mbi"].mem,
                                                                   0x3FE00000)
    assert params.nr_regions == 4  # kernel, 2 modules, MBI


@pytest.mark.parametrize("preference,mem_min,expected", [
    (2, 0, 0x3FE00000),       # high
    (1, 0, 0x200000),         # low, from min_addr
    (0, 0, XEN_LINK),         # none: the link address, which is free
    (0, 0x1000000, 0x1000000),  # none, link address excluded by --mem-min: lowest allowed
    (1, 0x1100000, 0x1200000),  # low, 2 MiB aligned above --mem-min
])
def test_relocation_preference(preference, mem_min, expected):
    tags = (htag(10, struct.pack("<IIII", 0x200000, 0xFFFFFFFF, 0x200000, preference), True),)
    image = xen_like(mb2_header(*tags))
    plan = multiboot2.plan(request(image, mem_min=mem_min))
    assert _segments(plan)["kernel"].mem == expected
    assert mbi_tags(mbi_of(plan))[21] == [struct.pack("<I", expected)]


def test_relocation_respects_max_addr_and_reports_no_room():
    tags = (htag(10, struct.pack("<IIII", 0x200000, 0x9FFFFFF, 0x200000, 2), True),)
    plan = multiboot2.plan(request(xen_like(mb2_header(*tags))))
    kernel = _segments(plan)["kernel"]
    assert kernel.mem == 0x9E00000 and kernel.mem + kernel.memsz <= 0xA000000
    with pytest.raises(PlacementError, match=r"relocatable within \[0x200000, 0xffffffff\]"):
        multiboot2.plan(request(xen_like(), mem_max=0x1FFFFF))


def test_everything_stays_below_4g_and_above_1m_on_a_big_machine():
    big = machine_file.from_dict({"memory": [
        {"start": "0x0", "end": "0x9ffff", "type": "System RAM"},
        {"start": "0x100000", "end": "0x7fffffff", "type": "System RAM"},
        {"start": "0x100000000", "end": "0x47fffffff", "type": "System RAM"},
    ]})
    mods = [Module("m", b"x" * 5000, "m")]
    plan = multiboot2.plan(request(xen_like(), machine=big, modules=mods))
    for s in plan.segments:
        assert 0x100000 <= s.mem and s.mem + s.memsz <= 0x80000000, s


def test_fixed_images_must_be_linked_in_free_ram_above_1m():
    low = elf32([(0x80000, image_body(None, mb2_header()), 0x4000)], 0x80000)
    with pytest.raises(ImageFormatError, match="linked at 0x80000, inside the first MiB"):
        multiboot2.plan(request(low))
    hole = elf32([(0x3FFF0000, image_body(None, mb2_header()), 0x4000)], 0x3FFF0000)
    with pytest.raises(PlacementError, match="not relocatable and must be loaded at 0x3fff0000-0x3fff3fff"):
        multiboot2.plan(request(hole))
    high = bytearray(make_elf_vmlinux([(0x1000000, image_body(None, mb2_header()), 0x4000)], 0x1000000))
    struct.pack_into("<Q", high, 24, 0x100000000)  # e_entry
    struct.pack_into("<QQ", high, 64 + 16, 0x100000000, 0x100000000)  # p_vaddr, p_paddr
    high = bytes(high)
    with pytest.raises(ImageFormatError, match="above 4 GiB"):
        multiboot2.plan(request(high))


def test_refusals_for_crash_initrd_and_too_many_modules():
    with pytest.raises(UsageError, match="dom0's kernel must be the first --module"):  # -p: test_xen_crash_kernel
        multiboot2.plan(request(xen_like(), crash=True))
    with pytest.raises(UsageError, match="--initrd is for Linux"):
        multiboot2.plan(request(xen_like(), initrd=b"x"))
    mods = [Module(f"m{i}", b"x", f"m{i}") for i in range(14)]
    with pytest.raises(UsageError, match="17 segments; kexec_load takes at most 16"):
        multiboot2.plan(request(xen_like(), modules=mods))
    with pytest.raises(UsageError, match="NUL"):
        multiboot2.plan(request(xen_like(), cmdline="a\0b"))


# --- the CLI ------------------------------------------------------------------------------

def test_cli_dry_run_json_for_both_types(capsys, machine_file, tmp_path):
    xen = tmp_path / "xen.gz"
    xen.write_bytes(gzip.compress(xen_like()))
    dom0 = tmp_path / "vmlinuz"
    dom0.write_bytes(b"D" * 10000)
    for forced, kind in ((None, "multiboot2-x86"), ("multiboot-x86", "multiboot-x86")):
        argv = ["-l", str(xen), "--machine", str(machine_file), "--json", "--append", "console=com1",
                "--module", f"{dom0} root=/dev/sda"]
        if forced:
            argv += ["-t", forced]
        assert cli.main(argv) == 0, capsys.readouterr().err
        doc = json.loads(capsys.readouterr().out)
        assert doc["type"] == kind and doc["backend"] == "kexec_load"
        assert sorted(s["role"] for s in doc["segments"]) == ["kernel", "mbi", "module", "purgatory"]
        assert doc["cmdline"] == f"{xen} console=com1"
        assert all(int(s["mem"], 16) >= 0x100000 for s in doc["segments"])
    assert cli.main(["-p", str(xen), "--machine", str(machine_file)]) != 0
    assert "crash" in capsys.readouterr().err


def test_hostile_headers_give_one_line_errors_only():
    """Random corruption of the ELF and both Multiboot headers: a plan or a KexecError,
    never another exception."""
    import random

    from pykexec.errors import KexecError
    from pykexec.images import multiboot

    rng = random.Random(4)
    base = xen_like()
    for _ in range(400):
        data = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            pos = rng.choice([rng.randrange(0, 0x80), rng.randrange(0x108, 0x110), rng.randrange(0x120, 0x1A0)])
            data[pos] = rng.randrange(256)
        # Keep both checksums valid so that the corruption reaches the tag parsers.
        magic, flags = struct.unpack_from("<II", data, 0x108)
        struct.pack_into("<I", data, 0x110, -(magic + flags) & 0xFFFFFFFF)
        magic, arch, length = struct.unpack_from("<III", data, 0x118)
        struct.pack_into("<I", data, 0x124, -(magic + arch + length) & 0xFFFFFFFF)
        for loader in (multiboot2, multiboot):
            if loader.probe(bytes(data)) is not None:
                continue
            try:
                loader.plan(request(bytes(data)))
            except KexecError:
                pass
