"""Prove the Debian test bed (support/testbed/debian.py) the kdump service's end-to-end tests
run on: a real Debian 12 system boots under systemd from its virtio disk, runs the test's
step, has pykexec from this checkout and a crash kernel reservation, and a second QEMU run of
the same disk is the system's second boot (with the image's other kernel: 6.1, then 6.12)."""

from __future__ import annotations

import re

from support.debian_fixtures import debian_disk, debian_testbed  # noqa: F401  (fixtures)
from support.testbed.debian import GUEST_SITE_PACKAGES, DebianDisk
from support.testbed.debian_boot import BOOT_MARKER, boot

FIRST_STEP = """
report release "$(uname -r)"
report state "$(systemctl is-system-running --wait)"
report failed_units "$(systemctl --failed --no-legend --plain | tr '\\n' ' ')"
report pykexec "$(python3 -c 'import pykexec; print(pykexec.__file__)')"
report pykexec_command "$(command -v pykexec)"
pykexec kdump --help > /dev/null && report pykexec_cli ok
report crash_kernel "$(grep 'Crash kernel' /proc/iomem)"
report kdump_tools "$(systemctl is-enabled kdump-tools.service)"
echo "written by boot $TESTBED_BOOT" > /var/lib/testbed/note
"""

SECOND_STEP = """
report release "$(uname -r)"
report state "$(systemctl is-system-running --wait)"
report note "$(cat /var/lib/testbed/note)"
report previous_step "$(test -f /var/lib/testbed/step-1.sh && echo kept)"
"""


def test_two_boots_of_one_disk(debian_disk: DebianDisk) -> None:
    first = boot(debian_disk, step=FIRST_STEP, kernel="6.1", timeout=240)
    first.assert_step_ok()
    found = first.reports()
    assert first.boot_number == 1
    assert found["release"] == debian_disk.base.releases["6.1"]
    assert found["state"] == "running", found["failed_units"]
    assert found["pykexec"] == f"{GUEST_SITE_PACKAGES}/pykexec/__init__.py"
    assert found["pykexec_command"] == "/usr/local/bin/pykexec"
    assert found.get("pykexec_cli") == "ok", first.describe()
    # crashkernel=256M reserved a 256 MiB region.
    region = re.match(r"\s*([0-9a-f]+)-([0-9a-f]+) : Crash kernel", found["crash_kernel"])
    assert region, found["crash_kernel"]
    assert int(region.group(2), 16) + 1 - int(region.group(1), 16) == 256 << 20
    assert found["kdump_tools"] == "disabled"

    second = boot(debian_disk, step=SECOND_STEP, kernel="6.12", timeout=240)
    second.assert_step_ok()
    assert second.boot_number == 2
    assert second.reports() == {"release": debian_disk.base.releases["6.12"], "state": "running",
                                "note": "written by boot 1", "previous_step": "kept"}
    # Read back on the host once QEMU has exited.
    assert debian_disk.boot_count() == 2
    assert debian_disk.read_text("/var/lib/testbed/note") == "written by boot 1\n"
    assert {e.name for e in debian_disk.listdir("/var/lib/testbed")} >= {"step-1.sh", "step-2.sh", "boot-count"}
    debian_disk.fsck()  # both boots ended with a clean poweroff

    for run in (first, second):
        print(f"\n[debian] boot {run.boot_number} ({run.reports()['release']}): step runner up after {run.time_of(BOOT_MARKER):.1f}s, "
              f"QEMU exited after {run.duration:.1f}s")
