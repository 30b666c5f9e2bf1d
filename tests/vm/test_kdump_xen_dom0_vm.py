"""pykexec's kdump service in a Xen 4.17 PV dom0 of the real Debian test bed (issue 13, item 4).

Three boots of Xen (``crashkernel=256M@1G``: Xen reserves the crash area) with the image's
generic 6.1 kernel as dom0 (:func:`support.testbed.debian_boot.boot_xen`):

1. ``pykexec kdump enable``;
2. the next boot, into Xen again: pykexec-kdump.service has loaded the crash kernel through
   Xen's kexec_op (it loads xenfs and xen-privcmd itself: the image has none of Xen's tools);
   ``status`` says loaded through Xen, with Xen's crash area as the reservation, ``test``
   passes; ``test --crash --yes`` panics dom0, Xen runs the crash kernel on the bare machine,
   whose console is Xen's serial port (dom0's ``console=hvc0`` swapped for ``ttyS0``): the
   capture's progress lines are on the serial log; it writes the dump, dom0's log and Xen's
   console ring, and reboots;
3. ``kdump list`` shows the crash, complete, with its panic line.

Read back on the host: dom0's log (the crash marker, then the panic), Xen's console ring
(the tail of what Xen printed on the serial port, up to its last words before the crash
kernel).  Slow (about 4 minutes under TCG): marked ``slow``.
"""

from __future__ import annotations

import json
import time

import pytest

from support.debian_fixtures import debian_disk, debian_testbed  # noqa: F401  (fixtures)
from support.kdump_steps import (CRASH_WITH_PYKEXEC, OUT, PYKEXEC_ENABLE_STEP, PYKEXEC_LIST_STEP, PYKEXEC_READY,
                                 SYSRQ_PANIC, capture_end, unit_run_seconds)
from support.testbed.debian import DebianDisk
from support.testbed.debian_boot import (BOOT_MARKER, PANIC_LINE, XEN_DOM0_KERNEL, boot_xen,
                                         seconds_from_panic_to_boot)
from support.testbed.debian_step import CRASH_MARKER

pytestmark = pytest.mark.slow

#: Xen's last line before it starts the crash kernel: the ring in the dump ends there.
XEN_LAST_WORDS = "(XEN) Shot down all CPUs"
XEN_KEXEC = "(XEN) Hardware Dom0 crashed: Executing kexec image on cpu0"

CRASH_STEP = f"""{PYKEXEC_READY}
report hypervisor "$(cat /sys/hypervisor/type)"
report capabilities "$(cat /proc/xen/capabilities)"
journalctl -b -u pykexec-kdump.service -o short-monotonic --no-pager > {OUT}/unit.log
pykexec kdump status --json > {OUT}/status.json
report status_rc $?
pykexec kdump status > {OUT}/status.txt
pykexec kdump test --json > {OUT}/test.json
report test_rc $?
{CRASH_WITH_PYKEXEC}"""

# What these print holds the panic line, which the console must show only for a panic:
# the host reads it from the disk.
LIST_STEP = f"""{PYKEXEC_LIST_STEP}
pykexec kdump list > {OUT}/list.txt
"""


def read_json(disk: DebianDisk, name: str) -> object:
    return json.loads(disk.read_text(f"{OUT}/{name}"))


def serial_xen_lines(log: str) -> list[str]:
    """Xen's own lines on the serial port, up to its last words before the crash kernel."""
    before = log[:log.index(XEN_LAST_WORDS) + len(XEN_LAST_WORDS)]
    return [line[line.index("(XEN)"):] for line in before.replace("\r", "").splitlines() if "(XEN)" in line]


def test_xen_dom0_enable_crash_capture_list(debian_disk: DebianDisk) -> None:
    t0 = time.monotonic()
    release = debian_disk.base.releases[XEN_DOM0_KERNEL]
    enable = boot_xen(debian_disk, step=PYKEXEC_ENABLE_STEP, timeout=300)
    enable.assert_step_ok()
    found = enable.reports()
    assert found["enable_rc"] == "0" and found["enabled"] == "enabled", enable.describe()
    enable.expect(f"{BOOT_MARKER} boot=1 release={release}")

    crashed = boot_xen(debian_disk, step=CRASH_STEP, timeout=420)
    found = crashed.reports()
    assert found.get("unit") == "active", crashed.describe()
    assert found["hypervisor"] == "xen" and found["capabilities"] == "control_d", found
    status = read_json(debian_disk, "status.json")
    assert isinstance(status, dict)
    assert found["status_rc"] == "0" and status["loaded"] is True, status
    assert status["loaded_through"] == "xen_kexec_op", status
    assert status["changed_since_load"] == [], status
    # The reservation is Xen's crash area (crashkernel=256M@1G on Xen's command line); dom0's
    # own command line has no crashkernel= at all.
    assert status["reserved_bytes"] == 256 << 20, status
    status_text = debian_disk.read_text(f"{OUT}/status.txt")
    assert "crash kernel: loaded through Xen" in status_text, status_text
    # The unit set dom0's Xen interfaces up itself (the image has none of Xen's tools).
    unit_log = debian_disk.read_text(f"{OUT}/unit.log")
    assert "pykexec kdump: Xen dom0: loaded xenfs, xen-privcmd" in unit_log, unit_log
    assert "pykexec kdump: Xen dom0: mounted xenfs on /proc/xen" in unit_log, unit_log
    checks = {c["check"]: c for c in read_json(debian_disk, "test.json")}  # type: ignore[attr-defined]
    assert found["test_rc"] == "0", checks
    assert checks["reservation"]["status"] == "ok", checks
    assert checks["reservation"]["message"].startswith("256 MiB reserved, about "), checks
    # Everything else passes but the room for the dump: in a dom0, /proc/kcore shows dom0's
    # memory, not the machine's that the dump holds, so no size is predicted (and said so).
    assert [c for c, f in checks.items() if f["status"] != "ok"] == ["target"], checks
    assert checks["target"]["status"] == "warn" and "the dump's size is unknown" in checks["target"]["message"]
    crashed.expect(SYSRQ_PANIC)
    assert "crash_rc" not in found, crashed.describe()  # the command did not return
    # Xen takes over, then the crash kernel prints on the serial port (console=ttyS0).
    crashed.expect(XEN_KEXEC)
    after_xen = crashed.log.split(XEN_LAST_WORDS, 1)[1]
    assert "pykexec-kdump: capture started, target /var/crash" in after_xen, crashed.describe()
    assert "pykexec-kdump: log saved: " in after_xen and "xen-dmesg.txt" in after_xen, crashed.describe()
    done = capture_end(crashed)
    assert done.startswith("capture complete") and done.endswith("final action: reboot"), crashed.describe()
    crashed.expect("reboot: Restarting system")
    assert not crashed.run.timed_out, crashed.describe()

    listed = boot_xen(debian_disk, step=LIST_STEP, timeout=300)
    listed.assert_step_ok()
    assert listed.reports()["list_rc"] == "0", listed.describe()
    crashes = read_json(debian_disk, "list.json")
    assert isinstance(crashes, list) and len(crashes) == 1, crashes
    (crash,) = crashes
    assert crash["complete"] is True and crash["error"] is None, crash
    assert crash["panic"] == SYSRQ_PANIC, crash
    assert crash["kernel_release"] == release, crash
    assert crash["xen_log"] == "xen-dmesg.txt", crash
    directory = f"/var/crash/{crash['id']}"
    files = {e.name: e.size for e in debian_disk.listdir(directory)}
    assert set(files) == {"vmcore", "dmesg.txt", "xen-dmesg.txt", "record.json"}, files
    assert files["vmcore"] == crash["dump_bytes"]
    table = debian_disk.read_text(f"{OUT}/list.txt").splitlines()
    assert len(table) == 2 and " complete " in table[1] and table[1].endswith(SYSRQ_PANIC), table

    # dom0's log: this boot's crash marker, then the panic.
    dom0_log = debian_disk.read_text(f"{directory}/dmesg.txt")
    marker = dom0_log.rfind(f"{CRASH_MARKER} boot=2")
    assert marker >= 0 and SYSRQ_PANIC in dom0_log[marker:], dom0_log[-3000:]
    # Xen's console ring: the tail of what Xen printed on the serial port before the crash kernel.
    ring = debian_disk.read_text(f"{directory}/xen-dmesg.txt").splitlines()
    serial = serial_xen_lines(crashed.log)
    assert ring[-2:] == [XEN_KEXEC, XEN_LAST_WORDS], ring[-20:]
    start = len(serial) - len(ring)
    assert start >= 0 and serial[start:] == ring, "Xen's ring is not the tail of its serial output"

    unit_seconds = unit_run_seconds(found)
    print("\n" + "\n".join(table))
    print(f"[pykexec kdump, Xen dom0] boot into Xen -> step runner (unit loaded the crash kernel): "
          f"{crashed.time_of(BOOT_MARKER):.1f}s (the unit's load, initramfs built: "
          f"{'unknown' if unit_seconds is None else f'{unit_seconds:.1f}s'})")
    print(f"[pykexec kdump, Xen dom0] panic -> crash kernel's reboot (QEMU exit): "
          f"{crashed.duration - crashed.time_of(PANIC_LINE):.1f}s")
    print(f"[pykexec kdump, Xen dom0] capture in the crash kernel: {done}")
    print(f"[pykexec kdump, Xen dom0] panic -> next boot's step runner: "
          f"{seconds_from_panic_to_boot(crashed, listed):.1f}s")
    print(f"[pykexec kdump, Xen dom0] dump: {crash['dump_bytes']} bytes ({crash['compression']}, "
          f"-d {crash['dump_level']}); dom0's log {files['dmesg.txt']} bytes; Xen's ring {len(ring)} lines")
    print(f"[pykexec kdump, Xen dom0] wall time: {time.monotonic() - t0:.0f}s")
