"""Our kexec_load plan against what Debian's kexec-tools passes to the kernel, for the
same kernel, initrd, command line and machine. Every difference is either asserted
equal or named here and explained in docs/kexec-tools-differences.md."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from pykexec import images
from pykexec import machine as machine_mod
from pykexec.plan import Segment, validate

from .oracle import OracleResult, run_kexec_tools
from .test_oracle import APPEND, bzimage_payload, initrd, one_gib_machine, roles, vmlinuz  # noqa: F401

# Setup-header fields that hold addresses of things each tool placed itself.
PLACED_FIELDS = {0x218: 4, 0x228: 4, 0x250: 8}  # ramdisk_image, cmd_line_ptr, setup_data


@pytest.fixture(scope="module")
def both(vmlinuz: Path, initrd: Path) -> tuple[OracleResult, dict[str, Segment], object]:  # noqa: F811
    spec = one_gib_machine()
    theirs = run_kexec_tools(["-c", "-l", str(vmlinuz), f"--initrd={initrd}", f"--append={APPEND}"], spec)
    assert theirs.load_attempted, theirs.stderr
    machine = machine_mod.from_dict(json.loads(spec.to_pykexec_machine_json()), source="oracle machine")
    kernel = vmlinuz.read_bytes()
    req = images.LoadRequest(kernel_path=vmlinuz, kernel=kernel, machine=machine, cmdline=APPEND,
                             initrd_path=initrd, initrd=initrd.read_bytes())
    plan = images.select(kernel).plan(req)
    validate(plan, machine)
    ours = {s.role: s for s in plan.segments}
    return theirs, ours, plan


def test_same_kernel_segment(both, vmlinuz: Path) -> None:  # noqa: F811
    theirs, ours, _ = both
    names = roles(theirs, bzimage_payload(vmlinuz.read_bytes()), b"")
    tk = theirs.segments[names["kernel"]]
    ok = ours["kernel"]
    # Same bytes, same reservation (init_size), same address: both take the highest
    # kernel_alignment-aligned spot.
    assert bytes(ok.data) == tk.data
    assert (ok.mem, ok.memsz) == (tk.mem, tk.memsz)


def test_same_initrd_bytes_different_address(both, initrd: Path) -> None:  # noqa: F811
    theirs, ours, _ = both
    data = initrd.read_bytes()
    (ti,) = [s for s in theirs.segments if s.data == data]
    oi = ours["initrd"]
    assert bytes(oi.data) == ti.data and oi.memsz == ti.memsz
    # Difference 1: placement order. kexec-tools places purgatory and boot_params
    # before the initrd, both top-down; we place the initrd first, so it is highest.
    assert oi.mem + oi.memsz > ti.mem + ti.memsz


def test_boot_params_agree_except_placed_fields_and_e820(both, vmlinuz: Path) -> None:  # noqa: F811
    theirs, ours, _ = both
    names = roles(theirs, bzimage_payload(vmlinuz.read_bytes()), b"")
    tb = theirs.segments[names["boot_params"]].data
    ob = bytes(ours["boot_params"].data)
    differing = {off for off in range(0x1F1, 0x26C) if tb[off] != ob[off]}
    allowed = {off + i for off, n in PLACED_FIELDS.items() for i in range(n)}
    # Difference 6: kexec-tools writes legacy defaults over the image's header
    # (root_flags 0xffff, root_dev 0x0300, loadflags 0, and the high byte of
    # boot_flag); we keep what the image says, as a boot loader should.
    legacy = {0x1F2, 0x1F3, 0x1FC, 0x1FD, 0x1FE, 0x1FF, 0x211}
    assert differing - allowed <= legacy, sorted(hex(o) for o in differing - allowed - legacy)
    image = vmlinuz.read_bytes()
    assert all(ob[off] == image[off] for off in legacy)
    assert (u16(tb, 0x1F2), u16(tb, 0x1FC), tb[0x211]) == (0xFFFF, 0x0300, 0)
    # The command line each points at is the same text.
    t_cmd = u32(tb, 0x228) - theirs.segments[names["boot_params"]].mem
    assert tb[t_cmd:t_cmd + len(APPEND) + 1] == APPEND.encode() + b"\0"
    assert bytes(ours["cmdline"].data) == APPEND.encode() + b"\0"
    # Difference 2: e820. kexec-tools trims the first RAM range to start at 0x400
    # (the IVT); we pass the firmware's map unchanged. Otherwise identical.
    t_e820 = [struct.unpack_from("<QQI", tb, 0x2D0 + 20 * i) for i in range(tb[0x1E8])]
    o_e820 = [struct.unpack_from("<QQI", ob, 0x2D0 + 20 * i) for i in range(ob[0x1E8])]
    assert len(t_e820) == len(o_e820)
    assert t_e820[0] == (0x400, o_e820[0][1] - 0x400, 1) and o_e820[0][0] == 0
    assert t_e820[1:] == o_e820[1:]


def test_rng_seed_is_theirs_only(both) -> None:
    theirs, ours, _ = both
    # Difference 3: kexec-tools adds a SETUP_RNG_SEED setup_data page at the lowest
    # RAM above 1 MiB; we do not (the kernel seeds itself from RDRAND/RDSEED and jitter).
    assert len(theirs.random_segments()) == 1
    assert "setup_data" not in ours


def test_both_enter_through_purgatory_to_startup_64(both) -> None:
    theirs, ours, plan = both
    kernel_entry = ours["kernel"].mem + 0x200
    assert plan.kernel_entry == kernel_entry
    assert ours["purgatory"].range.contains(plan.entry)
    (tp,) = [s for s in theirs.segments if s.contains(theirs.entry)]
    # Their entry64_regs carry rip = kernel + 0x200 too.
    assert struct.pack("<Q", kernel_entry) in tp.data
    # Difference 4: our purgatory is 8 KiB (3 KiB of code) against their 36 KiB.
    assert ours["purgatory"].memsz < tp.memsz


def test_segment_count(both) -> None:
    theirs, ours, _ = both
    # Difference 5: kexec-tools puts the command line inside the boot_params segment;
    # we give it its own page, so we have the same count (5) without the RNG seed.
    assert len(theirs.segments) == 5 and len(ours) == 5
    assert set(ours) == {"kernel", "initrd", "cmdline", "boot_params", "purgatory"}


def u32(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", data, off)[0])


def u16(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<H", data, off)[0])
