"""pykexec's crash initramfs booted by a real Debian crash kernel: the busybox guest
loads the crash kernel with the initramfs :func:`pykexec.kdump.initramfs.build`
makes, panics, and the capture (PID 1, Python with no shell) loads virtio's
modules, finds the ext4 disk by its UUID, saves the log, the dump and the record
to /var/crash, and reboots.  The host reads the disk image back with debugfs.

The initramfs is built on this host for a pretend guest (support.kdump_system:
a virtio disk holding /var/crash) with the guest kernel's modules; its Python is
this host's 3.11 and its libraries.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pykexec.kdump import initramfs
from pykexec.kdump.config import KdumpConfig
from pykexec.kdump.records import RECORD_FILE

from support.kdump_system import make_system
from support.testbed.assets import Assets
from support.testbed.guest import run_guest_script
from support.testbed.qemu import GuestRun

CRASH_APPEND = "console=ttyS0 irqpoll nr_cpus=1 reset_devices panic=-1"
DISK_UUID = "0e4d2c1b-5a69-4f87-9b1e-2f3a4b5c6d7e"


def debugfs(image: Path, request: str) -> str:
    res = subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True)
    return res.stdout


def crash_disk(tmp_path: Path, size: int = 512 << 20) -> Path:
    """An ext4 image (sparse) with an empty /var/crash."""
    tree = tmp_path / "tree"
    (tree / "var" / "crash").mkdir(parents=True)
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-U", DISK_UUID, "-d", str(tree), str(image)], check=True,
                   capture_output=True)
    return image


def crash_initramfs(tmp_path: Path, assets: Assets, flavour: str, image: Path, config: KdumpConfig) -> Path:
    kernel = assets.kernel(flavour)
    paths = make_system(tmp_path / "system", kernel.release)
    (paths.modules).mkdir(parents=True)
    (paths.modules / kernel.release).symlink_to(kernel.modules_dir)
    (paths.under("/dev/vda")).symlink_to(image)  # the UUID is read from it
    return initramfs.build(config, paths, release=kernel.release)


def read_back(image: Path, out: Path) -> Path:
    """The one crash directory of the image's /var/crash, copied to ``out``."""
    (crash,) = [line.split("/")[5] for line in debugfs(image, "ls -p /var/crash").splitlines()
                if line.strip() and line.split("/")[5] not in (".", "..")]
    out.mkdir()
    for name in (RECORD_FILE, "dmesg.txt", "vmcore"):
        debugfs(image, f"dump /var/crash/{crash}/{name} {out / name}")
    return out


def boot_and_crash(assets: Assets, flavour: str, image: Path, initrd: Path, log: Path) -> GuestRun:
    """Boot the guest with the disk, load the crash kernel with ``initrd``, panic; up to the target mounted."""
    script = (f"pykexec -p /boot/vmlinuz --initrd /boot/kdump.img --append '{CRASH_APPEND}'; echo LOAD-RC=$?\n"
              "drain-console\n"
              "echo c > /proc/sysrq-trigger\n")
    run = run_guest_script(script, assets, kernel=flavour, append_extra="crashkernel=256M",
                           extra_files={"/boot/kdump.img": initrd}, timeout=300,
                           extra_args=["-drive", f"file={image},format=raw,if=virtio"], log_path=log)
    assert "LOAD-RC=0" in run, run.describe()
    run.expect("pykexec-kdump: capture started")
    assert "mounted on /mnt/target" in run.expect("pykexec-kdump: target /dev/vda"), run.describe()
    return run


needs_e2fsprogs = pytest.mark.skipif(shutil.which("debugfs") is None or shutil.which("mkfs.ext4") is None,
                                     reason="needs e2fsprogs (mkfs.ext4, debugfs)")


@needs_e2fsprogs
@pytest.mark.parametrize("flavour", ["6.1", "6.12"])
def test_crash_initramfs_captures_to_var_crash(pykexec_assets: Assets, vm_log_dir: Path, tmp_path: Path,
                                               flavour: str) -> None:
    image = crash_disk(tmp_path)
    img = crash_initramfs(tmp_path, pykexec_assets, flavour, image, KdumpConfig(final_action="poweroff"))
    run = boot_and_crash(pykexec_assets, flavour, image, img, vm_log_dir / f"console-{flavour}.log")
    run.expect("pykexec-kdump: dump saved")
    assert "final action: poweroff" in run.expect("pykexec-kdump: capture complete"), run.describe()
    out = read_back(image, tmp_path / "out")
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["complete"] is True and record["error"] is None, record
    assert "sysrq triggered crash" in record["panic"]
    assert record["dump_bytes"] == (out / "vmcore").stat().st_size
    dmesg = subprocess.run([".venv/bin/python", "-m", "pykexec", "vmcore", "dmesg", str(out / "vmcore")],
                           capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert dmesg.returncode == 0, dmesg.stderr
    tail = dmesg.stdout.splitlines()[-60:]  # the panic, then (6.12) its stack trace
    assert any("Kernel panic - not syncing: sysrq triggered crash" in line for line in tail), tail
    print(f"crash initramfs {img.stat().st_size} bytes; dump {record['dump_bytes']} bytes; "
          f"capture {record['capture_seconds']} s")


@needs_e2fsprogs
def test_target_too_small_keeps_the_log_and_takes_the_failure_action(pykexec_assets: Assets, vm_log_dir: Path,
                                                                     tmp_path: Path) -> None:
    """A 12 MB disk for a dump of about 16 MB: the writer hits ENOSPC; the log is on disk,
    the record (rewritten in place: no block is left for a new file) says incomplete."""
    image = crash_disk(tmp_path, 12 << 20)
    img = crash_initramfs(tmp_path, pykexec_assets, "6.1", image,
                          KdumpConfig(final_action="reboot", failure_action="poweroff"))
    run = boot_and_crash(pykexec_assets, "6.1", image, img, vm_log_dir / "console.log")
    assert "No space left on device" in run.expect("pykexec-kdump: dump INCOMPLETE"), run.describe()
    assert "failure action: poweroff" in run.expect("pykexec-kdump: capture FAILED"), run.describe()
    out = read_back(image, tmp_path / "out")
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["complete"] is False and "No space left on device" in record["error"], record
    assert "sysrq triggered crash" in (out / "dmesg.txt").read_text()
