"""pykexec's kdump service with an ssh target (issue 13, test 2), on the Debian test bed.

The host runs an sshd bound to 127.0.0.1 (support/testbed/ssh_host.py); the guest's only
network is QEMU's user network with ``restrict=on`` and one forward, 10.0.2.100:22, to that
sshd: every byte stays on the host's loopback.  The guest gets its address by DHCP
(systemd-networkd), its key in /etc/pykexec and the host's key in root's known_hosts, as an
admin would set them; then ``pykexec kdump enable --now`` builds a crash initramfs with the
network driver and ssh, ``kdump test`` checks the target over ssh, and ``kdump test --crash``
panics.  The crash kernel brings the interface up, streams the dump flattened to the host,
names it ``vmcore.flat`` once complete, writes the log and the record, and reboots.

Read on the host, from the sshd's directory: the record (complete, the panic line), the log
ending with the panic, the stream read as it is by ``pykexec vmcore dmesg`` and rebuilt by
``pykexec vmcore reassemble`` into the kdump-compressed file ``makedumpfile -R`` makes too; sshd's
log: every connection from 127.0.0.1.  Slow (a crash cycle under TCG): marked ``slow``.
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
from support.testbed.cache import TestbedError
from support.testbed.debian import DebianDisk
from support.testbed.debian_boot import PANIC_LINE, boot
from support.testbed.debian_step import CRASH_MARKER
from support.testbed.ssh_host import GUEST_MAC, GUEST_SSH_ADDRESS, HostSshd

pytestmark = pytest.mark.slow

SYSRQ_PANIC = f"{PANIC_LINE}: sysrq triggered crash"
OUT = "/var/lib/testbed/out"
KEY = "/etc/pykexec/kdump_id_ed25519"


def ssh_step(target_dir: Path) -> str:
    return f"""
mkdir -p {OUT} /etc/systemd/network
printf '[Match]\\nMACAddress={GUEST_MAC}\\n\\n[Network]\\nDHCP=ipv4\\n' > /etc/systemd/network/20-wired.network
systemctl enable --now systemd-networkd
/lib/systemd/systemd-networkd-wait-online --timeout=60
report online $?
echo 'target = "ssh://root@{GUEST_SSH_ADDRESS}{target_dir}"' > /etc/pykexec/kdump.toml
pykexec kdump enable --now
report enable_rc $?
pykexec kdump status --json > {OUT}/status.json
report status_rc $?
pykexec kdump test --json > {OUT}/test.json
report test_rc $?
pykexec kdump test
mark "{CRASH_MARKER} boot=$TESTBED_BOOT"
sync
drain_console
pykexec kdump test --crash --yes
report crash_rc $?
"""


def run_pykexec(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pykexec", *argv], capture_output=True, text=True, timeout=300)


def test_ssh_target(debian_disk: DebianDisk, tmp_path: Path) -> None:
    t0 = time.monotonic()
    try:
        sshd_cm = HostSshd(tmp_path / "sshd")
    except TestbedError as err:
        pytest.fail(str(err), pytrace=False)
    with sshd_cm as sshd:
        debian_disk.write_files([(KEY, sshd.client_key, 0o600),
                                 ("/root/.ssh/known_hosts", sshd.known_hosts_line(), 0o644)])
        crashed = boot(debian_disk, step=ssh_step(sshd.target_dir), timeout=600,
                       extra_qemu_args=sshd.qemu_args())
        sshd_log = sshd.log()
    found = crashed.reports()
    assert found.get("online") == "0", crashed.describe()
    assert found.get("enable_rc") == "0", crashed.describe()
    status = json.loads(debian_disk.read_text(f"{OUT}/status.json"))
    assert status["loaded"] is True and status["target"].startswith("ssh://"), status
    checks = json.loads(debian_disk.read_text(f"{OUT}/test.json"))
    assert found["test_rc"] == "0" and all(c["status"] == "ok" for c in checks), checks
    target_check = next(c for c in checks if c["check"] == "target")
    assert f"root@{GUEST_SSH_ADDRESS}:{sshd.target_dir}" in target_check["message"], target_check

    crashed.expect(SYSRQ_PANIC)
    assert "crash_rc" not in found, crashed.describe()
    crashed.expect("pykexec-kdump: network ")
    m = re.search(r"pykexec-kdump: (capture (?:complete|FAILED) in .*)", crashed.log)
    assert m and m.group(1).startswith("capture complete"), crashed.describe()
    crashed.expect("reboot: Restarting system")
    assert not crashed.run.timed_out, crashed.describe()

    # The crash directory on the host, as the crash kernel left it.
    (directory,) = [d for d in sshd.target_dir.iterdir() if d.is_dir()]
    files = {f.name: f.stat().st_size for f in directory.iterdir()}
    assert set(files) == {"vmcore.flat", "dmesg.txt", "record.json"}, files
    record = json.loads((directory / "record.json").read_text())
    assert record["complete"] is True and record["error"] is None, record
    assert record["panic"] == SYSRQ_PANIC and record["dump"] == "vmcore.flat", record
    assert record["dump_bytes"] == files["vmcore.flat"], (record, files)
    assert record["kernel_release"] == debian_disk.base.releases["6.1"]

    # The stream read as it is, and rebuilt into the kdump-compressed file makedumpfile reads.
    flat = directory / "vmcore.flat"
    dmesg = run_pykexec("vmcore", "dmesg", str(flat))
    assert dmesg.returncode == 0, dmesg.stderr
    assert SYSRQ_PANIC in dmesg.stdout, dmesg.stdout[-2000:]
    assert (directory / "dmesg.txt").read_text() == dmesg.stdout
    rebuilt = tmp_path / "vmcore"
    res = run_pykexec("vmcore", "reassemble", str(flat), str(rebuilt))
    assert res.returncode == 0, res.stderr
    # makedumpfile -R rebuilds the same file from the stream, byte for byte.
    theirs = tmp_path / "vmcore.makedumpfile-R"
    with open(flat, "rb") as stream:
        made = subprocess.run(["makedumpfile", "-R", str(theirs)], stdin=stream, capture_output=True, text=True,
                              timeout=300)
    assert made.returncode == 0, made.stdout + made.stderr
    assert theirs.read_bytes() == rebuilt.read_bytes()
    info = run_pykexec("vmcore", "info", str(rebuilt))
    assert info.returncode == 0 and record["kernel_release"] in info.stdout, info.stdout + info.stderr

    # Every connection reached sshd from the loopback (the relay), none from anywhere else.
    accepted = re.findall(r"Accepted publickey for root from (\S+) port", sshd_log)
    assert len(accepted) >= 4, sshd_log  # kdump test's two, and the capture's
    assert set(accepted) == {"127.0.0.1"}, accepted
    assert not re.search(r"from (?!127\.0\.0\.1\b)\d+\.\d+\.\d+\.\d+", sshd_log), sshd_log

    print(f"\n[pykexec kdump, ssh target] {m.group(1)}")
    print(f"[pykexec kdump, ssh target] dump {files['vmcore.flat']} bytes (flattened), rebuilt "
          f"{rebuilt.stat().st_size} bytes; {len(accepted)} ssh connections, all from 127.0.0.1")
    print(f"[pykexec kdump, ssh target] panic -> crash kernel's reboot: "
          f"{crashed.duration - crashed.time_of(PANIC_LINE):.1f}s; wall time {time.monotonic() - t0:.0f}s")
