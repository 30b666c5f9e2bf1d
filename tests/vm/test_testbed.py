"""Prove the QEMU test bed with the reference tools (Debian's kexec-tools).

These tests do not exercise pykexec's logic; they check that the harness
boots kernels, runs guest scripts, that kexec works in the guest, and that
the guest's Python can import pykexec.
"""

from __future__ import annotations

import time
from pathlib import Path

from support.testbed.assets import Assets, build_initramfs
from support.testbed.guest import run_guest_script
from support.testbed.guest_init import INIT_MARKER, SECOND_KERNEL_MARKER
from support.testbed.qemu import run_qemu

KEXEC_APPEND = "console=ttyS0 panic=-1 MARKER=abc"


def _report(name: str, seconds: float) -> None:
    print(f"\n[cycle] {name}: {seconds:.1f}s")


def test_boot_to_marker(assets: Assets, tmp_path: Path, vm_log_dir: Path) -> None:
    """Plain boot of the 6.1 cloud kernel with a busybox-only initramfs."""
    initrd = build_initramfs(tmp_path / "i.cpio.gz", "echo BODY-RAN; exit 3", {}, assets=assets, kernels=())
    run = run_qemu(assets.kernel("6.1").vmlinuz, initrd, timeout=60, log_path=vm_log_dir / "console.log")
    run.expect(INIT_MARKER)
    run.expect("BODY-RAN")
    assert run.script_rc == 3, run.describe()
    assert not run.timed_out and run.returncode == 0, run.describe()
    _report("boot to marker (busybox only)", run.duration)


def test_kexec_tools_load_exec(assets: Assets, vm_log_dir: Path) -> None:
    """kexec -l / kexec -e with Debian's kexec-tools into the same kernel."""
    t0 = time.monotonic()
    script = (f'kexec -l /boot/vmlinuz --initrd=/boot/second.cpio.gz --append="{KEXEC_APPEND}"\n'
              "kexec -e\n")
    run = run_guest_script(script, assets, with_pykexec=False, with_python=False, timeout=90,
                           log_path=vm_log_dir / "console.log")
    release, cmdline = run.second_kernel()
    assert cmdline == KEXEC_APPEND, run.describe()
    assert release == assets.kernel("6.1").release
    assert run.script_rc is None  # kexec -e never returned
    assert not run.timed_out, run.describe()
    _report("kexec-tools 6.1 -> 6.1", run.duration)
    _report("kexec-tools 6.1 -> 6.1 incl. initramfs build", time.monotonic() - t0)


def test_kexec_tools_into_6_12(assets: Assets, vm_log_dir: Path) -> None:
    """Cross-version kexec: 6.1 cloud kernel loads and boots the 6.12 one."""
    script = (f'kexec -l /boot/vmlinuz-6.12 --initrd=/boot/second.cpio.gz --append="{KEXEC_APPEND}"\n'
              "kexec -e\n")
    run = run_guest_script(script, assets, with_pykexec=False, with_python=False, timeout=90,
                           log_path=vm_log_dir / "console.log")
    release, cmdline = run.second_kernel()
    assert cmdline == KEXEC_APPEND
    assert release == assets.kernel("6.12").release
    _report("kexec-tools 6.1 -> 6.12", run.duration)


def test_guest_python_imports_pykexec(pykexec_assets: Assets, vm_log_dir: Path) -> None:
    """The guest's Python 3.11 runs and imports pykexec and pyelftools."""
    script = ('python3 -c "import sys, pykexec, elftools; '
              'print(\'PY-OK\', sys.version_info[:2], pykexec.__file__, elftools.__version__)"\n'
              "test -x /usr/sbin/pykexec\n")
    run = run_guest_script(script, pykexec_assets, timeout=90, log_path=vm_log_dir / "console.log")
    run.assert_ok()
    line = run.expect("PY-OK")
    assert "(3, 11)" in line and "/usr/lib/python3/dist-packages/pykexec/" in line, line
    _report("boot + python import pykexec", run.duration)
