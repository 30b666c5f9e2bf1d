"""pykexec with Unified Kernel Images, end to end: UKIs built on the host the classic way
(Debian 12's systemd-stub, linuxx64.efi.stub, and ``objcopy --add-section``) around the
test bed's 6.1 kernel and its standard second-kernel initramfs. A guest loads one with
no --append and no --initrd and kexecs it; the second kernel can only print its line if
it ran the UKI's .initrd, and the line shows the command line it got.

Each test is one guest boot (BIOS: about 10 s; OVMF: about 13 s; the six: 65 s).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.testbed.assets import Assets
from support.testbed.guest import run_guest_script
from support.testbed.qemu import GuestRun
from support.uki_synth import build_uki

OVMF = "/usr/share/OVMF/OVMF_CODE.fd"
BASE_CMDLINE = "console=ttyS0 panic=-1 uki.test=base"
RESCUE_CMDLINE = "console=ttyS0 panic=-1 uki.test=rescue"
ADDON_CMDLINE = "uki.addon=1"
OSREL = b'ID=pykexec-test\nPRETTY_NAME="pykexec UKI test"\n'


@pytest.fixture(scope="module")
def ukis(pykexec_assets: Assets, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """/boot/uki.efi (profiles 0 and 1, the latter with its own .cmdline) and
    /boot/extra.addon.efi (a .cmdline), built with Debian's stub."""
    stub = pykexec_assets.systemd_stub()
    if not stub.exists():
        pytest.fail(f"{stub} missing from Debian's systemd-boot-efi")
    out = tmp_path_factory.mktemp("uki")
    k = pykexec_assets.kernel("6.1")
    uki = build_uki(out / "uki.efi", [
        (".osrel", OSREL), (".uname", k.release.encode()), (".cmdline", BASE_CMDLINE.encode() + b"\n"),
        (".linux", k.vmlinuz.read_bytes()), (".initrd", pykexec_assets.second_initrd().read_bytes()),
        (".profile", b"ID=default\n"),
        (".profile", b"ID=rescue\nTITLE=Rescue\n"), (".cmdline", RESCUE_CMDLINE.encode()),
    ], stub=stub)
    # Bookworm's systemd (252) has no addon stub: an addon is a PE with a .cmdline, on the same stub.
    addon = build_uki(out / "extra.addon.efi", [(".cmdline", ADDON_CMDLINE.encode()), (".uname", k.release.encode())],
                      stub=stub)
    return {"/boot/uki.efi": uki, "/boot/extra.addon.efi": addon}


def _kexec_uki(assets: Assets, ukis: dict[str, Path], log_dir: Path, load: str, *, ovmf: bool = False) -> GuestRun:
    script = (f"pykexec --dry-run {load.removeprefix('pykexec ')} | grep -E '^(UKI|command line from)'\n"
              f"{load}\necho PYKEXEC-LOAD-RC=$?\ndrain-console\npykexec -e\n")
    extra = ("-bios", OVMF) if ovmf else ()
    if ovmf and not Path(OVMF).exists():
        pytest.fail(f"{OVMF} missing: install Debian's ovmf package (.ci/install-deps.sh)")
    return run_guest_script(script, assets, extra_files=ukis, extra_args=extra, timeout=240 if ovmf else 120,
                            log_path=log_dir / "console.log")


def _assert_second_kernel(run: GuestRun, assets: Assets, cmdline: str) -> None:
    assert "PYKEXEC-LOAD-RC=0" in run, run.describe()
    release, got = run.second_kernel()
    assert got == cmdline, run.describe()
    assert release == assets.kernel("6.1").release
    assert "Traceback" not in run.log


@pytest.mark.parametrize("syscall", ["-c", "-s"])
def test_bios_guest_kexecs_uki_as_systemd_stub_would(pykexec_assets: Assets, ukis: dict[str, Path],
                                                     vm_log_dir: Path, syscall: str) -> None:
    """No --append, no --initrd: the UKI's .initrd runs with its .cmdline (profile 0)."""
    run = _kexec_uki(pykexec_assets, ukis, vm_log_dir, f"pykexec -d {syscall} -l /boot/uki.efi")
    _assert_second_kernel(run, pykexec_assets, BASE_CMDLINE)
    run.expect("UKI: pykexec UKI test    profile 0 (default) of 2")
    run.expect("command line from: .cmdline (base)")
    if syscall == "-c":  # our purgatory checked .linux, the assembled initrd and the rest
        run.expect("pykexec purgatory: verified 4 segments")
    else:
        assert "pykexec purgatory" not in run


def test_ovmf_guest_kexecs_uki_profile_and_addon(pykexec_assets: Assets, ukis: dict[str, Path],
                                                 vm_log_dir: Path) -> None:
    """An EFI-booted guest, kexec_file_load, profile 1 (its own .cmdline) and an addon
    whose .cmdline is appended."""
    run = _kexec_uki(pykexec_assets, ukis, vm_log_dir,
                     "pykexec -s -l /boot/uki.efi --uki-profile 1 --uki-addon /boot/extra.addon.efi", ovmf=True)
    _assert_second_kernel(run, pykexec_assets, f"{RESCUE_CMDLINE} {ADDON_CMDLINE}")
    run.expect("profile 1 (Rescue) of 2")
    run.expect("command line from: .cmdline (profile 1) + addons")
    assert "efi: EFI v" in run.log.split("PYKEXEC-LOAD-RC=0", 1)[1], run.describe()  # the second kernel's EFI


def test_ovmf_guest_kexec_load_uki_addon(pykexec_assets: Assets, ukis: dict[str, Path], vm_log_dir: Path) -> None:
    """kexec_load (our purgatory) from an EFI-booted guest, default profile, an addon."""
    run = _kexec_uki(pykexec_assets, ukis, vm_log_dir,
                     "pykexec -d -c -l /boot/uki.efi --uki-addon /boot/extra.addon.efi", ovmf=True)
    _assert_second_kernel(run, pykexec_assets, f"{BASE_CMDLINE} {ADDON_CMDLINE}")
    assert "efi: EFI v" in run.log.split("PYKEXEC-LOAD-RC=0", 1)[1], run.describe()


@pytest.mark.parametrize("syscall", ["-c", "-s"])
def test_uki_as_crash_kernel(pykexec_assets: Assets, ukis: dict[str, Path], vm_log_dir: Path, syscall: str) -> None:
    """-p with a UKI: a panic starts the UKI's kernel and initrd with its .cmdline (plus
    what a crash kernel gets: elfcorehdr=), and /proc/vmcore is there."""
    script = (f"pykexec {syscall} -p /boot/uki.efi; echo PYKEXEC-LOAD-RC=$?\n"
              "pykexec -S -p; echo CRASH-STATUS=$?\ndrain-console\necho c > /proc/sysrq-trigger\n")
    run = run_guest_script(script, pykexec_assets, extra_files=ukis, append_extra="crashkernel=256M",
                           timeout=120, log_path=vm_log_dir / "console.log")
    assert "PYKEXEC-LOAD-RC=0" in run and "CRASH-STATUS=1" in run, run.describe()
    _, cmdline = run.second_kernel()
    # kexec_file_load puts elfcorehdr= first, our kexec_load plan adds it (and more) at the end.
    words = cmdline.split()
    assert " ".join(w for w in words if w.split("=")[0] in ("console", "panic", "uki.test")) == BASE_CMDLINE, cmdline
    assert any(w.startswith("elfcorehdr=") for w in words), cmdline
    run.expect("PYKEXEC-SECOND-KERNEL-VMCORE size=")
