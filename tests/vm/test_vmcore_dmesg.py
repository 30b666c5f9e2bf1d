"""pykexec vmcore dmesg on a real /proc/vmcore, against kexec-tools' vmcore-dmesg.

The dump comes from :func:`vmcore_fixture.real_vmcore` (made in QEMU once,
then cached under ``.cache/testbed/vmcores/``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pykexec.vmcore.elfcore import ElfCore
from pykexec.vmcore.printk import LOCKLESS, format_log, read_log

VMCORE_DMESG = "/usr/sbin/vmcore-dmesg"


def _oracle(path: Path) -> bytes:
    if not os.path.exists(VMCORE_DMESG):
        if os.environ.get("CI"):
            pytest.fail("vmcore-dmesg (kexec-tools) missing in CI")
        pytest.skip("vmcore-dmesg (kexec-tools) not installed on the host")
    return subprocess.run([VMCORE_DMESG, str(path)], capture_output=True, check=True).stdout


def test_real_dump_matches_vmcore_dmesg(vmcore: tuple[str, Path]) -> None:
    kernel, path = vmcore
    res = subprocess.run([sys.executable, "-m", "pykexec.vmcore.cli", "dmesg", str(path)],
                         capture_output=True)
    assert res.returncode == 0, res.stderr
    tool = _oracle(path)
    # A 5.10+ ring: vmcore-dmesg's only extra lines would be failed (data-less)
    # reservations, which a quiet boot does not produce: expect identical output.
    assert res.stdout == tool
    assert b"Kernel panic - not syncing: sysrq triggered crash" in res.stdout
    assert res.stdout.startswith(f"[    0.000000] Linux version {kernel}.".encode())


def test_real_dump_records(vmcore: tuple[str, Path]) -> None:
    kernel, path = vmcore
    with ElfCore(path) as core:
        info = core.require_vmcoreinfo()
        assert info.osrelease and info.osrelease.startswith(f"{kernel}.")
        assert info.crashtime is not None
        log = read_log(core)
    assert log.format == LOCKLESS
    panic = [r for r in log.records if b"sysrq triggered crash" in r.text]
    assert panic and panic[-1].level == 0  # KERN_EMERG
    assert all(r.caller_id is not None for r in log.records)
    text = format_log(log, levels=[0], decode=True, show_caller=True)
    assert b"kern  :emerg : [" in text and b"Kernel panic" in text
    assert format_log(log, boot=info.crashtime - (log.records[-1].ts_nsec or 0) / 1e9).count(b"\n") == len(log.records)
