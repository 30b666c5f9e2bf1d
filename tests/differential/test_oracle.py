"""Tests proving the kexec-tools oracle on a real Debian kernel.

They need gcc, Debian's /usr/sbin/kexec, strace, and apt (to fetch the current
linux-image-*-cloud-amd64 into <repo>/.cache/oracle/). Anything missing makes
the tests fail with a message saying what to install: a silently skipped
oracle would make every differential test meaningless.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import pytest

from support.oracle import (
    MachineSpec,
    MemoryRange,
    OracleError,
    OracleResult,
    build_shim,
    run_kexec_tools,
)
from support.oracle_machines import APPEND, BASE_MEMORY, CRASH_REGION, crash_machine, one_gib_machine
from support.oracle_segments import (SETUP_RNG_SEED, bzimage_payload, inside, purgatory_digest, ram_ranges, roles,
                                     segment_table, u32, u64)

KEXEC_ARCH_X86_64 = 62 << 16
KEXEC_ON_CRASH = 1


# --------------------------------------------------------------------------
# Pure unit tests of the machine description
# --------------------------------------------------------------------------


def test_iomem_text_matches_kernel_format() -> None:
    text = crash_machine().iomem_text()
    assert text.splitlines()[:6] == [
        "00000000-0009fbff : System RAM",
        "0009fc00-0009ffff : Reserved",
        "000f0000-000fffff : Reserved",
        "00100000-3ffdffff : System RAM",
        "  01000000-01e01fff : Kernel code",
        "  01e02000-025fffff : Kernel data",
    ]
    assert "  30000000-37ffffff : Crash kernel\n" in text
    wide = MachineSpec(memory=(MemoryRange(0x100000000, 0x63FFFFFFF, "System RAM"),))
    assert wide.iomem_text() == "100000000-63fffffff : System RAM\n"


def test_to_pykexec_machine_json() -> None:
    doc = json.loads(crash_machine().to_pykexec_machine_json())
    assert doc["memory"][0] == {"start": "0x0", "end": "0x9fbff", "type": "System RAM"}
    assert doc["memory"][3] == {"start": "0x100000", "end": "0x3ffdffff", "type": "System RAM"}
    assert len(doc["memory"]) == 5  # nested resources are not part of the map
    assert doc["crash_kernel"] == {"start": "0x30000000", "end": "0x37ffffff"}
    assert doc["cmdline"].endswith("crashkernel=128M")
    assert json.loads(one_gib_machine().to_pykexec_machine_json())["crash_kernel"] is None
    with_pci = MachineSpec(memory=BASE_MEMORY + (
        MemoryRange(0xC0000000, 0xFEBFFFFF, "PCI Bus 0000:00"),))
    assert len(json.loads(with_pci.to_pykexec_machine_json())["memory"]) == 5


def test_shim_build_is_cached() -> None:
    assert build_shim() == build_shim()


# --------------------------------------------------------------------------
# kexec -l
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def load_result(vmlinuz: Path, initrd: Path) -> OracleResult:
    return run_kexec_tools(
        ["-c", "-l", str(vmlinuz), f"--initrd={initrd}", f"--append={APPEND}"],
        one_gib_machine())


def test_load_is_captured_and_refused(load_result: OracleResult) -> None:
    r = load_result
    assert r.load_attempted, r.stderr
    assert "kexec_load failed: Operation not permitted" in r.stderr
    assert r.returncode != 0
    assert r.flags == KEXEC_ARCH_X86_64
    assert any(e.startswith("kexec_load ") and e.endswith("-> EPERM") for e in r.events)


def test_load_segments_and_roles(load_result: OracleResult, vmlinuz: Path,
                                 initrd: Path) -> None:
    r = load_result
    image = vmlinuz.read_bytes()
    names = roles(r, bzimage_payload(image), initrd.read_bytes())
    table = segment_table(r, names)
    assert sorted(names) == ["boot_params", "initrd", "kernel", "purgatory", "rng_seed"], table
    assert len(r.segments) == 5, table
    ird = r.segments[names["initrd"]]
    assert ird.bufsz < ird.memsz == (ird.bufsz + 0xFFF) & ~0xFFF
    # kexec-tools hands segments over sorted by address; the RNG seed is the
    # lowest-fit setup_data, the rest are placed top-down below 1 GiB.
    assert [s.mem for s in r.segments] == sorted(s.mem for s in r.segments)
    assert [names[n] for n in ("rng_seed", "kernel", "initrd", "boot_params", "purgatory")] \
        == [0, 1, 2, 3, 4], table

    kernel = r.segments[names["kernel"]]
    kernel_alignment = u32(image, 0x230)
    init_size = u32(image, 0x260)
    assert kernel.mem % kernel_alignment == 0
    assert kernel.memsz == init_size  # room for in-place decompression

    rng = r.segments[names["rng_seed"]]
    assert rng.mem == 0x100000
    assert (u64(rng.data, 0), u32(rng.data, 8), u32(rng.data, 12)) == (0, SETUP_RNG_SEED, 32)
    assert rng.data[16:48] == r.random[-1]
    assert r.random_segments() == [names["rng_seed"]]


def test_load_boot_params(load_result: OracleResult, vmlinuz: Path, initrd: Path) -> None:
    r = load_result
    names = roles(r, bzimage_payload(vmlinuz.read_bytes()), initrd.read_bytes())
    bp = r.segments[names["boot_params"]]
    data = bp.data
    assert data[0x202:0x206] == b"HdrS"
    assert data[0x210] == 0xD0  # type_of_loader: kexec
    cmd_ptr = u32(data, 0x228)
    assert bp.contains(cmd_ptr)
    off = cmd_ptr - bp.mem
    assert data[off:off + len(APPEND) + 1] == APPEND.encode() + b"\0"
    assert data.find(b"/vmlinuz") == -1  # --append replaces, does not reuse /proc/cmdline
    ird = r.segments[names["initrd"]]
    assert (u32(data, 0x218), u32(data, 0x21C)) == (ird.mem, initrd.stat().st_size)
    assert u64(data, 0x250) == r.segments[names["rng_seed"]].mem  # setup_data chain
    # e820 from the synthetic map; the IVT (first KiB) is trimmed off.
    n = data[0x1E8]
    e820 = [struct.unpack_from("<QQI", data, 0x2D0 + 20 * i) for i in range(n)]
    assert e820 == [
        (0x400, 0x9FBFF - 0x400 + 1, 1),
        (0x9FC00, 0x400, 2),
        (0xF0000, 0x10000, 2),
        (0x100000, 0x3FFDFFFF - 0x100000 + 1, 1),
        (0x3FFE0000, 0x20000, 2),
    ]


def test_load_purgatory(load_result: OracleResult, vmlinuz: Path, initrd: Path) -> None:
    r = load_result
    names = roles(r, bzimage_payload(vmlinuz.read_bytes()), initrd.read_bytes())
    purg = r.segments[names["purgatory"]]
    assert purg.contains(r.entry)
    assert (purg.memsz, purg.bufsz) == (0x9000, 0x70E0)
    digest, regions = purgatory_digest(r, names["purgatory"])
    # Relocated purgatory: its sha256_digest and sha256_regions symbols were
    # filled in by kexec-tools over the other four segments.
    assert digest in purg.data
    assert regions in purg.data
    # The entry64 registers hold the kernel's 64-bit entry (load address +
    # 0x200) and rsi = boot_params.
    kernel = r.segments[names["kernel"]]
    assert struct.pack("<Q", kernel.mem + 0x200) in purg.data
    assert struct.pack("<Q", r.segments[names["boot_params"]].mem) in purg.data


def test_load_stays_in_ram(load_result: OracleResult) -> None:
    ram = ram_ranges(one_gib_machine())
    segs = sorted(load_result.segments, key=lambda s: s.mem)
    for seg in segs:
        assert seg.mem % 0x1000 == 0 and seg.memsz % 0x1000 == 0
        assert seg.bufsz <= seg.memsz and len(seg.data) == seg.bufsz
        assert any(inside(seg, lo, hi) for lo, hi in ram), seg
    for a, b in zip(segs, segs[1:]):
        assert a.end <= b.mem


def test_hidden_host_state(load_result: OracleResult) -> None:
    events = load_result.events
    for hidden in ("/sys/firmware/memmap", "/proc/xen", "/dev/fb0",
                   "/sys/firmware/edd", "/sys/kernel/boot_params/data"):
        assert any(e.endswith(f" hide {hidden}") for e in events), hidden
    assert any(e.endswith(" redirect /proc/iomem") for e in events)


def test_load_is_deterministic(vmlinuz: Path, initrd: Path,
                               load_result: OracleResult) -> None:
    args = ["-c", "-l", str(vmlinuz), f"--initrd={initrd}", f"--append={APPEND}"]
    again = run_kexec_tools(args, one_gib_machine())
    assert again.segments == load_result.segments and again.entry == load_result.entry
    other = run_kexec_tools(args, one_gib_machine(), seed=1)
    differing = [i for i, (a, b) in enumerate(zip(load_result.segments, other.segments))
                 if a != b]
    # Only the RNG seed and, through its SHA-256 digest, the purgatory change.
    assert differing == [0, 4]
    assert [(s.mem, s.memsz, s.bufsz) for s in other.segments] == \
        [(s.mem, s.memsz, s.bufsz) for s in load_result.segments]


def test_firmware_memmap_is_used_when_present(vmlinuz: Path, initrd: Path,
                                              load_result: OracleResult) -> None:
    r = run_kexec_tools(
        ["-c", "-l", str(vmlinuz), f"--initrd={initrd}", f"--append={APPEND}"],
        one_gib_machine(firmware_memmap=True))
    assert any(e.endswith(" redirect /sys/firmware/memmap") for e in r.events)
    assert not any(e.endswith(" redirect /proc/iomem") for e in r.events)
    assert [(s.mem, s.memsz) for s in r.segments] == \
        [(s.mem, s.memsz) for s in load_result.segments]


def test_no_real_syscall_reaches_the_kernel(vmlinuz: Path, initrd: Path,
                                            tmp_path: Path) -> None:
    """strace proves the shim answers before any real kexec/reboot syscall."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace not found: needed to prove nothing is loaded (apt-get install strace)")
    for mode in ("-c", "-s"):  # kexec_load, then kexec_file_load
        log = tmp_path / f"strace{mode}.txt"
        r = run_kexec_tools(
            [mode, "-l", str(vmlinuz), f"--initrd={initrd}", f"--append={APPEND}"],
            one_gib_machine(),
            wrapper=[strace, "-f", "-qq", "-o", str(log),
                     "-e", "trace=kexec_load,kexec_file_load,reboot,prctl"])
        text = log.read_text()
        assert "SECCOMP_MODE_FILTER" in text  # the safety net is armed
        assert not re.search(r"\b(kexec_load|kexec_file_load|reboot)\(", text), text
        if mode == "-c":
            assert r.load_attempted
        else:
            assert not r.load_attempted
            assert any(e.startswith("kexec_file_load") and e.endswith("ENOSYS")
                       for e in r.events), r.events


# --------------------------------------------------------------------------
# kexec -p
# --------------------------------------------------------------------------


def test_panic_load(vmlinuz: Path, initrd: Path) -> None:
    machine = crash_machine()
    r = run_kexec_tools(
        ["-c", "-p", str(vmlinuz), f"--initrd={initrd}", f"--append={APPEND}"], machine)
    assert r.load_attempted, r.stderr
    assert r.flags == KEXEC_ARCH_X86_64 | KEXEC_ON_CRASH
    names = roles(r, bzimage_payload(vmlinuz.read_bytes()), initrd.read_bytes())
    table = segment_table(r, names)
    assert sorted(names) == ["backup", "boot_params", "elfcorehdr", "initrd", "kernel",
                             "purgatory", "rng_seed"], table
    for seg in r.segments:
        assert inside(seg, *CRASH_REGION), table
    assert r.segments[names["rng_seed"]].mem == CRASH_REGION[0]
    assert r.segment_at(r.entry) is r.segments[names["purgatory"]]

    # Command line gains elfcorehdr=<KiB>K pointing at the ELF core header.
    elf = r.segments[names["elfcorehdr"]]
    bp = r.segments[names["boot_params"]]
    off = u32(bp.data, 0x228) - bp.mem
    cmdline = bp.data[off:bp.data.index(b"\0", off)].decode()
    assert cmdline == f"{APPEND} elfcorehdr={elf.mem // 1024}K"
    assert u32(elf.data, 16) & 0xFFFF == 4  # ET_CORE
    assert elf.memsz == 0x4000  # kexec-tools' 16 KiB minimum

    # Backup of low RAM below 640 KiB, zero-filled until purgatory copies it.
    backup = r.segments[names["backup"]]
    # The source is the first RAM range below 640 KiB, 0x0-0x9fbff here (the
    # crash path does not apply the normal map's IVT trim).
    assert (backup.bufsz, backup.memsz) == (0x9FC00, 0xA0000), table

    digest, regions = purgatory_digest(r, names["purgatory"])
    assert digest in r.segments[names["purgatory"]].data


def test_missing_kexec_is_a_clear_error() -> None:
    with pytest.raises(OracleError, match="kexec-tools"):
        run_kexec_tools(["-l", "x"], one_gib_machine(), kexec="/nonexistent/kexec")
