"""Debian's kdump-tools on the Debian test bed: the reference the pykexec kdump service is
compared with (issue 13).  Turned on, it loads its crash kernel at boot; a sysrq crash makes its
crash kernel save ``/var/crash/<stamp>/dump.<stamp>`` (``makedumpfile -F -c -d 31``: the
flattened format) and ``dmesg.<stamp>``, then reboot.  The test prints the figures the pykexec
service is measured against: panic to the rebooted system's step runner, dump size and the
size of kdump-tools' crash initrd.

Slow (several minutes under TCG): marked ``slow``; select with ``-m slow``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from support.debian_fixtures import debian_disk, debian_testbed  # noqa: F401  (fixtures)
from support.kdump_steps import (KDUMP_TOOLS_CRASH_STEP, KDUMP_TOOLS_DUMP_START, KDUMP_TOOLS_ENABLE_STEP,
                                 KDUMP_TOOLS_LIST_STEP, KDUMP_TOOLS_SAVED, SYSRQ_PANIC, unit_run_seconds)
from support.testbed.debian import DebianDisk
from support.testbed.debian_boot import (BOOT_MARKER, PANIC_LINE, boot, seconds_from_crash_marker_to_panic,
                                         seconds_from_panic_to_boot)
from support.testbed.debian_step import CRASH_MARKER

pytestmark = pytest.mark.slow

def assert_log_ends_with_panic(log: str) -> None:
    """The last record is the panic, followed only by the panicking CPU's stack dump."""
    lines = log.splitlines()
    panics = [i for i, line in enumerate(lines) if SYSRQ_PANIC in line]
    assert panics, log[-2000:]
    after = lines[panics[-1] + 1:]
    assert not after or ("CPU: " in after[0] and after[-1].endswith("</TASK>")), log[-2000:]


def test_kdump_tools_captures_a_sysrq_crash(debian_disk: DebianDisk, tmp_path: Path) -> None:
    enable = boot(debian_disk, step=KDUMP_TOOLS_ENABLE_STEP, timeout=240)
    enable.assert_step_ok()
    assert enable.reports()["enabled"] == "enabled"

    crashed = boot(debian_disk, step=KDUMP_TOOLS_CRASH_STEP, timeout=480)
    found = crashed.reports()
    assert found.get("status") == "current state   : ready to kdump", crashed.describe()
    assert found["crash_loaded"] == "1"
    crashed.expect(SYSRQ_PANIC)
    assert not crashed.run.timed_out, crashed.describe()
    # The crash kernel ran kdump-tools' capture and rebooted, which ended QEMU.
    crashed.expect(KDUMP_TOOLS_SAVED)
    assert crashed.step_rc is None

    listed = boot(debian_disk, step=KDUMP_TOOLS_LIST_STEP, timeout=240)
    listed.assert_step_ok()
    (stamp,) = listed.reports()["crashes"].split()
    assert re.fullmatch(r"\d{12}", stamp), stamp
    files = {e.name: e.size for e in debian_disk.listdir(f"/var/crash/{stamp}")}
    assert {f"dump.{stamp}", f"dmesg.{stamp}"} <= set(files), files

    dump = debian_disk.copy_file_out(f"/var/crash/{stamp}/dump.{stamp}", tmp_path / "dump")
    dmesg = subprocess.run([sys.executable, "-m", "pykexec", "vmcore", "dmesg", str(dump)],
                           capture_output=True, text=True, timeout=120)
    assert dmesg.returncode == 0, dmesg.stderr
    assert_log_ends_with_panic(dmesg.stdout)
    # The step's markers go through the kernel's log: the dump is of this boot's crash.
    assert f"{CRASH_MARKER} boot=2" in dmesg.stdout, dmesg.stdout[-2000:]
    saved_log = debian_disk.read_text(f"/var/crash/{stamp}/dmesg.{stamp}")
    assert SYSRQ_PANIC in saved_log

    print(f"\n[kdump-tools] boot to step runner: {crashed.time_of(BOOT_MARKER):.1f}s "
          f"(includes its unit's first start, building its crash initrd: {unit_run_seconds(found)}s)")
    print(f"[kdump-tools] crash marker -> panic: {seconds_from_crash_marker_to_panic(crashed):.1f}s")
    print(f"[kdump-tools] panic -> crash kernel's reboot (QEMU exit): "
          f"{crashed.duration - crashed.time_of(PANIC_LINE):.1f}s")
    capture = crashed.time_of(KDUMP_TOOLS_SAVED) - crashed.time_of(KDUMP_TOOLS_DUMP_START)
    print(f"[kdump-tools] makedumpfile in the crash kernel: {capture:.1f}s")
    print(f"[kdump-tools] panic -> next boot's step runner: {seconds_from_panic_to_boot(crashed, listed):.1f}s")
    print(f"[kdump-tools] dump: {files[f'dump.{stamp}']} bytes (makedumpfile -F -c -d 31), "
          f"dmesg: {files[f'dmesg.{stamp}']} bytes")
    print(f"[kdump-tools] crash initrd: {found['initrd_bytes']} bytes")
