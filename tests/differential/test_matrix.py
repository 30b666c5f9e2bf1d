"""The differential suite: for a matrix of kernels, initrds, machines and options, our
plan against the segments Debian's kexec-tools passes to kexec_load (intercepted, see
oracle.py). Every difference must be one documented in docs/kexec-tools-differences.md;
the test names it by its number there."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from pykexec import images
from pykexec.request import LoadRequest
from pykexec import machine_file
from pykexec.backends.linux import check_segments

from support.oracle import MachineSpec, MemoryRange, make_kcore, run_kexec_tools
from support.oracle_segments import bzimage_payload, roles
from support.testbed.assets import Assets

LOW = MemoryRange(0x0, 0x9FBFF, "System RAM")
RESERVED_LOW = (MemoryRange(0x9FC00, 0x9FFFF, "Reserved"), MemoryRange(0xF0000, 0xFFFFF, "Reserved"))
MACHINES = {
    "512M": (LOW, *RESERVED_LOW, MemoryRange(0x100000, 0x1FFDFFFF, "System RAM"),
             MemoryRange(0x1FFE0000, 0x1FFFFFFF, "Reserved")),
    "1G": (LOW, *RESERVED_LOW, MemoryRange(0x100000, 0x3FFDFFFF, "System RAM"),
           MemoryRange(0x3FFE0000, 0x3FFFFFFF, "Reserved")),
    # RAM above 4 GiB, a PCI hole below it, ACPI tables and NVS.
    "6G": (LOW, *RESERVED_LOW, MemoryRange(0x100000, 0xBFEDFFFF, "System RAM"),
           MemoryRange(0xBFEE0000, 0xBFEFEFFF, "ACPI Tables"), MemoryRange(0xBFEFF000, 0xBFEFFFFF, "ACPI Non-volatile Storage"),
           MemoryRange(0xBFF00000, 0xBFFFFFFF, "Reserved"), MemoryRange(0x100000000, 0x17FFFFFFF, "System RAM")),
}
APPEND = "console=ttyS0 root=/dev/vda1 pykexec.matrix=1"
CASES = [
    # (kernel, machine, initrd size, extra options)
    ("6.1", "1G", 200_000, []),
    ("6.1", "1G", 0, []),
    ("6.1", "512M", 20_000_000, []),
    ("6.1", "6G", 3_000_000, []),
    ("6.1", "6G", 3_000_000, ["--mem-max=0x7fffffff"]),
    ("6.1", "1G", 200_000, ["--mem-min=0x10000000", "--mem-max=0x2fffffff"]),
    ("6.12", "1G", 200_000, []),
    ("6.12", "6G", 3_000_000, []),
    ("6.12", "512M", 0, ["--reuse-cmdline"]),
]


@pytest.fixture(scope="module")
def assets() -> Assets:
    a = Assets()
    a.kernel("6.1")
    a.kernel("6.12")
    return a


def _e820(page: bytes) -> list[tuple[int, int, int]]:
    return [struct.unpack_from("<QQI", page, 0x2D0 + 20 * i) for i in range(page[0x1E8])]


def _window(options: list[str]) -> tuple[int, int]:
    lo, hi = 0, (1 << 64) - 1
    for o in options:
        if o.startswith("--mem-min="):
            lo = int(o.split("=")[1], 0)
        if o.startswith("--mem-max="):
            hi = int(o.split("=")[1], 0)
    return lo, hi


@pytest.mark.parametrize("flavour,machine_name,initrd_size,options", CASES,
                         ids=[f"{k}-{m}-initrd{i}-{'_'.join(o) or 'plain'}" for k, m, i, o in CASES])
def test_plan_matches_kexec_tools(assets: Assets, tmp_path: Path, flavour: str, machine_name: str,
                                  initrd_size: int, options: list[str]) -> None:
    vmlinuz = assets.kernel(flavour).vmlinuz
    kernel = vmlinuz.read_bytes()
    initrd = None
    args = ["-c", "-l", str(vmlinuz), *options]
    if initrd_size:
        initrd = tmp_path / "initrd"
        initrd.write_bytes(bytes((i * 7) & 0xFF for i in range(251)) * (initrd_size // 251))
        args.append(f"--initrd={initrd}")
    reuse = "--reuse-cmdline" in options
    args.append(f"--append={APPEND}")
    spec = MachineSpec(memory=MACHINES[machine_name],
                       cmdline="BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro quiet crashkernel=128M")
    theirs = run_kexec_tools(args, spec)
    assert theirs.load_attempted, theirs.stderr

    machine = machine_file.from_dict(json.loads(spec.to_pykexec_machine_json()), source="matrix machine")
    lo, hi = _window(options)
    cmdline = " ".join(w for w in ([*spec.cmdline.split()] if reuse else [])
                       if not w.startswith(("BOOT_IMAGE=", "crashkernel="))) + (" " if reuse else "") + APPEND
    plan = images.select(kernel).plan(LoadRequest(vmlinuz, kernel, machine, cmdline=cmdline.strip(),
                                                         initrd=initrd.read_bytes() if initrd else None,
                                                         mem_min=lo, mem_max=hi))
    check_segments(plan, machine)
    ours = {s.role: s for s in plan.segments}
    names = roles(theirs, bzimage_payload(kernel), initrd.read_bytes() if initrd else b"\xff")
    t_bp = theirs.segments[names["boot_params"]]

    # Same kernel bytes and reservation (init_size); both inside the window.
    tk = theirs.segments[names["kernel"]]
    assert bytes(ours["kernel"].data) == tk.data and ours["kernel"].memsz == tk.memsz
    for s in plan.segments:
        assert lo <= s.mem and s.mem + s.memsz - 1 <= hi, s
    # Difference 1 (placement order) may move segments; never outside RAM.
    assert machine.memory.is_ram(ours["kernel"].range)
    # Same initrd bytes, below initrd_addr_max in both.
    if initrd:
        ti = theirs.segments[names["initrd"]]
        assert bytes(ours["initrd"].data) == ti.data
        limit = struct.unpack_from("<I", kernel, 0x22C)[0]
        assert ours["initrd"].mem + len(ti.data) - 1 <= limit
    else:
        assert "initrd" not in ours and "initrd" not in names
    # Same command line text (difference 5: its own segment here). Difference 9: they
    # put boot_params and the command line at the top of RAM, above 4 GiB if there is
    # RAM there; we keep both below 4 GiB.
    t_ptr = struct.unpack_from("<I", t_bp.data, 0x228)[0] | struct.unpack_from("<I", t_bp.data, 0xC8)[0] << 32
    off = t_ptr - t_bp.mem
    t_cmd = t_bp.data[off:t_bp.data.index(b"\0", off)]
    if reuse:  # difference 10: 2.0.25 keeps crashkernel= in a reused command line for -l
        t_cmd = b" ".join(w for w in t_cmd.split() if not w.startswith(b"crashkernel="))
    assert bytes(ours["cmdline"].data) == t_cmd + b"\0", (bytes(ours["cmdline"].data), t_cmd)
    assert ours["boot_params"].mem < 1 << 32 and ours["cmdline"].mem < 1 << 32
    # Setup header: only placed fields (ramdisk, cmd_line_ptr, setup_data) and
    # difference 6 (legacy defaults) may differ.
    ob = bytes(ours["boot_params"].data)
    placed = {0x218 + i for i in range(8)} | {0x228 + i for i in range(4)} | {0x250 + i for i in range(8)}
    legacy = {0x1F2, 0x1F3, 0x1FC, 0x1FD, 0x1FE, 0x1FF, 0x211}
    differing = {o for o in range(0x1F1, 0x26C) if ob[o] != t_bp.data[o]}
    assert differing <= placed | legacy, sorted(hex(o) for o in differing - placed - legacy)
    # e820: identical but for difference 2 (their IVT trim of the first entry).
    t_e820, o_e820 = _e820(t_bp.data), _e820(ob)
    assert t_e820[1:] == o_e820[1:] and t_e820[0][0] == 0x400 and o_e820[0][0] == 0
    # Same count: theirs add the RNG seed (difference 3), ours a cmdline page (5).
    assert len(theirs.segments) == len(plan.segments)
