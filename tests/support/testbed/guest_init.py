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

#: Where every guest has :data:`DRAIN_CONSOLE` (on its PATH).
DRAIN_CONSOLE_PATH = "usr/bin/drain-console"

# What a guest writes to the console does not reach the serial log when the write returns:
# the tty layer copies it into the UART driver's transmit buffer, which the UART's interrupt
# empties a FIFO (16 bytes) at a time.  A panic (sysrq c), kexec -e or poweroff right after
# it stops the kernel before those interrupts run: the bytes still buffered are never sent,
# while the kernel's own messages (printk polls the UART directly) still appear.  That is
# how "CRASH-STATUS=1", echoed just before "echo c > /proc/sysrq-trigger", went missing from a
# 2-CPU guest on a busy host (its UART interrupt is served by the other vCPU).  So a guest drains the console first: busybox stty applies settings with
# tcsetattr(TCSADRAIN), which returns only once the tty's buffer is empty and the UART has
# sent its last byte (tty_wait_until_sent); re-applying the current settings changes nothing
# else.  Not a sleep: it waits exactly as long as the bytes take.
DRAIN_CONSOLE = b"""#!/bin/sh
# Returns once everything written to the console has left the serial port: run it right
# before a panic, kexec -e or poweroff so the markers printed before are not lost.
exec stty -F /dev/console "$(stty -F /dev/console -g)"
"""

_INIT_EPILOGUE = """
sh {trace}/testbed/script.sh </dev/console >/dev/console 2>&1
echo "{exit_marker} rc=$?"
drain-console
sync
poweroff -f
"""

SECOND_INIT_BODY = f"""echo "{SECOND_KERNEL_MARKER} release=$(uname -r) cmdline=$(cat /proc/cmdline)"
if [ -e /proc/vmcore ]; then
    echo "{SECOND_KERNEL_VMCORE_MARKER} size=$(stat -c %s /proc/vmcore)"
fi
"""


def init_files(body: str, *, trace: bool = False) -> list[tuple[str, bytes, int]]:
    """(guest path, bytes, mode) of /init, of /testbed/script.sh holding ``body``, and of
    the console drain every guest has.

    The body runs in its own shell so ``exit`` in it cannot kill init
    (which would panic); its status is printed as ``PYKEXEC-SCRIPT-EXIT rc=N``,
    and the console is drained before the guest powers off.
    """
    init = (_INIT_PROLOGUE.format(init_marker=INIT_MARKER)
            + _INIT_EPILOGUE.format(trace="-x " if trace else "", exit_marker=SCRIPT_EXIT_MARKER))
    return [("init", init.encode(), 0o755), ("testbed/script.sh", body.encode(), 0o755),
            (DRAIN_CONSOLE_PATH, DRAIN_CONSOLE, 0o755)]
