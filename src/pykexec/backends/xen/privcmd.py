"""The transport to Xen: hypercalls through Linux's privcmd driver, and memory Xen may read.

The ``IOCTL_PRIVCMD_HYPERCALL`` ioctl on ``/dev/xen/privcmd`` takes a hypercall number and
five arguments and returns the hypercall's result. Xen reads and writes the argument
structures (and, for a load, every segment's data) *directly at dom0 virtual addresses*,
and cannot fault pages in: everything it touches lives in a :class:`HypercallBuffer`
(pages of ``/dev/xen/hypercall``, or locked anonymous memory).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os

from pykexec.backends.xen.detect import XenEnvironmentError
from pykexec.errors import KexecError
from pykexec.layouts import xen as abi
from pykexec.layouts.x86_paging import PAGE_SIZE
from pykexec.memory import align_up

TYPE_CHECKING = False  # typing costs an import; this name is all type checkers need
if TYPE_CHECKING:
    from collections.abc import Callable

    IoctlFunc = Callable[[int, int, bytearray], int]

# Module constants so tests can point them elsewhere.
PRIVCMD_DEVICES = ("/dev/xen/privcmd", "/proc/xen/privcmd")
HYPERCALL_DEVICE = "/dev/xen/hypercall"


# --------------------------------------------------------------------------- libc
class _Libc:
    """mmap/munmap/mlock/madvise through ctypes (Python's mmap hides the address)."""

    PROT_READ, PROT_WRITE = 1, 2
    MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS = 0x01, 0x02, 0x20
    MADV_DONTFORK = 10
    MAP_FAILED = ctypes.c_void_p(-1).value

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.mmap = libc.mmap
        self.mmap.restype = ctypes.c_void_p
        self.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        self.munmap = libc.munmap
        self.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.mlock = libc.mlock
        self.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.madvise = libc.madvise
        self.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


_libc_instance: _Libc | None = None


def _libc() -> _Libc:
    global _libc_instance
    if _libc_instance is None:
        _libc_instance = _Libc()
    return _libc_instance


# --------------------------------------------------------------------------- buffers
class HypercallBuffer:
    """Memory Xen may access during a hypercall, with a bump allocator.

    Backed by ``/dev/xen/hypercall`` (Linux 4.18+: kernel pages that are never swapped or
    migrated) when ``device`` exists and the mapping fits. That device may cap each open
    file at a few pages (module parameter ``xen_privcmd.limit``, 64 by default in some
    kernels), so each buffer opens its own file and a buffer too big for the cap falls back
    to anonymous memory locked with mlock(2) and kept out of children (MADV_DONTFORK), as
    libxencall does without the device. The memory stays mapped until :meth:`close`.
    """

    def __init__(self, size: int, *, device: str | None = HYPERCALL_DEVICE) -> None:
        self.address = 0  # set last: close() and __del__ look at it
        self.size = align_up(max(size, 1), PAGE_SIZE)
        self.kind = ""
        self._next = 0
        libc = _libc()
        addr = None
        if device is not None and os.path.exists(device):
            addr = self._map_device(libc, device)
        if addr is None:
            addr = self._map_locked(libc)
        self.address = addr

    def _map_device(self, libc: _Libc, device: str) -> int | None:
        try:
            fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            # The mapping keeps the file open; the pages live until munmap.
            addr = libc.mmap(None, self.size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, fd, 0)
        finally:
            os.close(fd)
        if addr in (None, libc.MAP_FAILED):
            return None  # over the per-file limit (EINVAL) or out of memory: use locked memory
        self.kind = "device"
        return int(addr)

    def _map_locked(self, libc: _Libc) -> int:
        addr = libc.mmap(None, self.size, libc.PROT_READ | libc.PROT_WRITE,
                         libc.MAP_PRIVATE | libc.MAP_ANONYMOUS, -1, 0)
        if addr in (None, libc.MAP_FAILED):
            err = ctypes.get_errno()
            raise KexecError(f"cannot map {self.size} bytes for hypercall buffers: {os.strerror(err)}")
        if libc.mlock(addr, self.size) != 0:
            err = ctypes.get_errno()
            libc.munmap(addr, self.size)
            raise XenEnvironmentError(
                f"cannot lock {self.size >> 10} KiB for hypercall buffers ({os.strerror(err)}): "
                "Xen reads them without faulting pages in; run as root or raise RLIMIT_MEMLOCK")
        libc.madvise(addr, self.size, libc.MADV_DONTFORK)
        self.kind = "locked"
        return int(addr)

    def alloc(self, nbytes: int, align: int = 16) -> int:
        """Reserve ``nbytes`` (zeroed) and return their address."""
        self._check_open()
        start = align_up(self._next, align)
        if start + nbytes > self.size:
            raise KexecError(f"hypercall buffer full: {nbytes} bytes wanted, "
                             f"{self.size - start} of {self.size} left")
        self._next = start + max(nbytes, 1)
        return self.address + start

    def write(self, addr: int, data: bytes) -> None:
        self._check(addr, len(data))
        ctypes.memmove(addr, data, len(data))

    def read(self, addr: int, nbytes: int) -> bytes:
        self._check(addr, nbytes)
        return ctypes.string_at(addr, nbytes)

    def put(self, data: bytes, align: int = 16) -> int:
        """alloc + write: copy ``data`` in and return its address."""
        addr = self.alloc(len(data), align)
        self.write(addr, data)
        return addr

    def reset(self) -> None:
        """Forget every allocation (the memory is reused, not zeroed)."""
        self._next = 0

    def _check_open(self) -> None:
        if not self.address:
            raise KexecError("hypercall buffer used after close")

    def _check(self, addr: int, nbytes: int) -> None:
        self._check_open()
        if addr < self.address or addr + nbytes > self.address + self.size:
            raise KexecError(f"address {addr:#x}+{nbytes:#x} outside the hypercall buffer")

    def close(self) -> None:
        if self.address:
            _libc().munmap(self.address, self.size)
            self.address = 0

    def __enter__(self) -> HypercallBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: libc may be gone; the process is ending anyway
            pass


# --------------------------------------------------------------------------- privcmd
class Privcmd:
    """An open privcmd device: issues hypercalls, hands out hypercall buffers.

    ``ioctl`` replaces ``fcntl.ioctl`` (tests decode the hypercall there); it receives
    ``(fd, IOCTL_PRIVCMD_HYPERCALL, bytearray(privcmd_hypercall))`` and returns the
    hypercall's result or raises OSError. ``hypercall_device`` None: locked memory only.
    """

    def __init__(self, fd: int = -1, *, ioctl: IoctlFunc | None = None,
                 hypercall_device: str | None = HYPERCALL_DEVICE) -> None:
        self.fd = fd
        self._ioctl: IoctlFunc = ioctl if ioctl is not None else fcntl.ioctl
        self.hypercall_device = hypercall_device

    @classmethod
    def open(cls) -> Privcmd:
        """Open /dev/xen/privcmd, else /proc/xen/privcmd (libxencall's order)."""
        last: OSError | None = None
        for path in PRIVCMD_DEVICES:
            try:
                return cls(os.open(path, os.O_RDWR | os.O_CLOEXEC))
            except FileNotFoundError as e:
                last = e
            except OSError as e:
                if e.errno in (errno.EACCES, errno.EPERM):
                    raise XenEnvironmentError(f"cannot open {path}: {e.strerror} (needs root)") from None
                last = e
        why = f" ({last.strerror})" if last is not None and last.errno != errno.ENOENT else ""
        raise XenEnvironmentError(f"no Xen privcmd device{why}: "
                                  "modprobe xen-privcmd (and mount -t xenfs xenfs /proc/xen)")

    def hypercall(self, op: int, *args: int) -> int:
        """Issue hypercall ``op``; return its result: >= 0, or -errno as Xen does."""
        if len(args) > 5:
            raise ValueError("a hypercall takes at most 5 arguments")
        call = abi.PrivcmdHypercall(op, (ctypes.c_uint64 * 5)(*args))
        buf = bytearray(bytes(call))
        try:
            return int(self._ioctl(self.fd, abi.IOCTL_PRIVCMD_HYPERCALL, buf))
        except OSError as e:
            return -(e.errno or errno.EIO)

    def buffer(self, size: int) -> HypercallBuffer:
        return HypercallBuffer(size, device=self.hypercall_device)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Privcmd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
