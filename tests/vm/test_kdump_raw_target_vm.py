"""pykexec's kdump service with a raw block device as its target, on the Debian test bed:
``target = "/dev/vdb"`` (a blank second disk), ``enable --now``, ``test --crash``; the crash
kernel writes the dump to the device as a flattened stream and reboots; at the next boot the
unit's ``kdump load`` collects it into /var/crash (dump, log, record), erases the stream's
start header, and ``kdump list`` shows the crash, complete, with its panic line.

Checked on the host between the boots: the device holds a stream ``makedumpfile -R`` reads
whole.  Slow (a crash cycle under TCG): marked ``slow``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pykexec.layouts import flattened as F

from support.debian_fixtures import debian_disk, debian_testbed  # noqa: F401  (fixtures)
from support.kdump_steps import CRASH_WITH_PYKEXEC, OUT, SYSRQ_PANIC, capture_end
from support.testbed.debian import DebianDisk
from support.testbed.debian_boot import PANIC_LINE, boot

pytestmark = pytest.mark.slow

RAW_BYTES = 256 << 20

RAW_STEP = f"""
mkdir -p {OUT} /etc/pykexec
echo 'target = "/dev/vdb"' > /etc/pykexec/kdump.toml
pykexec kdump enable --now
report enable_rc $?
pykexec kdump test --json > {OUT}/test.json
report test_rc $?
pykexec kdump test
{CRASH_WITH_PYKEXEC}"""

COLLECTED_STEP = f"""
journalctl -b -u pykexec-kdump.service --no-pager -o cat
report unit "$(systemctl is-active pykexec-kdump.service)"
pykexec kdump list --json > {OUT}/list.json
report list_rc $?
# Into a file: its panic line on the console would read as a panic of this boot.
pykexec kdump list > {OUT}/list.txt
"""


def test_raw_target_captured_then_collected(debian_disk: DebianDisk, tmp_path: Path) -> None:
    t0 = time.monotonic()
    raw = tmp_path / "raw.img"
    with open(raw, "wb") as f:
        f.truncate(RAW_BYTES)
    second_disk = ["-drive", f"file={raw},if=virtio,format=raw"]

    crashed = boot(debian_disk, step=RAW_STEP, timeout=600, extra_qemu_args=second_disk)
    found = crashed.reports()
    assert found.get("enable_rc") == "0", crashed.describe()
    checks = json.loads(debian_disk.read_text(f"{OUT}/test.json"))
    assert found["test_rc"] == "0" and all(c["status"] == "ok" for c in checks), checks
    assert any("raw target /dev/vdb" in c["message"] for c in checks), checks
    crashed.expect(SYSRQ_PANIC)
    assert "crash_rc" not in found, crashed.describe()
    done = capture_end(crashed)
    assert done.startswith("capture complete") and done.endswith("final action: reboot"), crashed.describe()
    crashed.expect("reboot: Restarting system")

    # On the device: a whole flattened stream, as makedumpfile -R takes it.
    with open(raw, "rb") as f:
        assert F.is_start_header(f.read(F.START_HEADER_SIZE))
    with open(raw, "rb") as stream:
        made = subprocess.run(["makedumpfile", "-R", str(tmp_path / "from-raw")], stdin=stream,
                              capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stdout + made.stderr

    listed = boot(debian_disk, step=COLLECTED_STEP, timeout=300, extra_qemu_args=second_disk)
    listed.assert_step_ok()
    found = listed.reports()
    assert found["unit"] == "active" and found["list_rc"] == "0", listed.describe()
    listed.expect("pykexec kdump: collected the dump on /dev/vdb into /var/crash/")
    crashes = json.loads(debian_disk.read_text(f"{OUT}/list.json"))
    assert len(crashes) == 1, crashes
    (crash,) = crashes
    assert crash["complete"] is True and crash["error"] is None, crash
    assert crash["panic"] == SYSRQ_PANIC, crash
    assert crash["kernel_release"] == debian_disk.base.releases["6.1"]
    table = debian_disk.read_text(f"{OUT}/list.txt").splitlines()
    assert len(table) == 2 and " complete " in table[1] and table[1].endswith(SYSRQ_PANIC), table
    directory = crash["directory"]
    files = {e.name: e.size for e in debian_disk.listdir(directory)}
    assert set(files) == {"vmcore", "dmesg.txt", "record.json"}, files
    # The collected dump is the stream's file: what makedumpfile -R rebuilt from the device.
    collected = debian_disk.copy_file_out(f"{directory}/vmcore", tmp_path / "collected")
    assert collected.read_bytes() == (tmp_path / "from-raw").read_bytes()
    res = subprocess.run([sys.executable, "-m", "pykexec", "vmcore", "dmesg", str(collected)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and SYSRQ_PANIC in res.stdout, res.stderr
    assert debian_disk.read_text(f"{directory}/dmesg.txt") == res.stdout
    # Collected once: the stream's start header is gone from the device.
    with open(raw, "rb") as f:
        assert f.read(F.START_HEADER_SIZE) == bytes(F.START_HEADER_SIZE)

    print(f"\n[pykexec kdump, raw target] {done}")
    print(f"[pykexec kdump, raw target] dump {files['vmcore']} bytes collected into {directory}; "
          f"panic -> crash kernel's reboot {crashed.duration - crashed.time_of(PANIC_LINE):.1f}s; "
          f"wall time {time.monotonic() - t0:.0f}s")
