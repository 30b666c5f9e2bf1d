"""The /init every test-bed guest runs, the standard second kernel's script, and the
markers they print on the serial console."""

from __future__ import annotations

#: Marker printed by the standard second-kernel initramfs; the rest of the line
#: is ``release=<uname -r> cmdline=<contents of /proc/cmdline>``.
SECOND_KERNEL_MARKER = "PYKEXEC-SECOND-KERNEL-UP"
#: Printed by the second kernel when /proc/vmcore exists: ``size=<bytes>``.
SECOND_KERNEL_VMCORE_MARKER = "PYKEXEC-SECOND-KERNEL-VMCORE"
#: Printed by every test-bed /init once user space is set up.
INIT_MARKER = "PYKEXEC-INIT-UP"
#: Printed after the guest script returns: ``rc=<exit status>``.
SCRIPT_EXIT_MARKER = "PYKEXEC-SCRIPT-EXIT"


_INIT_PROLOGUE = """#!/bin/busybox sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t tmpfs tmpfs /tmp
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
echo "{init_marker} release=$(uname -r)"
"""

_INIT_EPILOGUE = """
sh {trace}/testbed/script.sh </dev/console >/dev/console 2>&1
echo "{exit_marker} rc=$?"
sync
poweroff -f
"""

SECOND_INIT_BODY = f"""echo "{SECOND_KERNEL_MARKER} release=$(uname -r) cmdline=$(cat /proc/cmdline)"
if [ -e /proc/vmcore ]; then
    echo "{SECOND_KERNEL_VMCORE_MARKER} size=$(stat -c %s /proc/vmcore)"
fi
"""


def init_script(body: str, *, trace: bool = False) -> tuple[bytes, bytes]:
    """Return (/init, /testbed/script.sh) for a script ``body``.

    The body runs in its own shell so ``exit`` in it cannot kill init
    (which would panic); its status is printed as ``PYKEXEC-SCRIPT-EXIT rc=N``.
    """
    init = (_INIT_PROLOGUE.format(init_marker=INIT_MARKER)
            + _INIT_EPILOGUE.format(trace="-x " if trace else "", exit_marker=SCRIPT_EXIT_MARKER))
    return init.encode(), body.encode()
