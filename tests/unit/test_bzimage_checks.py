"""What a bzImage load refuses before any syscall: a file cut short of what its setup
header declares, a payload outside the kernel or in no format Linux decompresses, and a
command line longer than the kernel's cmdline_size (the kernel and kexec-tools refuse it
too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pykexec import machine_file
from pykexec.errors import ImageFormatError, UsageError
from pykexec.images import bzimage, elf
from pykexec.layouts import boot_params as bp
from pykexec.request import LoadRequest

from support.synth_images import (MACHINE_1G, PAYLOAD_OFFSET, ZSTD_PAYLOAD, make_bzimage, make_elf_vmlinux,
                                  make_kernel_shaped_bzimage, with_header_field)

MACHINE = machine_file.from_dict(MACHINE_1G)
CRASH_MACHINE = machine_file.from_dict({**MACHINE_1G, "crash_kernel": {"start": "0x20000000", "end": "0x2fffffff"}})


def request(kernel: bytes, *, machine=MACHINE, **kw) -> LoadRequest:
    return LoadRequest(kernel_path=Path("vmlinuz"), kernel=kernel, machine=machine, **kw)


def test_real_shaped_image_passes_with_its_signature():
    image = make_kernel_shaped_bzimage()
    header = bzimage.check_bzimage(image, "vmlinuz")
    assert header.syssize and header.payload_length == len(ZSTD_PAYLOAD)
    plan = bzimage.plan(request(image, cmdline="console=ttyS0"))
    kernel = next(s for s in plan.segments if s.role == "kernel")
    assert bytes(kernel.data) == image[bp.setup_size(header):]  # loaded as before, signature included
    assert bzimage.check_bzimage(make_kernel_shaped_bzimage(tail=b""), "vmlinuz").syssize == header.syssize


def test_image_cut_short_names_both_sizes():
    image = make_kernel_shaped_bzimage(tail=b"")
    cut = image[:len(image) - 100]
    with pytest.raises(ImageFormatError, match=rf"^vmlinuz: bzImage cut short: the setup header says "
                                               rf"{len(image)} bytes, the file has {len(cut)}$"):
        bzimage.check_bzimage(cut, "vmlinuz")
    with pytest.raises(ImageFormatError, match="bzImage cut short"):
        bzimage.plan(request(cut))


def test_payload_outside_the_kernel():
    image = make_kernel_shaped_bzimage()
    kernel = bzimage.parse(image).header.syssize * 16
    with pytest.raises(ImageFormatError, match=rf"^vmlinuz: the setup header puts the payload \(payload_offset "
                                               rf"{PAYLOAD_OFFSET:#x}, payload_length 0x100000\) past the end of "
                                               rf"the {kernel:#x}-byte kernel$"):
        bzimage.check_bzimage(with_header_field(image, "payload_length", 0x100000), "vmlinuz")
    with pytest.raises(ImageFormatError, match="payload_offset 0xfffffff0.* past the end"):
        bzimage.check_bzimage(with_header_field(image, "payload_offset", 0xFFFFFFF0), "vmlinuz")


def test_payload_without_known_magic():
    image = make_kernel_shaped_bzimage(b"\0\0\0\0" + bytes(0x1000))
    with pytest.raises(ImageFormatError, match=r"^vmlinuz: the payload at file offset 0xccc starts with 00000000: "
                                               r"neither a compression Linux decompresses \(gzip, bzip2, lzma, xz, "
                                               r"lzo, lz4, zstd\) nor ELF$"):
        bzimage.check_bzimage(image, "vmlinuz")


@pytest.mark.parametrize("magic", [*bzimage.COMPRESSION_MAGICS, b"\x7fELF"])
def test_every_format_linux_decompresses(magic):
    bzimage.check_bzimage(make_kernel_shaped_bzimage(magic + bytes(64)), "vmlinuz")


def test_sizes_a_header_leaves_zero_state_nothing():
    # make_bzimage leaves syssize and the payload fields 0, as no real kernel does.
    assert bzimage.check_bzimage(make_bzimage(), "k").syssize == 0
    undeclared = with_header_field(make_kernel_shaped_bzimage(b"\0" * 64), "payload_length", 0)
    assert bzimage.check_bzimage(undeclared, "k").payload_length == 0


def test_not_a_bzimage_is_said_as_before():
    with pytest.raises(ImageFormatError, match=r"^k: boot protocol 2.11 is older than 2.12$"):
        bzimage.check_bzimage(make_bzimage(version=0x020B), "k")


# --- command line ------------------------------------------------------------------------

def test_cmdline_up_to_cmdline_size_passes_one_more_is_refused():
    header = bzimage.check_bzimage(make_kernel_shaped_bzimage(cmdline_size=2047), "k")
    bp.check_cmdline(header, b"x" * 2047)
    with pytest.raises(UsageError, match=r"^command line is 2048 bytes; this kernel accepts at most 2047$"):
        bp.check_cmdline(header, b"x" * 2048)
    with pytest.raises(UsageError, match="NUL"):
        bp.check_cmdline(header, b"a\0b")


def test_file_load_keeps_room_for_the_nul_and_elfcorehdr():
    header = bzimage.check_bzimage(make_kernel_shaped_bzimage(), "k")
    assert bp.cmdline_limit(header, file_load=True) == 2047 - 1 - 30
    bp.check_cmdline(header, b"x" * 2016, file_load=True)
    with pytest.raises(UsageError, match=r"^command line is 2017 bytes; this kernel accepts at most 2016 through "
                                         r"kexec_file_load \(cmdline_size 2047, less the NUL and 30 bytes kept for "
                                         r"elfcorehdr=\)$"):
        bp.check_cmdline(header, b"x" * 2017, file_load=True)


def test_before_protocol_2_06_the_limit_is_255():
    header = bp.SetupHeader(version=0x0205, cmdline_size=4096)
    assert bp.cmdline_limit(header) == bp.cmdline_limit(header, file_load=True) == 255
    with pytest.raises(UsageError, match="256 bytes; this kernel accepts at most 255"):
        bp.check_cmdline(header, b"x" * 256)


def test_a_100k_command_line_is_refused_by_every_linux_loader():
    huge = "x" * 100_000
    with pytest.raises(UsageError, match="100000 bytes; this kernel accepts at most 2047"):
        bzimage.plan(request(make_kernel_shaped_bzimage(), cmdline=huge))
    vmlinux = make_elf_vmlinux([(0x1000000, b"\x90" * 64, 0x2000)], 0x1000000)
    with pytest.raises(UsageError, match="100000 bytes; this kernel accepts at most 2047"):
        elf.plan(request(vmlinux, cmdline=huge))


def test_crash_load_counts_what_pykexec_appends():
    # 2040 bytes fit alone; with " elfcorehdr=0x..." they do not.
    req = request(make_kernel_shaped_bzimage(), machine=CRASH_MACHINE, cmdline="x" * 2040, crash=True)
    with pytest.raises(UsageError, match=r"^command line with the crash kernel's additions is 20[0-9]{2} bytes; "
                                         r"this kernel accepts at most 2047$"):
        bzimage.plan(req)
    plan = bzimage.plan(request(make_kernel_shaped_bzimage(), machine=CRASH_MACHINE, cmdline="x" * 2000, crash=True))
    assert len(plan.cmdline) <= 2047 and "elfcorehdr=" in plan.cmdline
