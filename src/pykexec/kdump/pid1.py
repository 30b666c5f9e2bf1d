"""The system calls the capture makes as PID 1 of the crash kernel, through libc
(ctypes: the initramfs has no mount, insmod or reboot programs): mount, umount2,
finit_module, sync and reboot.  :class:`System` is the real one; the capture's
tests pass a fake with the same methods.
"""

from __future__ import annotations

import ctypes
import errno
import os

#: x86_64's finit_module(2) (glibc has no wrapper for it).
NR_FINIT_MODULE = 313
#: reboot(2) commands, as glibc's reboot(int) takes them (<sys/reboot.h>).
RB_AUTOBOOT = 0x01234567
RB_HALT_SYSTEM = 0xCDEF0123
RB_POWER_OFF = 0x4321FEDC
REBOOT_COMMANDS = {"reboot": RB_AUTOBOOT, "halt": RB_HALT_SYSTEM, "poweroff": RB_POWER_OFF}
MNT_DETACH = 2


class System:
    """The running kernel, as PID 1 uses it.  Every method raises OSError on failure."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.syscall.restype = ctypes.c_long

    def _check(self, ret: int, what: str) -> None:
        if ret < 0:
            err = ctypes.get_errno() or errno.EIO
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def mount(self, source: str, target: str, fstype: str, options: str = "", flags: int = 0) -> None:
        os.makedirs(target, exist_ok=True)
        ret = self._libc.mount(source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags),
                               options.encode() if options else None)
        self._check(ret, f"mount {source} on {target} ({fstype})")

    def umount(self, target: str) -> None:
        if self._libc.umount2(target.encode(), 0) < 0:
            # Busy (a file left open): detach it now; sync already put the data on disk.
            self._check(self._libc.umount2(target.encode(), MNT_DETACH), f"umount {target}")

    def load_module(self, path: str) -> bool:
        """finit_module(2) of a module file; False if it was loaded already."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ret = self._libc.syscall(ctypes.c_long(NR_FINIT_MODULE), ctypes.c_int(fd), b"", ctypes.c_int(0))
            if ret < 0 and ctypes.get_errno() == errno.EEXIST:
                return False
            self._check(ret, f"finit_module {os.path.basename(path)}")
            return True
        finally:
            os.close(fd)

    def sync(self) -> None:
        os.sync()

    def reboot(self, action: str) -> None:
        """``reboot``, ``halt`` or ``poweroff``; returns only if the kernel refused."""
        # c_int wraps the commands above 2**31 as the C int does.
        self._check(self._libc.reboot(ctypes.c_int(REBOOT_COMMANDS[action])), f"reboot ({action})")
