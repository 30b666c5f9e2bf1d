"""Multiboot 1 and 2 end to end: a Linux guest loads tests/vm/mbtest (a tiny 32-bit
kernel with both headers, built here with as/ld) with two modules and jumps to it
through purgatory's JUMP_32 path. mbtest prints its registers and everything the boot
information points at on COM1; we check that against the plan pykexec printed in the
same guest (--dry-run --json) and against the guest's firmware memory map.

Multiboot 2: the image is relocatable (prefers high memory), so this also checks the
relocation, the shifted ENTRY_ADDRESS and LOAD_BASE_ADDR; the received MBI must equal
the planned one byte for byte. Multiboot 1: loaded at its link address (16 MiB); the
boot information is reassembled from what mbtest dumps and must equal the planned
segment, and is checked field by field.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from support.testbed.assets import Assets
from support.testbed.guest import run_guest_script
from support.testbed.qemu import GuestRun

MBTEST_DIR = Path(__file__).resolve().parent / "mbtest"
LINK_ADDR = 0x1000000
ARGS = "console=com1 mbtest.arg=1 quoted=\"x y\""
MOD1_ARGS = "root=/dev/sda ro"
MB2_MAGIC, MB1_MAGIC = 0x36D76289, 0x2BADB002
MB_TYPES = {"System RAM": 1, "Reserved": 2, "ACPI Tables": 3, "ACPI Non-volatile Storage": 4,
            "Unusable memory": 5}


@pytest.fixture(scope="module")
def mbtest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mbtest built from source: an ELF32 with one PT_LOAD at 16 MiB."""
    import os

    if not (shutil.which("as") and shutil.which("ld")):
        if os.environ.get("CI"):
            pytest.fail("GNU as/ld are needed to build tests/vm/mbtest", pytrace=False)
        pytest.skip("GNU as/ld are needed to build tests/vm/mbtest")
    out = tmp_path_factory.mktemp("mbtest")
    obj, elf = out / "mbtest.o", out / "mbtest"
    subprocess.run(["as", "--32", "-o", str(obj), str(MBTEST_DIR / "mbtest.S")], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-T", str(MBTEST_DIR / "mbtest.lds"), "-z", "noexecstack",
                    "--build-id=none", "-z", "max-page-size=0x1000", "-o", str(elf), str(obj)], check=True)
    return elf


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Two modules: 5000 bytes (not a page multiple) and 16 bytes."""
    d = tmp_path_factory.mktemp("mods")
    data = {"mod1": hashlib.sha256(b"m1").digest() * 156 + b"tail0123", "mod2": b"second module!!\n"}
    for name, blob in data.items():
        (d / name).write_bytes(blob)
    return data


def _run(assets: Assets, log_dir: Path, mbtest: Path, mods: dict[str, bytes], image_type: str) -> GuestRun:
    files: dict[str, Path | str | bytes] = {"/boot/mbtest": mbtest}
    for name, blob in mods.items():
        files[f"/boot/{name}"] = blob
    opts = (f"-t {image_type} -l /boot/mbtest --append '{ARGS}' "
            f"--module '/boot/mod1 {MOD1_ARGS}' --module /boot/mod2")
    script = f"""
for d in /sys/firmware/memmap/*; do echo "MEMMAP $(cat $d/start) $(cat $d/end) $(cat $d/type)"; done
pykexec --dry-run --json {opts} > /tmp/plan.json; echo PLAN-RC=$?
echo "PLAN-JSON $(python3 -c 'import json; print(json.dumps(json.load(open("/tmp/plan.json"))))')"
pykexec -d {opts}; echo LOAD-RC=$?
drain-console
pykexec -e
"""
    return run_guest_script(script, assets, extra_files=files, timeout=180, until="MBTEST-END",
                            log_path=log_dir / "console.log")


class Received:
    """What mbtest printed: registers and the dumped regions {addr: bytes}."""

    def __init__(self, run: GuestRun) -> None:
        line = run.expect("MBTEST magic=")
        m = re.search(r"magic=0x(\w+) mbi=0x(\w+) base=0x(\w+) cr0=0x(\w+) eflags=0x(\w+)", line)
        assert m, line
        self.magic, self.mbi, self.base, self.cr0, self.eflags = (int(x, 16) for x in m.groups())
        self.dumps: list[tuple[int, bytes]] = []
        for dl in run.lines_with("MBDUMP "):
            mm = re.search(r"MBDUMP 0x(\w+) 0x(\w+) ([0-9a-f]*)", dl)
            assert mm, dl
            addr, size, hexdata = int(mm.group(1), 16), int(mm.group(2), 16), mm.group(3)
            data = bytes.fromhex(hexdata)
            assert len(data) == size, f"truncated dump line {dl[:80]}"
            self.dumps.append((addr, data))

    def at(self, addr: int) -> bytes:
        return next(d for a, d in self.dumps if a == addr)


def _plan(run: GuestRun) -> dict:
    assert "PLAN-RC=0" in run, run.describe()
    assert "LOAD-RC=0" in run, run.describe()
    return json.loads(run.expect("PLAN-JSON ").split("PLAN-JSON ", 1)[1])


def _memmap(run: GuestRun) -> list[tuple[int, int, int]]:
    out = []
    for line in run.lines_with("MEMMAP "):
        _, start, end, kind = line.split(" ", 3)
        out.append((int(start, 16), int(end, 16) - int(start, 16) + 1, MB_TYPES.get(kind.strip(), 2)))
    assert out, "no /sys/firmware/memmap in the guest"
    merged: list[tuple[int, int, int]] = []  # pykexec's map joins adjacent ranges of one type
    for base, length, kind in sorted(out):
        if merged and merged[-1][0] + merged[-1][1] == base and merged[-1][2] == kind:
            merged[-1] = (merged[-1][0], merged[-1][1] + length, kind)
        else:
            merged.append((base, length, kind))
    return merged


def _common_checks(run: GuestRun, got: Received, plan: dict, magic: int) -> dict[str, list[dict]]:
    assert got.magic == magic, run.describe()
    assert got.cr0 & 1 and not got.cr0 & 0x80000000, f"expected protected mode without paging: cr0={got.cr0:#x}"
    assert not got.eflags & 0x200, "interrupts must be off at entry"
    run.expect("pykexec purgatory: verified")  # -d: purgatory checked every segment first
    roles: dict[str, list[dict]] = {}
    for s in plan["segments"]:
        mem, memsz = int(s["mem"], 16), int(s["memsz"], 16)
        assert 0x100000 <= mem and mem + memsz <= 1 << 32, f"{s['role']} at {mem:#x}: outside [1 MiB, 4 GiB)"
        roles.setdefault(s["role"], []).append(s)
    mbi = roles["mbi"][0]
    assert got.mbi == int(mbi["mem"], 16)
    # The BIOS data area is intact: base memory size (KiB) at 0x413, as the BIOS set it.
    bda = got.at(0x400)
    assert 600 <= struct.unpack_from("<H", bda, 0x13)[0] <= 640, bda.hex()
    return roles


def _check_module_dumps(got: Received, modules_seen: list[tuple[int, int, bytes]], mods: dict[str, bytes],
                        roles: dict[str, list[dict]]) -> None:
    """modules_seen: (start, end, cmdline) in MBI order."""
    assert [c for _, _, c in modules_seen] == [f"/boot/mod1 {MOD1_ARGS}".encode(), b"/boot/mod2"]
    module_mems = {int(s["mem"], 16) for s in roles["module"]}
    for (start, end, _), blob in zip(modules_seen, mods.values()):
        assert start % 4096 == 0 and start in module_mems
        assert end - start == len(blob)
        assert got.at(start) == blob[:16]


def test_multiboot2_mbi_received_as_planned(pykexec_assets: Assets, vm_log_dir: Path, mbtest: Path,
                                             modules: dict[str, bytes]) -> None:
    run = _run(pykexec_assets, vm_log_dir, mbtest, modules, "multiboot2-x86")
    plan = _plan(run)
    got = Received(run)
    roles = _common_checks(run, got, plan, MB2_MAGIC)
    mbi_seg = roles["mbi"][0]
    mbi = got.at(got.mbi)
    # Byte for byte what was planned; total_size == bufsz.
    assert len(mbi) == int(mbi_seg["bufsz"], 16) == struct.unpack_from("<I", mbi)[0]
    assert hashlib.sha256(mbi).hexdigest() == mbi_seg["sha256"]

    # Relocated as the RELOCATABLE tag prefers: high, 2 MiB aligned; entered at the
    # shifted ENTRY_ADDRESS (mbtest printed where it runs).
    kernel = int(roles["kernel"][0]["mem"], 16)
    assert kernel != LINK_ADDR and kernel % 0x200000 == 0 and kernel > 0x20000000
    assert got.base == kernel

    tags: dict[int, list[bytes]] = {}
    pos = 8
    while pos < len(mbi):
        kind, size = struct.unpack_from("<II", mbi, pos)
        tags.setdefault(kind, []).append(mbi[pos + 8:pos + size])
        if kind == 0:
            assert size == 8 and pos + 8 == len(mbi)
            break
        pos += (size + 7) & ~7
    assert tags[1] == [f"/boot/mbtest {ARGS}".encode() + b"\0"]
    assert tags[2][0].startswith(b"pykexec ")
    assert struct.unpack("<I", tags[21][0]) == (kernel,)
    assert 21 in tags and 4 in tags and 6 in tags
    assert not any(t in tags for t in (11, 12, 17, 18, 19, 20)), "no EFI tags"
    seen = [(*struct.unpack_from("<II", t), t[8:].rstrip(b"\0")) for t in tags[3]]
    _check_module_dumps(got, seen, modules, roles)
    entry_size, version = struct.unpack_from("<II", tags[6][0])
    assert (entry_size, version) == (24, 0)
    mmap = [struct.unpack_from("<QQI", tags[6][0], 8 + 24 * i) for i in range((len(tags[6][0]) - 8) // 24)]
    assert mmap == _memmap(run)
    lower, upper = struct.unpack("<II", tags[4][0])
    assert 600 <= lower <= 640 and upper > 500 * 1024


def test_multiboot1_mbi_received_as_planned(pykexec_assets: Assets, vm_log_dir: Path, mbtest: Path,
                                             modules: dict[str, bytes]) -> None:
    run = _run(pykexec_assets, vm_log_dir, mbtest, modules, "multiboot-x86")
    plan = _plan(run)
    got = Received(run)
    roles = _common_checks(run, got, plan, MB1_MAGIC)
    assert got.base == LINK_ADDR == int(roles["kernel"][0]["mem"], 16)
    mbi_seg = roles["mbi"][0]
    start, size = got.mbi, int(mbi_seg["bufsz"], 16)

    # Reassemble the boot information segment from the regions mbtest followed.
    image = bytearray(size)
    for addr, data in got.dumps:
        if start <= addr < start + size:
            image[addr - start:addr - start + len(data)] = data
    assert hashlib.sha256(bytes(image)).hexdigest() == mbi_seg["sha256"]

    info = got.at(start)
    flags, mem_lower, mem_upper = struct.unpack_from("<III", info)
    assert flags == 0x1 | 0x4 | 0x8 | 0x40 | 0x200  # MEMORY, CMDLINE, MODS, MEM_MAP, BOOT_LOADER_NAME
    assert 600 <= mem_lower <= 640 and mem_upper > 500 * 1024
    cmdline_addr, mods_count, mods_addr = struct.unpack_from("<III", info, 16)
    mmap_length, mmap_addr = struct.unpack_from("<II", info, 44)
    (name_addr,) = struct.unpack_from("<I", info, 64)
    assert got.at(cmdline_addr) == f"/boot/mbtest {ARGS}".encode() + b"\0"
    assert got.at(name_addr).startswith(b"pykexec ")
    assert mods_count == 2
    mods = got.at(mods_addr)
    seen = []
    for i in range(mods_count):
        mod_start, mod_end, string, reserved = struct.unpack_from("<IIII", mods, 16 * i)
        assert reserved == 0
        seen.append((mod_start, mod_end, got.at(string).rstrip(b"\0")))
    _check_module_dumps(got, seen, modules, roles)
    raw = got.at(mmap_addr)
    assert len(raw) == mmap_length and mmap_length % 24 == 0
    entries = [struct.unpack_from("<IQQI", raw, 24 * i) for i in range(mmap_length // 24)]
    assert all(e[0] == 20 for e in entries)
    assert [e[1:] for e in entries] == _memmap(run)
