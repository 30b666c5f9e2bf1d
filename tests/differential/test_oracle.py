"""Tests proving the kexec-tools oracle on a real Debian kernel.

They need gcc, Debian's /usr/sbin/kexec, strace, and apt (to fetch the current
linux-image-*-cloud-amd64 into <repo>/.cache/oracle/). Anything missing makes
the tests fail with a message saying what to install: a silently skipped
oracle would make every differential test meaningless.
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

from .oracle import (
    REPO_ROOT,
    MachineSpec,
    MemoryRange,
    OracleError,
    OracleResult,
    OracleSegment,
    build_shim,
    make_kcore,
    run_kexec_tools,
)

CACHE = REPO_ROOT / ".cache" / "oracle"
KEXEC_ARCH_X86_64 = 62 << 16
KEXEC_ON_CRASH = 1
SETUP_RNG_SEED = 9
APPEND = "console=ttyS0 foo=bar"

# The synthetic 1 GiB PC from the task description.
LOW_RAM = MemoryRange(0x0, 0x9FBFF, "System RAM")
HIGH_RAM = (0x100000, 0x3FFDFFFF)
BASE_MEMORY = (
    LOW_RAM,
    MemoryRange(0x9FC00, 0x9FFFF, "Reserved"),
    MemoryRange(0xF0000, 0xFFFFF, "Reserved"),
    MemoryRange(*HIGH_RAM, "System RAM"),
    MemoryRange(0x3FFE0000, 0x3FFFFFFF, "Reserved"),
)
CRASH_REGION = (0x30000000, 0x37FFFFFF)


def one_gib_machine(**kwargs: object) -> MachineSpec:
    return MachineSpec(memory=BASE_MEMORY, **kwargs)  # type: ignore[arg-type]


def crash_machine() -> MachineSpec:
    """The 1 GiB machine with 128 MiB reserved by crashkernel= and what -p reads."""
    high = MemoryRange(*HIGH_RAM, "System RAM", children=(
        MemoryRange(0x1000000, 0x1E01FFF, "Kernel code"),
        MemoryRange(0x1E02000, 0x25FFFFF, "Kernel data"),
        MemoryRange(*CRASH_REGION, "Crash kernel"),
    ))
    memory = tuple(high if r.start == HIGH_RAM[0] else r for r in BASE_MEMORY)
    return MachineSpec(
        memory=memory,
        cmdline="BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro crashkernel=128M",
        crash_notes=(0x3FC1D000, 0x3FC5D000),
        vmcoreinfo=(0x2A00000, 0x1000),
        kcore=make_kcore([(0x0, 0x9FBFF), HIGH_RAM]),
        kallsyms="ffffffff81000000 T _stext\n",
    )


# --------------------------------------------------------------------------
# Fixtures: real Debian kernel, synthetic initrd
# --------------------------------------------------------------------------


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True,
                              **kwargs)  # type: ignore[call-overload]
    except FileNotFoundError:
        pytest.fail(f"{cmd[0]} not found: the oracle tests need Debian's apt/dpkg tools")
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"{' '.join(cmd)} failed ({exc.returncode}):\n{exc.stderr}")


@pytest.fixture(scope="session")
def vmlinuz() -> Path:
    """The bzImage of Debian's current cloud kernel, downloaded once."""
    depends = _run(["apt-cache", "depends", "linux-image-cloud-amd64"]).stdout
    match = re.search(r"Depends:\s*(linux-image-\S+-cloud-amd64)", depends)
    if match is None:
        pytest.fail(f"cannot resolve linux-image-cloud-amd64 from:\n{depends}")
    package = match.group(1)
    extracted = CACHE / package
    kernels = sorted(extracted.glob("boot/vmlinuz-*"))
    if kernels:
        return kernels[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    debs = sorted(CACHE.glob(f"{package}_*.deb"))
    if not debs:
        _run(["apt-get", "download", package], cwd=CACHE)
        debs = sorted(CACHE.glob(f"{package}_*.deb"))
    if not debs:
        pytest.fail(f"apt-get download {package} produced no .deb in {CACHE}")
    _run(["dpkg-deb", "-x", str(debs[-1]), str(extracted)])
    kernels = sorted(extracted.glob("boot/vmlinuz-*"))
    if not kernels:
        pytest.fail(f"{debs[-1]} contains no boot/vmlinuz-*")
    return kernels[0]


def _newc_entry(name: str, data: bytes, mode: int, ino: int) -> bytes:
    """One "newc" cpio member (the initramfs format), 4-byte aligned."""
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
    header = b"070701" + b"".join(b"%08x" % f for f in fields)
    blob = header + name.encode() + b"\0"
    blob += bytes(-len(blob) % 4) + data
    return blob + bytes(-len(blob) % 4)


@pytest.fixture(scope="session")
def initrd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small, deterministic, valid newc initramfs (~200 KiB, not page sized)."""
    payload = b"".join(hashlib.sha256(b"initrd%d" % i).digest() for i in range(6000))
    archive = (_newc_entry("init", b"#!/bin/sh\necho hello from pykexec\n", 0o100755, 1)
               + _newc_entry("payload.bin", payload, 0o100644, 2)
               + _newc_entry("TRAILER!!!", b"", 0, 0))
    assert len(archive) % 4096  # exercise bufsz < memsz for the initrd
    path = tmp_path_factory.mktemp("initrd") / "initrd.img"
    path.write_bytes(archive)
    return path


# --------------------------------------------------------------------------
# Helpers that recognise what kexec-tools loaded
# --------------------------------------------------------------------------


def bzimage_payload(image: bytes) -> bytes:
    """The protected-mode part of a bzImage (what kexec loads as the kernel)."""
    setup_sects = image[0x1F1] or 4
    return image[(setup_sects + 1) * 512:]


def u32(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", data, off)[0])


def u64(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<Q", data, off)[0])


def roles(result: OracleResult, kernel: bytes, initrd: bytes) -> dict[str, int]:
    """Map role name -> segment index, recognising each segment by content."""
    found: dict[str, int] = {}
    for i, seg in enumerate(result.segments):
        data = seg.data
        if data == kernel:
            found["kernel"] = i
        elif data == initrd:
            found["initrd"] = i
        elif len(data) > 0x206 and data[0x202:0x206] == b"HdrS":
            found["boot_params"] = i
        elif seg.bufsz == 0x30 and u32(data, 8) == SETUP_RNG_SEED:
            found["rng_seed"] = i
        elif data[:4] == b"\x7fELF":
            found["elfcorehdr"] = i
        elif seg.contains(result.entry):
            found["purgatory"] = i
        elif data and not any(data):
            found["backup"] = i
        else:
            found[f"unknown{i}"] = i
    return found


def ram_ranges(machine: MachineSpec) -> list[tuple[int, int]]:
    return [(r.start, r.end) for r in machine.memory if r.type == "System RAM"]


def inside(seg: OracleSegment, lo: int, hi_inclusive: int) -> bool:
    return lo <= seg.mem and seg.end - 1 <= hi_inclusive


def purgatory_digest(result: OracleResult, purgatory: int) -> tuple[bytes, bytes]:
    """(sha256 digest, sha256_regions) as purgatory should hold them.

    Every segment but the purgatory is hashed as its buffer zero-padded to
    memsz, in the order kexec-tools keeps them (sorted by address).
    """
    digest = hashlib.sha256()
    regions = b""
    for i, seg in enumerate(sorted(result.segments, key=lambda s: s.mem)):
        if seg is result.segments[purgatory]:
            continue
        digest.update(seg.data + bytes(seg.memsz - len(seg.data)))
        regions += struct.pack("<QQ", seg.mem, seg.memsz)
    return digest.digest(), regions


def segment_table(result: OracleResult, names: dict[str, int]) -> str:
    by_index = {i: n for n, i in names.items()}
    return "\n".join(f"{i}: mem={s.mem:#x} memsz={s.memsz:#x} bufsz={s.bufsz:#x} "
                     f"{by_index.get(i, '?')}" for i, s in enumerate(result.segments))


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
