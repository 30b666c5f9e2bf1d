"""Image probing and Linux load plans on synthetic images and machines."""

import hashlib
import struct
from pathlib import Path

import pytest

from pykexec import images
from pykexec import machine_file
from pykexec.errors import ImageFormatError, PlacementError, PlanError, UsageError
from pykexec.images import bzimage, elf
from pykexec.request import LoadRequest
from pykexec.layouts import boot_params as bp
from pykexec.plan import LoadPlan, Segment
from pykexec.backends.linux import check_segments
from pykexec.purgatory import Purgatory

from support.synth_images import MACHINE_1G, make_bzimage, make_elf_vmlinux

MACHINE = machine_file.from_dict(MACHINE_1G)


def request(kernel: bytes, **kw) -> LoadRequest:
    return LoadRequest(kernel_path=Path("kernel"), kernel=kernel, machine=kw.pop("machine", MACHINE), **kw)


@pytest.mark.parametrize("change,reason", [
    (dict(version=0x020B), "older than 2.12"),
    (dict(loadflags=0), "zImage"),
    (dict(xloadflags=bp.XLF_KERNEL_64), "64-bit entry"),
    (dict(kernel_alignment=0x300000), "power of two"),
])
def test_bzimage_probe_rejections(change, reason):
    assert reason in bzimage.probe(make_bzimage(**change))


def test_bzimage_probe_broken_headers():
    good = make_bzimage()
    assert bzimage.probe(good) is None
    assert "HdrS" in bzimage.probe(good[:0x202] + b"XXXX" + good[0x206:])
    assert "0xaa55" in bzimage.probe(good[:0x1FE] + b"\0\0" + good[0x200:])
    assert "too short" in bzimage.probe(good[:0x100])
    assert "beyond the end" in bzimage.probe(good[:0xA00])


def test_select_and_forced_type():
    assert images.select(make_bzimage()).name == "bzImage64"
    assert images.select(make_elf_vmlinux([(0x1000000, b"x" * 100, 0x2000)], 0x1000000)).name == "elf-x86_64"
    with pytest.raises(ImageFormatError, match="cannot determine the image type"):
        images.select(b"garbage" * 100)
    with pytest.raises(ImageFormatError, match="not a elf-x86_64 image.*looks like bzImage64"):
        images.select(make_bzimage(), "elf-x86_64")
    with pytest.raises(UsageError, match="unknown image type"):
        images.select(make_bzimage(), "nbi-x86")


def test_bzimage_plan_layout():
    body = bytes(range(256)) * 64
    initrd = b"I" * 300000
    plan = bzimage.plan(request(make_bzimage(body=body, init_size=0x1000000), initrd=initrd,
                                cmdline="console=ttyS0 hello"))
    check_segments(plan, MACHINE)
    roles = {s.role: s for s in plan.segments}
    assert set(roles) == {"kernel", "initrd", "cmdline", "boot_params", "purgatory"}
    k = roles["kernel"]
    assert k.data == body and k.memsz == 0x1000000 and k.mem % 0x200000 == 0 and k.mem >= 0x1000000
    assert plan.kernel_entry == k.mem + 0x200
    assert roles["cmdline"].data == b"console=ttyS0 hello\0"
    page = roles["boot_params"].data
    assert struct.unpack_from("<I", page, 0x228)[0] == roles["cmdline"].mem
    assert struct.unpack_from("<II", page, 0x218) == (roles["initrd"].mem, len(initrd))
    # initrd ends below initrd_addr_max; everything above 1 MiB and in RAM
    assert roles["initrd"].mem + len(initrd) - 1 <= 0x7FFFFFFF
    assert all(s.mem >= 0x100000 for s in plan.segments)
    # purgatory carries the digests of every other segment and enters at its entry offset
    purg = Purgatory.load()
    assert plan.entry == roles["purgatory"].mem + purg.entry_offset
    blob = roles["purgatory"].data
    for s in plan.segments:
        if s.role != "purgatory":
            assert hashlib.sha256(bytes(s.data)).digest() in blob
            assert struct.pack("<QQ", s.mem, s.bufsz) + hashlib.sha256(bytes(s.data)).digest() in blob


def test_bzimage_plan_respects_mem_window():
    plan = bzimage.plan(request(make_bzimage(), initrd=b"x" * 5000, mem_min=0x8000000, mem_max=0xFFFFFFF))
    assert all(0x8000000 <= s.mem and s.mem + s.memsz <= 0x10000000 for s in plan.segments)
    with pytest.raises(PlacementError, match="no room for the kernel"):
        bzimage.plan(request(make_bzimage(init_size=0x4000000), mem_min=0x8000000, mem_max=0x9FFFFFF))


def test_cmdline_too_long_is_refused():
    with pytest.raises(UsageError, match="at most 16"):
        bzimage.plan(request(make_bzimage(cmdline_size=16), cmdline="x" * 17))


def test_non_relocatable_kernel_goes_to_pref_address():
    plan = bzimage.plan(request(make_bzimage(relocatable=0)))
    (k,) = [s for s in plan.segments if s.role == "kernel"]
    assert k.mem == 0x1000000


def test_elf_plan_loads_at_paddr_and_merges_shared_pages():
    text = b"T" * 0x1800
    data = b"D" * 0x100
    vmlinux = make_elf_vmlinux([(0x1000000, text, 0x1800), (0x1001800, data, 0x3000)], entry=0x1000000)
    plan = elf.plan(request(vmlinux, cmdline="root=/dev/vda"))
    check_segments(plan, MACHINE)
    kern = [s for s in plan.segments if s.role == "kernel"]
    assert len(kern) == 1 and kern[0].mem == 0x1000000 and kern[0].memsz == 0x5000
    assert kern[0].data[:0x1800] == text and kern[0].data[0x1800:0x1900] == data
    assert plan.kernel_entry == 0x1000000
    page = [s for s in plan.segments if s.role == "boot_params"][0].data
    assert page[0x202:0x206] == b"HdrS"


def test_elf_rejects_entry_outside_and_bad_phdrs():
    with pytest.raises(ImageFormatError, match="outside every PT_LOAD"):
        elf.plan(request(make_elf_vmlinux([(0x1000000, b"x", 0x1000)], entry=0x5000000)))
    broken = bytearray(make_elf_vmlinux([(0x1000000, b"x" * 16, 0x1000)], entry=0x1000000))
    struct.pack_into("<Q", broken, 64 + 32, 1 << 40)  # p_filesz far beyond the file
    with pytest.raises(ImageFormatError, match="beyond the file"):
        elf.plan(request(bytes(broken)))
    with pytest.raises(PlacementError, match="not free RAM"):
        elf.plan(request(make_elf_vmlinux([(0x50000000, b"x", 0x1000)], entry=0x50000000)))


def test_validate_names_the_broken_rule():
    def plan_of(*segs, entry=0x100000):
        return LoadPlan(image_type="t", backend="kexec_load", entry=entry, segments=list(segs))

    ok = Segment("a", 0x100000, 0x1000, b"x")
    check_segments(plan_of(ok), MACHINE)
    with pytest.raises(PlanError, match="page aligned"):
        check_segments(plan_of(Segment("a", 0x100800, 0x1000)), MACHINE)
    with pytest.raises(PlanError, match="overlaps"):
        check_segments(plan_of(ok, Segment("b", 0x100000, 0x2000)), MACHINE)
    with pytest.raises(PlanError, match="not inside System RAM"):
        check_segments(plan_of(Segment("a", 0x9F000, 0x2000), entry=0x9F000), MACHINE)
    with pytest.raises(PlanError, match="entry point"):
        check_segments(plan_of(ok, entry=0x200000), MACHINE)
    with pytest.raises(PlanError, match="larger than memsz"):
        check_segments(plan_of(Segment("a", 0x100000, 0x1000, b"x" * 0x1001)), MACHINE)
    with pytest.raises(PlanError, match="at most 16"):
        check_segments(plan_of(*[Segment("s", 0x100000 + i * 0x1000, 0x1000) for i in range(17)]), MACHINE)
