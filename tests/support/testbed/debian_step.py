"""What runs a test step inside the Debian test-bed system, and the markers it prints.

``testbed-step.service`` starts once the system has reached multi-user.target.  It counts the
boot (``/var/lib/testbed/boot-count`` on the disk, so the count goes on across the QEMU runs
of one disk), prints :data:`BOOT_MARKER`, runs the step the test wrote to
``/var/lib/testbed/step.sh`` before this boot (kept as ``step-<boot>.sh``), prints
:data:`STEP_END_MARKER` with its exit status, and powers the machine off cleanly, which ends
QEMU.  A step that panics or reboots ends QEMU itself (``-no-reboot``).

Steps run with ``sh``, their output on the console (the kernel's last ``console=``: ttyS0, or
hvc0 in a Xen dom0, which Xen prints on its serial port), and these shell functions
(``step-lib.sh``):

* ``mark TEXT`` logs one line of text through the kernel's log (see below);
* ``report KEY VALUE...`` marks ``TESTBED-REPORT KEY=VALUE...``, one line (``DebianBoot.reports``);
* ``drain_console`` returns once everything the step printed has left the serial port;
* ``crash`` marks :data:`CRASH_MARKER`, syncs the disks, drains the console and panics the
  kernel through sysrq ``c``;
* ``$TESTBED_BOOT`` is this boot's number (1 for the disk's first boot).

Markers go through ``/dev/kmsg``, not the tty: a kernel message that lands while a process
writes to the console splits the process's line (a report's value once read
``kept[   21.368597] input: Power Button ...``), whereas printk writes each record whole and
flushes what it holds before a panic.  They are logged as critical (``<2>``) so that they
show at any console loglevel a test may choose (``quiet`` is 4).
"""

from __future__ import annotations

#: First line of every step, once the system is up: ``boot=<n> release=<uname -r> uptime=<s>``.
BOOT_MARKER = "TESTBED-BOOT"
#: After the step: ``boot=<n> rc=<exit status>`` (``rc=none`` when the test wrote no step).
STEP_END_MARKER = "TESTBED-STEP-END"
#: ``report KEY VALUE`` prints ``TESTBED-REPORT KEY=VALUE``.
REPORT_MARKER = "TESTBED-REPORT"
#: Printed by ``crash`` right before sysrq ``c``: ``boot=<n>``.
CRASH_MARKER = "TESTBED-CRASH"

#: Where the test writes the step for the next boot (on the guest's disk).
STEP_PATH = "/var/lib/testbed/step.sh"
#: How many times the system has booted to the step runner (on the guest's disk).
BOOT_COUNT_PATH = "/var/lib/testbed/boot-count"

UNIT_NAME = "testbed-step.service"
_RUNNER_PATH = "/usr/local/sbin/testbed-step"
_LIB_PATH = "/usr/local/lib/testbed/step-lib.sh"

# Type=exec rather than oneshot: a oneshot unit's start job would keep the system
# "starting" until the step ends, while steps ask systemctl is-system-running.
_UNIT = f"""[Unit]
Description=pykexec test bed: run this boot's test step
After=multi-user.target

[Service]
Type=exec
ExecStart={_RUNNER_PATH}

[Install]
WantedBy=multi-user.target
"""

# stty re-applies the console's current settings with tcsetattr(TCSADRAIN), which returns
# only once the tty's buffer is empty and the UART has sent its last byte: a panic right
# after an echo would otherwise lose the bytes still buffered (printk's own messages poll
# the UART and are not lost).
_LIB = f"""# Shell functions for test-bed steps (see support/testbed/debian_step.py).
# The console: the kernel's last console= (hvc0 in Xen's dom0, whose output Xen prints on its
# serial port), else ttyS0.
TESTBED_CONSOLE=/dev/ttyS0
for word in $(cat /proc/cmdline); do
    case $word in
        console=*) TESTBED_CONSOLE=/dev/${{word#console=}}; TESTBED_CONSOLE=${{TESTBED_CONSOLE%%,*}} ;;
    esac
done

drain_console() {{
    stty -F "$TESTBED_CONSOLE" "$(stty -F "$TESTBED_CONSOLE" -g)"
}}

mark() {{
    printf '<2>%s\\n' "$*" > /dev/kmsg
}}

report() {{
    key=$1
    shift
    mark "{REPORT_MARKER} $key=$*"
}}

crash() {{
    mark "{CRASH_MARKER} boot=$TESTBED_BOOT"
    sync
    drain_console
    echo c > /proc/sysrq-trigger
}}
"""

_RUNNER = f"""#!/bin/sh
# The test bed's step runner ({UNIT_NAME}); see support/testbed/debian_step.py.
. {_LIB_PATH}
state=/var/lib/testbed
boot=$(( $(cat {BOOT_COUNT_PATH} 2>/dev/null || echo 0) + 1 ))
echo "$boot" > {BOOT_COUNT_PATH}
sync
exec </dev/null >"$TESTBED_CONSOLE" 2>&1
mark "{BOOT_MARKER} boot=$boot release=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)"
rc=none
if [ -f {STEP_PATH} ]; then
    # Renamed first, so that a later boot never runs this step again.
    mv {STEP_PATH} "$state/step-$boot.sh"
    TESTBED_BOOT=$boot sh -c '. {_LIB_PATH} && . "$0"' "$state/step-$boot.sh"
    rc=$?
fi
mark "{STEP_END_MARKER} boot=$boot rc=$rc"
drain_console
systemctl poweroff
"""


def step_files() -> list[tuple[str, bytes, int]]:
    """(guest path, contents, mode) of the runner, its shell library and its unit."""
    return [(_RUNNER_PATH, _RUNNER.encode(), 0o755), (_LIB_PATH, _LIB.encode(), 0o644),
            (f"/etc/systemd/system/{UNIT_NAME}", _UNIT.encode(), 0o644)]


def step_unit_links() -> list[tuple[str, str]]:
    """(guest path, target) of the symlink that enables the unit, as ``systemctl enable`` makes it."""
    return [(f"/etc/systemd/system/multi-user.target.wants/{UNIT_NAME}", f"/etc/systemd/system/{UNIT_NAME}")]
