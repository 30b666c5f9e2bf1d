"""pykexec -l / -e end to end: a real Debian kernel in QEMU loads and boots a second
kernel, which must report exactly the command line it was given.

kexec_load paths go through our own purgatory (its SHA-256 check included); the
kexec_file_load paths go through the kernel's loader. Each test is one VM boot.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from support.testbed.assets import Assets
from support.testbed.guest import run_guest_script
from support.testbed.qemu import GuestRun


def _load_and_exec(assets: Assets, vm_log_dir: Path, load: str, *, boot: str = "6.1",
                   extra_files: dict | None = None, timeout: float = 120) -> GuestRun:
    script = f"{load}\necho PYKEXEC-LOAD-RC=$?\npykexec -S -l; echo PYKEXEC-STATUS=$?\ndrain-console\npykexec -e\n"
    return run_guest_script(script, assets, kernel=boot, extra_files=extra_files, timeout=timeout,
                            log_path=vm_log_dir / "console.log")


def _assert_second_kernel(run: GuestRun, cmdline: str, release: str) -> None:
    assert "PYKEXEC-LOAD-RC=0" in run, run.describe()
    assert "PYKEXEC-STATUS=1" in run, run.describe()  # -S -l: 1 = loaded, as in kexec-tools
    got_release, got_cmdline = run.second_kernel()
    assert got_cmdline == cmdline, run.describe()
    assert got_release == release


@pytest.mark.parametrize("target", ["6.1", "6.12"])
def test_kexec_load_with_our_purgatory(pykexec_assets: Assets, vm_log_dir: Path, target: str) -> None:
    cmdline = f"console=ttyS0 panic=-1 pykexec.test=kexec_load-{target} quoted=\"a b\""
    load = (f"pykexec -d -c -l /boot/vmlinuz-{target} --initrd /boot/second.cpio.gz "
            f"--append '{cmdline}'")
    run = _load_and_exec(pykexec_assets, vm_log_dir, load)
    _assert_second_kernel(run, cmdline, pykexec_assets.kernel(target).release)
    # -d makes purgatory report on ttyS0: it verified the 4 other segments.
    run.expect("pykexec purgatory: verified 4 segments")
    assert "backend: kexec_load" in run


@pytest.mark.parametrize("target", ["6.1", "6.12"])
def test_kexec_file_load(pykexec_assets: Assets, vm_log_dir: Path, target: str) -> None:
    cmdline = f"console=ttyS0 panic=-1 pykexec.test=kexec_file_load-{target}"
    load = f"pykexec -s -l /boot/vmlinuz-{target} --initrd /boot/second.cpio.gz --append '{cmdline}'"
    run = _load_and_exec(pykexec_assets, vm_log_dir, load)
    _assert_second_kernel(run, cmdline, pykexec_assets.kernel(target).release)
    assert "pykexec purgatory" not in run  # the kernel's own purgatory ran, not ours


def test_reuse_cmdline_default_backend_from_6_12(pykexec_assets: Assets, vm_log_dir: Path) -> None:
    """Boot 6.12, reuse its command line (crashkernel= dropped), default backend (-a)."""
    load = ("pykexec -l /boot/vmlinuz-6.12 --initrd /boot/second.cpio.gz --reuse-cmdline "
            "--append pykexec.test=reuse")
    script = f"{load}\necho PYKEXEC-LOAD-RC=$?\npykexec -S -l; echo PYKEXEC-STATUS=$?\ndrain-console\npykexec -e\n"
    run = run_guest_script(script, pykexec_assets, kernel="6.12", append_extra="crashkernel=64M foo=bar",
                           log_path=vm_log_dir / "console.log")
    assert "PYKEXEC-LOAD-RC=0" in run, run.describe()
    _, cmdline = run.second_kernel()
    words = cmdline.split()
    assert "foo=bar" in words and words[-1] == "pykexec.test=reuse", cmdline
    assert not any(w.startswith("crashkernel=") for w in words), cmdline


def _extract_vmlinux(bzimage: Path, out: Path) -> Path:
    """The ELF vmlinux inside a Debian bzImage (LZ4 legacy frames), as a test fixture."""
    import lz4.block

    data = bzimage.read_bytes()
    setup = ((data[0x1F1] or 4) + 1) * 512
    off, length = struct.unpack_from("<II", data, 0x248)
    payload = data[setup + off:setup + off + length]
    assert payload[:4] == b"\x02\x21\x4c\x18", "expected an LZ4-compressed Debian kernel"
    size = struct.unpack_from("<I", payload, len(payload) - 4)[0]
    pos, elf = 4, bytearray()
    while len(elf) < size:
        n = struct.unpack_from("<I", payload, pos)[0]
        pos += 4
        if n == 0x184C2102:  # a new legacy frame starts
            continue
        elf += lz4.block.decompress(payload[pos:pos + n], uncompressed_size=8 << 20)
        pos += n
    assert elf[:4] == b"\x7fELF"
    out.write_bytes(bytes(elf[:size]))
    return out


def test_elf_vmlinux(pykexec_assets: Assets, vm_log_dir: Path, tmp_path: Path) -> None:
    vmlinux = _extract_vmlinux(pykexec_assets.kernel("6.1").vmlinuz, tmp_path / "vmlinux")
    cmdline = "console=ttyS0 panic=-1 pykexec.test=elf"
    load = f"pykexec -l /boot/vmlinux --initrd /boot/second.cpio.gz --append '{cmdline}'"
    run = _load_and_exec(pykexec_assets, vm_log_dir, load, extra_files={"/boot/vmlinux": vmlinux}, timeout=180)
    _assert_second_kernel(run, cmdline, pykexec_assets.kernel("6.1").release)


def test_status_unload_and_errors_in_guest(pykexec_assets: Assets, vm_log_dir: Path) -> None:
    """-S/-u against the real kernel, and bad input leaving nothing loaded."""
    script = "\n".join([
        "pykexec -S -l; echo ST0=$?",
        "pykexec -c -l /boot/vmlinuz --initrd /boot/second.cpio.gz --append x=1; echo LOAD=$?",
        "pykexec -S -l; echo ST1=$?",
        "pykexec -u; echo UNLOAD=$?",
        "pykexec -S -l; echo ST2=$?",
        "head -c 100000 /dev/urandom > /tmp/junk",
        "pykexec -l /tmp/junk 2>/tmp/err; echo BAD=$?; echo ERRLINES=$(wc -l < /tmp/err)",
        "pykexec -c -l /boot/vmlinuz --mem-max 0x200000 2>>/tmp/err; echo NOROOM=$?",
        "cat /tmp/err",
        "pykexec -S -l; echo ST3=$?",
        "pykexec -e; echo EXEC=$?",
    ])
    run = run_guest_script(script, pykexec_assets, log_path=vm_log_dir / "console.log")
    run.assert_ok()
    for marker in ("ST0=0", "LOAD=0", "ST1=1", "UNLOAD=0", "ST2=0", "BAD=1", "ERRLINES=1", "NOROOM=1",
                   "ST3=0", "EXEC=1"):
        assert marker in run, f"{marker} missing:\n{run.describe()}"
    run.expect("pykexec: cannot determine the image type")
    run.expect("pykexec: no room for the kernel")
    run.expect("pykexec: nothing has been loaded")
    assert "Traceback" not in run.log


OVMF = "/usr/share/OVMF/OVMF_CODE.fd"


def test_efi_handover(pykexec_assets: Assets, vm_log_dir: Path) -> None:
    """Booted by EFI (OVMF): the kexec'd kernel must find the EFI system table again,
    through efi_info, SETUP_EFI and the runtime map pykexec passes (a kernel that got
    none would boot as if by BIOS and print no "efi:" lines)."""
    if not Path(OVMF).exists():
        pytest.fail(f"{OVMF} missing: install Debian's ovmf package (.ci/install-deps.sh)")
    cmdline = "console=ttyS0 panic=-1 pykexec.test=efi"
    script = ("test -d /sys/firmware/efi/runtime-map && echo FIRST-KERNEL-EFI\n"
              "pykexec --dry-run --json -c -l /boot/vmlinuz --append x | grep -c setup_data"
              " | sed 's/^/SETUP-DATA-SEGMENTS=/'\n")
    load = f"pykexec -d -c -l /boot/vmlinuz --initrd /boot/second.cpio.gz --append '{cmdline}'"
    run = run_guest_script(script + f"{load}\necho PYKEXEC-LOAD-RC=$?\npykexec -S -l; echo PYKEXEC-STATUS=$?\n"
                           "drain-console\npykexec -e\n", pykexec_assets, extra_args=("-bios", OVMF), timeout=240,
                           log_path=vm_log_dir / "console.log")
    run.expect("FIRST-KERNEL-EFI")
    assert "SETUP-DATA-SEGMENTS=1" in run, run.describe()
    _assert_second_kernel(run, cmdline, pykexec_assets.kernel("6.1").release)
    second_boot = run.log.split("pykexec purgatory: jumping to", 1)[1]
    assert "efi: EFI v" in second_boot, run.describe()
