"""pykexec's kdump service on the real Debian 12 test bed (issue 13), end to end:

* ``pykexec kdump enable``, a reboot, and pykexec-kdump.service has loaded the crash kernel
  (``status`` and ``test`` say so); ``estimate`` predicts the dump; ``test --crash --yes``
  panics, the crash kernel captures to /var/crash and reboots; the next boot's
  ``kdump list`` shows that crash, complete, with its panic line, ``show`` its log and
  registers, and the dump's log read back on the host ends with the panic;
* a target too small for the dump (a 16 MiB ext4 disk mounted on /var/crash): the log is
  saved, the dump marked incomplete, the failure action (poweroff) taken, and the next
  boot lists the crash as incomplete;
* ``systemctl kexec`` into a kernel loaded by ``pykexec -l``: systemd shuts down and jumps,
  and the next boot runs in the same QEMU process.

Each test prints its figures; benchmarks/kdump_service.py runs kdump-tools' capture on the
same image beside pykexec's, for the comparison.  Slow (several minutes under TCG): marked ``slow``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.debian_fixtures import debian_disk, debian_testbed  # noqa: F401  (fixtures)
from support.kdump_steps import (CRASH_WITH_PYKEXEC, OUT, PYKEXEC_ENABLE_STEP, PYKEXEC_LIST_STEP, PYKEXEC_READY,
                                 STATE, SYSRQ_PANIC, capture_end, peak_memory, unit_run_seconds)
from support.testbed.debian import DebianDisk
from support.testbed.debian_boot import (BOOT_MARKER, PANIC_LINE, DebianBoot, boot,
                                         seconds_from_crash_marker_to_panic, seconds_from_panic_to_boot)
from support.testbed.ext4 import make_image

pytestmark = pytest.mark.slow

# The unit has loaded the crash kernel: `status`, `test` and `estimate` before the crash.
CRASH_STEP = f"""{PYKEXEC_READY}
pykexec kdump status --json > {OUT}/status.json
report status_rc $?
pykexec kdump test --json > {OUT}/test.json
report test_rc $?
pykexec kdump test
pykexec kdump estimate
# The prediction checked is the last one before the crash, and both come a few seconds after
# the command before them: an exited process's pages wait a while on the per-CPU free lists
# (on 6.12, tens of MiB for seconds), which neither a dump nor a prediction can tell from used
# pages.  Made at once, each would see the last command's leftovers and not the other's.
sleep 3
pykexec kdump estimate --json > {OUT}/estimate.json
report estimate_rc $?
cat {STATE}/initramfs.img.json
sleep 3
{CRASH_WITH_PYKEXEC}"""

# What these print holds the panic line, which the console must show only for a panic:
# the host reads it from the disk.
LIST_STEP = f"""{PYKEXEC_LIST_STEP}
pykexec kdump list > {OUT}/list.txt
id=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[0]["id"])' {OUT}/list.json)
pykexec kdump show "$id" > {OUT}/show.txt
report show_rc $?
pykexec vmcore dmesg "/var/crash/$id/vmcore" > {OUT}/vmcore-dmesg.txt
report dmesg_rc $?
pykexec kdump status --json > {OUT}/status-after.json
"""


def read_json(disk: DebianDisk, name: str) -> object:
    return json.loads(disk.read_text(f"{OUT}/{name}"))


def assert_ends_with_panic(log: str) -> None:
    """The sysrq panic is the log's last record but for the stack of the CPU that panicked
    (6.12 prints it after the panic line)."""
    lines = log.rstrip("\n").splitlines()
    last = max((i for i, line in enumerate(lines) if SYSRQ_PANIC in line), default=None)
    assert last is not None, log[-3000:]
    trailing = lines[last + 1:]
    assert trailing == [] or trailing[-1].endswith("</TASK>"), "\n".join(lines[last:])


def host_dmesg(dump: Path) -> str:
    """``pykexec vmcore dmesg`` of a dump, run on the host."""
    res = subprocess.run([sys.executable, "-m", "pykexec", "vmcore", "dmesg", str(dump)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout


def capture_line(crashed: DebianBoot, what: str) -> str:
    """The capture's console line holding ``what``, without its ``pykexec-kdump:``."""
    return crashed.expect(f"pykexec-kdump: {what}").split("pykexec-kdump: ", 1)[1]


@pytest.mark.parametrize("kernel", ["6.1", "6.12"])
def test_service_enable_crash_capture_list(debian_disk: DebianDisk, tmp_path: Path, kernel: str) -> None:
    t0 = time.monotonic()
    enable = boot(debian_disk, step=PYKEXEC_ENABLE_STEP, kernel=kernel, timeout=300)
    enable.assert_step_ok()
    found = enable.reports()
    assert found["enable_rc"] == "0", enable.describe()
    assert found["enabled"] == "enabled"
    assert found["enable_again"] == "pykexec kdump: pykexec-kdump.service is already installed and enabled"

    crashed = boot(debian_disk, step=CRASH_STEP, kernel=kernel, timeout=600)
    found = crashed.reports()
    assert found.get("unit") == "active", crashed.describe()
    assert found["state"] == "running", crashed.describe()
    status = read_json(debian_disk, "status.json")
    assert isinstance(status, dict)
    assert found["status_rc"] == "0" and status["loaded"] is True, status
    assert status["changed_since_load"] == [], status
    checks = read_json(debian_disk, "test.json")
    assert isinstance(checks, list)
    assert found["test_rc"] == "0" and all(c["status"] == "ok" for c in checks), checks
    estimate = read_json(debian_disk, "estimate.json")
    assert isinstance(estimate, dict) and estimate["dump"] is not None, estimate
    predicted = estimate["dump"]["predicted_bytes"]
    crashed.expect(SYSRQ_PANIC)
    assert "crash_rc" not in found, crashed.describe()  # the command did not return
    capture_line(crashed, "capture started, target /var/crash")
    done = capture_end(crashed)
    assert done.startswith("capture complete") and done.endswith("final action: reboot"), crashed.describe()
    crashed.expect("reboot: Restarting system")
    assert not crashed.run.timed_out, crashed.describe()
    assert crashed.step_rc is None

    listed = boot(debian_disk, step=LIST_STEP, kernel=kernel, timeout=300)
    listed.assert_step_ok()
    found = listed.reports()
    assert found["list_rc"] == found["show_rc"] == found["dmesg_rc"] == "0", listed.describe()
    crashes = read_json(debian_disk, "list.json")
    assert isinstance(crashes, list) and len(crashes) == 1, crashes
    (crash,) = crashes
    assert crash["complete"] is True and crash["error"] is None, crash
    assert crash["panic"] == SYSRQ_PANIC, crash
    assert crash["kernel_release"] == debian_disk.base.releases[kernel]
    directory = f"/var/crash/{crash['id']}"
    assert crash["directory"] == directory
    files = {e.name: e.size for e in debian_disk.listdir(directory)}
    assert set(files) == {"vmcore", "dmesg.txt", "record.json"}, files
    assert files["vmcore"] == crash["dump_bytes"]

    after = read_json(debian_disk, "status-after.json")
    assert isinstance(after, dict) and [c["id"] for c in after["crashes"]] == [crash["id"]], after

    dump = debian_disk.copy_file_out(f"{directory}/vmcore", tmp_path / "vmcore")
    on_host = host_dmesg(dump)
    assert_ends_with_panic(on_host)
    # The same log three ways: read in the crash kernel, by the guest and by the host from the dump.
    assert debian_disk.read_text(f"{OUT}/vmcore-dmesg.txt") == on_host
    assert debian_disk.read_text(f"{directory}/dmesg.txt") == on_host

    show = debian_disk.read_text(f"{OUT}/show.txt")
    assert f"crash {crash['id']} (complete)" in show, show
    assert f"panic:   {SYSRQ_PANIC}" in show, show
    # The log's end (the panicking task's stack, after the panic line) as the log holds it.
    tail = "".join(f"  {line}\n" for line in on_host.splitlines()[-30:])
    assert f"dmesg.txt (last 30 lines):\n{tail}" in show, show
    # The registers of the task that panicked ("CPU: 0 PID: 283 Comm: pykexec"; 6.12 adds "UID: 0").
    (pid,) = re.findall(r"CPU: 0 (?:UID: \d+ )?PID: (\d+) Comm: pykexec", on_host)
    assert re.search(rf"CPU 0 \(pid {pid}\), the one that panicked:\n\s+rip\s+0x[0-9a-f]+", show), show

    actual = crash["dump_bytes"]
    wall = time.monotonic() - t0
    print("\n" + debian_disk.read_text(f"{OUT}/list.txt") + show, end="")
    unit_seconds = unit_run_seconds(crashed.reports())
    print(f"[pykexec kdump, {kernel}] boot with the unit to step runner: {crashed.time_of(BOOT_MARKER):.1f}s "
          f"(the unit's load, initramfs built: {'unknown' if unit_seconds is None else f'{unit_seconds:.1f}s'})")
    print(f"[pykexec kdump, {kernel}] crash marker -> panic: {seconds_from_crash_marker_to_panic(crashed):.1f}s")
    print(f"[pykexec kdump, {kernel}] panic -> crash kernel's reboot (QEMU exit): "
          f"{crashed.duration - crashed.time_of(PANIC_LINE):.1f}s")
    print(f"[pykexec kdump, {kernel}] capture in the crash kernel: {done}")
    print(f"[pykexec kdump, {kernel}] panic -> next boot's step runner: "
          f"{seconds_from_panic_to_boot(crashed, listed):.1f}s")
    print(f"[pykexec kdump, {kernel}] dump: {actual} bytes ({crash['compression']}, -d {crash['dump_level']}); "
          f"predicted {predicted} bytes ({(predicted - actual) / actual:+.1%}: goal of 20% "
          f"{'met' if abs(predicted - actual) <= 0.2 * actual else 'MISSED'}), 95% interval "
          f"{estimate['dump']['interval_95_bytes']}")
    print(f"[pykexec kdump, {kernel}] crash initramfs: {crashed.reports()['initramfs_bytes']} bytes")
    print(f"[pykexec kdump, {kernel}] crash kernel peak memory: {peak_memory(done)}")
    print(f"[pykexec kdump, {kernel}] wall time: {wall:.0f}s")
    # The goal is 20%, but the dump also keeps the free pages waiting on the per-CPU lists at
    # the instant of the crash (no PageBuddy: makedumpfile keeps them too), whose number no
    # prediction seconds before can know: 3,400 to 11,600 pages (13 to 45 MiB) in this guest's
    # 6.1 dumps, whole 2 MiB blocks among them.  So only an estimate that inflates memory (its
    # own leftovers counted, as a write probe once did: 2.6 times the dump) or misses what the
    # dump keeps fails here; the 20% goal is reported above.  The other way round too: in
    # one CI run (6.1, two guests at once) the dump kept 8,000 pages fewer than the estimate
    # 3 s before it counted, and 19.9 MB were predicted as 37.4 MB (1.88x).  The cause is the
    # dump's, not the estimate's: free pages on the per-CPU lists were kept (as makedumpfile
    # keeps them).  Dumps and estimates now leave them out (vmcore/percpu_free.py), but of a
    # high-order block on a per-CPU list only the page on the list is known to be free: the
    # rest of the block is still kept, so the bound stays until that is measured.
    assert actual / 2.5 <= predicted <= 2 * actual, (predicted, actual)


SMALL_TARGET_BYTES = 16 << 20
SMALL_TARGET_LABEL = "kdump-small"

# A disk too small for the dump on /var/crash, poweroff as the failure action (the final
# action stays reboot: the console tells which was taken); `kdump test` must see it.
SMALL_TARGET_STEP = f"""
mkdir -p {OUT} /etc/pykexec
echo 'LABEL={SMALL_TARGET_LABEL} /var/crash ext4 defaults 0 2' >> /etc/fstab
systemctl daemon-reload
mount /var/crash
report target "$(findmnt -n -o SOURCE,FSTYPE /var/crash)"
echo 'failure_action = "poweroff"' > /etc/pykexec/kdump.toml
pykexec kdump enable --now
report enable_rc $?
pykexec kdump test --json > {OUT}/test.json
report test_rc $?
pykexec kdump test
{CRASH_WITH_PYKEXEC}"""

SMALL_LIST_STEP = f"""
report target "$(findmnt -n -o SOURCE /var/crash)"
pykexec kdump list > {OUT}/list.txt
pykexec kdump list --json > {OUT}/list.json
report list_rc $?
"""


def test_target_too_small(debian_disk: DebianDisk, tmp_path: Path) -> None:
    t0 = time.monotonic()
    (tmp_path / "empty").mkdir()
    small = make_image(tmp_path / "small.img", tmp_path / "empty", size_bytes=SMALL_TARGET_BYTES,
                       label=SMALL_TARGET_LABEL)
    second_disk = ["-drive", f"file={small.path},if=virtio,format=raw"]

    crashed = boot(debian_disk, step=SMALL_TARGET_STEP, timeout=600, extra_qemu_args=second_disk)
    found = crashed.reports()
    assert found.get("target") == "/dev/vdb ext4", crashed.describe()
    assert found["enable_rc"] == "0", crashed.describe()
    # kdump test warns before the crash: the predicted dump does not fit.
    checks = read_json(debian_disk, "test.json")
    assert isinstance(checks, list)
    assert found["test_rc"] == "1", checks
    assert [c["check"] for c in checks if c["status"] != "ok"] == ["target"], checks
    crashed.expect(SYSRQ_PANIC)
    capture_line(crashed, "target /dev/vdb (ext4) mounted on /mnt/target")
    capture_line(crashed, "log saved: ")
    done = capture_end(crashed)
    assert done.startswith("capture FAILED") and done.endswith("failure action: poweroff"), crashed.describe()
    crashed.expect("reboot: Power down")
    assert not crashed.run.timed_out, crashed.describe()

    listed = boot(debian_disk, step=SMALL_LIST_STEP, timeout=300, extra_qemu_args=second_disk)
    listed.assert_step_ok()
    assert listed.reports()["target"] == "/dev/vdb"
    crashes = read_json(debian_disk, "list.json")
    assert isinstance(crashes, list) and len(crashes) == 1, crashes
    (crash,) = crashes
    assert crash["complete"] is False and crash["panic"] == SYSRQ_PANIC, crash
    assert "No space left on device" in crash["error"], crash
    # On the small disk itself: the whole log, and the part of the dump that fitted.
    files = {e.name: e.size for e in small.listdir(f"/{crash['id']}")}
    assert {"dmesg.txt", "record.json", "vmcore"} <= set(files), files
    log = small.read_text(f"/{crash['id']}/dmesg.txt")
    assert_ends_with_panic(log)
    record = json.loads(small.read_text(f"/{crash['id']}/record.json"))
    assert record["complete"] is False and record["error"] == crash["error"]
    small.fsck()
    print("\n" + debian_disk.read_text(f"{OUT}/list.txt"), end="")

    print(f"[pykexec kdump, {SMALL_TARGET_BYTES >> 20} MiB target] {done}")
    print(f"[pykexec kdump, {SMALL_TARGET_BYTES >> 20} MiB target] saved: log {files['dmesg.txt']} bytes, "
          f"partial dump {files['vmcore']} bytes; error: {crash['error']}")
    print(f"[pykexec kdump, {SMALL_TARGET_BYTES >> 20} MiB target] wall time: {time.monotonic() - t0:.0f}s")


# The step of the kexec'd boot is written by the first boot's step (the runner picks it
# up at its next start); the first step then waits for systemd to shut it down.
KEXEC_STEP = """
cat > /var/lib/testbed/step.sh <<'EOF'
report kexec_boot "$TESTBED_BOOT"
report kexec_release "$(uname -r)"
report kexec_state "$(systemctl is-system-running --wait)"
EOF
release=$(ls /boot/vmlinuz-* | sed -n 's|/boot/vmlinuz-||; /^6\\.12/p')
pykexec -l "/boot/vmlinuz-$release" --initrd "/boot/initrd.img-$release" --reuse-cmdline
report load_rc $?
report kexec_loaded "$(cat /sys/kernel/kexec_loaded)"
report kexec_requested "$(date +%s)"
drain_console
systemctl kexec
sleep 600
"""


def test_systemctl_kexec(debian_disk: DebianDisk) -> None:
    t0 = time.monotonic()
    run = boot(debian_disk, step=KEXEC_STEP, kernel="6.1", timeout=600)
    found = run.reports()
    assert found.get("load_rc") == "0" and found["kexec_loaded"] == "1", run.describe()
    # systemd stopped the system, then jumped: no firmware (QEMU, with -no-reboot, would have
    # exited on a reset), a clean root file system in the next kernel.
    run.expect("systemd-shutdown[1]: Rebooting with kexec.")
    jump = run.time_of("kexec_core: Starting new kernel")
    assert found.get("kexec_boot") == "2", run.describe()
    assert found["kexec_release"] == debian_disk.base.releases["6.12"]
    assert found["kexec_state"] == "running", run.describe()
    run.assert_step_ok()  # the kexec'd boot's step, and its poweroff
    after_jump = run.log.split("kexec_core: Starting new kernel", 1)[1]
    assert "EXT4-fs (vda): recovery complete" not in after_jump, run.describe()
    debian_disk.fsck()
    booted = [t for t, line in run.line_times if BOOT_MARKER in line]
    requested = run.time_of("TESTBED-REPORT kexec_requested")
    print(f"\n[systemctl kexec] systemctl kexec -> new kernel: {jump - requested:.1f}s (the shutdown); "
          f"new kernel -> its step runner: {booted[-1] - jump:.1f}s; wall time {time.monotonic() - t0:.0f}s")
