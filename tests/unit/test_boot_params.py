"""boot_params layout pinned to the offsets of Linux's zero-page.rst, and the bytes we build."""

import ctypes
import json
import struct

import pytest

from pykexec import machine_file, probe
from pykexec.images import bzimage
from pykexec.request import LoadRequest
from pykexec.layouts import boot_params as bp
from pykexec.images.bzimage import header_from_image
from pykexec.linux_boot import build_boot_params
from pykexec.memory import Range

from support.synth_images import MACHINE_1G, make_bzimage

# (field, offset) pairs from Documentation/arch/x86/zero-page.rst and boot.rst
ZERO_PAGE_OFFSETS = [
    ("screen_info", 0x000), ("apm_bios_info", 0x040), ("tboot_addr", 0x058), ("ist_info", 0x060),
    ("acpi_rsdp_addr", 0x070), ("hd0_info", 0x080), ("sys_desc_table", 0x0A0),
    ("ext_ramdisk_image", 0x0C0), ("ext_ramdisk_size", 0x0C4), ("ext_cmd_line_ptr", 0x0C8),
    ("cc_blob_address", 0x13C), ("edid_info", 0x140), ("efi_info", 0x1C0), ("alt_mem_k", 0x1E0),
    ("scratch", 0x1E4), ("e820_entries", 0x1E8), ("eddbuf_entries", 0x1E9),
    ("edd_mbr_sig_buf_entries", 0x1EA), ("kbd_status", 0x1EB), ("secure_boot", 0x1EC),
    ("sentinel", 0x1EF), ("hdr", 0x1F1), ("edd_mbr_sig_buffer", 0x290), ("e820_table", 0x2D0),
    ("eddbuf", 0xD00),
]
SETUP_HEADER_OFFSETS = [
    ("setup_sects", 0x1F1), ("root_flags", 0x1F2), ("syssize", 0x1F4), ("vid_mode", 0x1FA),
    ("root_dev", 0x1FC), ("boot_flag", 0x1FE), ("jump", 0x200), ("header", 0x202), ("version", 0x206),
    ("type_of_loader", 0x210), ("loadflags", 0x211), ("code32_start", 0x214), ("ramdisk_image", 0x218),
    ("ramdisk_size", 0x21C), ("heap_end_ptr", 0x224), ("cmd_line_ptr", 0x228), ("initrd_addr_max", 0x22C),
    ("kernel_alignment", 0x230), ("relocatable_kernel", 0x234), ("min_alignment", 0x235),
    ("xloadflags", 0x236), ("cmdline_size", 0x238), ("hardware_subarch", 0x23C), ("payload_offset", 0x248),
    ("payload_length", 0x24C), ("setup_data", 0x250), ("pref_address", 0x258), ("init_size", 0x260),
    ("handover_offset", 0x264), ("kernel_info_offset", 0x268),
]


@pytest.mark.parametrize("name,offset", ZERO_PAGE_OFFSETS)
def test_zero_page_offsets(name, offset):
    assert getattr(bp.BootParams, name).offset == offset


@pytest.mark.parametrize("name,offset", SETUP_HEADER_OFFSETS)
def test_setup_header_offsets(name, offset):
    assert bp.SETUP_HEADER_OFFSET + getattr(bp.SetupHeader, name).offset == offset


def test_sizes():
    assert ctypes.sizeof(bp.BootParams) == 4096
    assert ctypes.sizeof(bp.E820Entry) == 20
    assert ctypes.sizeof(bp.EfiInfo) == 32
    assert bp.ScreenInfo.cl_magic.offset == 0x20 and bp.ScreenInfo.ext_lfb_base.offset == 0x3A


def test_built_zero_page_bytes():
    machine = machine_file.from_dict(dict(MACHINE_1G, acpi_rsdp="0xf5a10"))
    image = make_bzimage()
    header = header_from_image(image)
    page = build_boot_params(header, machine, e820=machine.memory, cmdline_addr=0x1_2345_6000,
                             initrd=Range.sized(0x3F000000, 0x123456), setup_data=0x5000)
    assert len(page) == 4096
    # setup header copied from the image, then our fields
    assert page[0x202:0x206] == b"HdrS"
    assert struct.unpack_from("<H", page, 0x206)[0] == 0x020F
    assert page[0x210] == 0xD0                                      # type_of_loader: kexec
    assert struct.unpack_from("<I", page, 0x228)[0] == 0x23456000   # cmd_line_ptr, low half
    assert struct.unpack_from("<I", page, 0x0C8)[0] == 0x1          # ext_cmd_line_ptr, high half
    assert struct.unpack_from("<II", page, 0x218) == (0x3F000000, 0x123456)  # ramdisk image/size
    assert struct.unpack_from("<II", page, 0x0C0) == (0, 0)
    assert struct.unpack_from("<Q", page, 0x250)[0] == 0x5000       # setup_data chain
    assert struct.unpack_from("<Q", page, 0x070)[0] == 0xF5A10      # acpi_rsdp_addr
    assert struct.unpack_from("<I", page, 0x23C)[0] == 0            # hardware_subarch: PC
    # e820: 7 entries, exactly the machine's map, 20 bytes each
    assert page[0x1E8] == 7
    expected = b"".join(struct.pack("<QQI", int(r["start"], 16), int(r["end"], 16) - int(r["start"], 16) + 1,
                                    {"Reserved": 2, "System RAM": 1}[r["type"]]) for r in MACHINE_1G["memory"])
    assert page[0x2D0:0x2D0 + 7 * 20] == expected
    assert page[0x2D0 + 7 * 20:0x2D0 + 8 * 20] == bytes(20)
    assert page[0x1EF] == 0  # sentinel clear, or the kernel wipes what we set
    # alt_mem_k: RAM from 1 MiB up to 0x3ffe0000, in KiB
    assert struct.unpack_from("<I", page, 0x1E0)[0] == (0x3FFE0000 - 0x100000) // 1024


def test_header_length_follows_jump():
    # An old-protocol image whose header ends early: bytes after it must not be copied.
    image = bytearray(make_bzimage(version=0x0202))
    image[0x201] = 0x26  # header ends at 0x228
    image[0x230:0x234] = b"\xff\xff\xff\xff"
    hdr = header_from_image(bytes(image))
    assert hdr.kernel_alignment == 0 and hdr.version == 0x0202


def test_e820_over_128_entries_goes_to_setup_data():
    regions = [{"start": hex(0x100000 + i * 0x200000), "end": hex(0x100000 + i * 0x200000 + 0xFFFFF),
                "type": "System RAM" if i % 2 == 0 else "Reserved"} for i in range(150)]
    # make gaps so entries do not merge
    regions = [dict(r, end=hex(int(r["end"], 16) - 0x1000)) for r in regions]
    machine = machine_file.from_dict({"memory": regions})
    big = [{"start": "0x40000000", "end": "0x7fffffff", "type": "System RAM"}]
    machine = machine_file.from_dict({"memory": regions + big})
    from pathlib import Path
    req = LoadRequest(kernel_path=Path("k"), kernel=make_bzimage(), machine=machine, cmdline="x")
    plan = bzimage.plan(req)
    (sd,) = [s for s in plan.segments if s.role == "setup_data"]
    (page,) = [s.data for s in plan.segments if s.role == "boot_params"]
    assert page[0x1E8] == 128
    assert struct.unpack_from("<Q", page, 0x250)[0] == sd.mem
    nxt, typ, length = struct.unpack_from("<QII", sd.data, 0)
    assert (nxt, typ, length) == (0, bp.SETUP_E820_EXT, (151 - 128) * 20)


def _fake_efi_sysfs(root):
    (root / "runtime-map").mkdir(parents=True)
    (root / "fw_vendor").write_text("0x7fe9c018\n")
    (root / "runtime").write_text("0x7fe9bb98\n")
    (root / "config_table").write_text("0x7fe9a118\n")
    (root / "systab").write_text("ACPI20=0x7fb7e014\nACPI=0x7fb7e000\nSMBIOS=0x7f98f000\n")
    for i, (t, phys, virt, pages) in enumerate([(5, 0x7f000000, 0xfffffffeee000000, 0x10),
                                               (6, 0x7f100000, 0xfffffffeee100000, 0x20)]):
        d = root / "runtime-map" / str(i)
        d.mkdir()
        for name, value in (("type", t), ("phys_addr", phys), ("virt_addr", virt), ("num_pages", pages),
                            ("attribute", 0x800000000000000F)):
            (d / name).write_text(f"{value:#x}\n")


def test_efi_handover(tmp_path):

    _fake_efi_sysfs(tmp_path)
    running = bytearray(4096)
    struct.pack_into("<IIIIIIII", running, 0x1C0, 0x34364C45, 0x7fe9d018, 48, 1, 0x7e000000, 0x1800, 0, 0)
    efi = probe.read_efi(bytes(running), tmp_path)
    assert efi is not None and efi.smbios == 0x7F98F000 and len(efi.runtime_map) == 2
    assert probe.read_efi(bytes(4096), tmp_path) is None       # booted by BIOS
    assert probe.read_efi(bytes(running), tmp_path / "x") is None
    machine = machine_file.from_dict(MACHINE_1G)._replace(efi=efi)
    from pathlib import Path

    def plan_for(xlf):
        req = LoadRequest(kernel_path=Path("k"), kernel=make_bzimage(xloadflags=xlf), machine=machine, cmdline="x")
        return {s.role: s for s in bzimage.plan(req).segments}

    segs = plan_for(bp.XLF_KERNEL_64 | bp.XLF_CAN_BE_LOADED_ABOVE_4G | bp.XLF_EFI_KEXEC)
    page, sd = segs["boot_params"].data, segs["setup_data"]
    # efi_info: signature and system table kept, memmap pointing at our runtime map
    sig, systab, desc_size, desc_ver, mmap, mmap_size, systab_hi, mmap_hi = struct.unpack_from("<8I", page, 0x1C0)
    assert (sig, systab, desc_size, desc_ver, mmap_size, systab_hi, mmap_hi) == (0x34364C45, 0x7fe9d018, 40, 1, 80, 0, 0)
    assert struct.unpack_from("<Q", page, 0x250)[0] == sd.mem           # setup_data chain head
    nxt, kind, length = struct.unpack_from("<QII", sd.data, 0)
    assert (nxt, kind, length) == (0, bp.SETUP_EFI, 96)
    assert struct.unpack_from("<4Q", sd.data, 16) == (0x7fe9c018, 0x7fe9bb98, 0x7fe9a118, 0x7f98f000)
    off = mmap - sd.mem
    assert struct.unpack_from("<IIQQQQ", sd.data, off) == (5, 0, 0x7f000000, 0xfffffffeee000000, 0x10,
                                                            0x800000000000000F)
    # a kernel without XLF_EFI_KEXEC boots without EFI: no efi_info, no setup_data
    segs = plan_for(bp.XLF_KERNEL_64 | bp.XLF_CAN_BE_LOADED_ABOVE_4G)
    assert "setup_data" not in segs and segs["boot_params"].data[0x1C0:0x1E0] == bytes(32)
