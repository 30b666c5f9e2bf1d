"""Xen's ``kexec_op`` from a 64-bit PV dom0, without libxenctrl.

Dom0 user space reaches the hypervisor through Linux's privcmd driver: the
``IOCTL_PRIVCMD_HYPERCALL`` ioctl on ``/dev/xen/privcmd`` takes a hypercall number and
five arguments and returns the hypercall's result. Xen reads and writes the argument
structures (and, for a load, every segment's data) *directly at dom0 virtual addresses*,
and cannot fault pages in: everything it touches lives in a :class:`HypercallBuffer`
(pages of ``/dev/xen/hypercall``, or locked anonymous memory).

Entry points::

    xen_pv_dom0() -> bool                 are we a PV control domain?
    check_pv_dom0()                       the same, raising XenEnvironmentError with what to do
    with XenKexec.open() as xen:
        xen.crash_area() / xen.xen_image_range() / xen.vmcoreinfo_range() -> XenRange(start, size)
        xen.xen_phys_start() -> int
        xen.cpu_notes() -> [CpuNote(cpu, start, size)]
        xen.machine_memory_map() -> [E820Range(start, size, type)]
        xen.xen_version() -> (major, minor, extra); xen.capabilities() -> str
        xen.load(type, arch, segments, entry); xen.unload(type); xen.execute(type)
        xen.status(type) -> bool (raw; see below); xen.is_loaded(type) -> bool (trustworthy)
    check_load(type, arch, segments, entry, crash_area)   Xen's rules, checked first
    with_low_memory_mapped(segments)      + null segments identity-mapping 0-1 MiB

Loading: the segments are :class:`XenSegment` tuples ``(buf, buf_size, dest_maddr,
dest_size, role)``; ``buf`` None means "map this range, copy nothing". ``arch`` is the
ELF machine of the code at ``entry`` -- what Xen jumps to -- not of the final OS:
``EM_X86_64`` for our purgatory (entered in 64-bit mode with the segments
identity-mapped; it loads its own GDT and can drop to 32-bit for a Multiboot kernel),
``EM_386`` only for an image entered directly in 32-bit protected mode with paging off.

``KEXEC_CMD_kexec_status`` is broken in Xen 4.9 to at least 4.22: it returns the parity
of load/unload operations on that slot, not whether an image is loaded (load -> 1,
load+load -> 0, load+unload -> 0, unload of nothing -> 1). :class:`XenKexec` therefore
records each successful load and unload in ``/run/pykexec/xen-<type>.loaded`` (tagged
with the boot id) and :meth:`XenKexec.is_loaded` answers from that record, falling back to
``status`` only when no record exists (e.g. the image was loaded by another tool).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from collections import namedtuple

from pykexec.errors import KexecError, PlanError, SyscallError
from pykexec.layouts import xen as abi
from pykexec.layouts.elf import EM_386, EM_X86_64
from pykexec.memory import MiB, PAGE_SIZE, Range, align_up

TYPE_CHECKING = False  # typing costs an import; this name is all type checkers need
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from pykexec.plan import LoadPlan

    IoctlFunc = Callable[[int, int, bytearray], int]

# Where Linux shows Xen to user space; module constants so tests can point them elsewhere.
SYS_HYPERVISOR = "/sys/hypervisor"
PROC_XEN = "/proc/xen"
PRIVCMD_DEVICES = ("/dev/xen/privcmd", "/proc/xen/privcmd")
HYPERCALL_DEVICE = "/dev/xen/hypercall"
STATE_DIR = "/run/pykexec"
BOOT_ID = "/proc/sys/kernel/random/boot_id"

#: The code at ``entry`` is our purgatory: Xen must enter it in 64-bit mode.
ARCH_PURGATORY = EM_X86_64

LOW_MEMORY_END = MiB  # purgatory touches 0-1 MiB (backup of low memory, VGA): map it all
LOW_MEMORY_ROLE = "low-memory map"

# Safety stop for the MA_CPU enumeration (Xen stops us with ERANGE at nr_cpu_ids).
_MAX_CPUS = 1 << 16
_MAX_E820_ENTRIES = 4096


class XenEnvironmentError(KexecError):
    """This system cannot talk to Xen's kexec_op (not Xen, not dom0, PVH, privcmd missing)."""


class HypercallError(SyscallError):
    """Xen refused a hypercall; ``errno`` and ``syscall`` (the command name) are kept."""


class XenRange(namedtuple("XenRange", "start size")):
    """A machine-address range as ``get_range`` reports it."""

    __slots__ = ()
    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size

    def range(self) -> Range:
        return Range.sized(self.start, self.size)

    def __str__(self) -> str:
        return f"{self.start:#x}-{self.end - 1:#x}" if self.size else "(none)"


class CpuNote(namedtuple("CpuNote", "cpu start size")):
    """The crash-note buffer of physical CPU ``cpu`` (machine address)."""

    __slots__ = ()
    cpu: int
    start: int
    size: int


class E820Range(namedtuple("E820Range", "start size type")):
    """One entry of the machine memory map (``type`` is the e820 type, 1 = RAM)."""

    __slots__ = ()
    start: int
    size: int
    type: int


class XenSegment(namedtuple("XenSegment", "buf buf_size dest_maddr dest_size role", defaults=("",))):
    """One segment of a Xen load. ``buf`` None: Xen maps the range 1:1 and copies nothing."""

    __slots__ = ()
    buf: bytes | None
    buf_size: int
    dest_maddr: int
    dest_size: int
    role: str

    @property
    def range(self) -> Range:
        return Range.sized(self.dest_maddr, self.dest_size)

    def describe(self, index: int) -> str:
        what = f"{self.role} segment" if self.role else f"segment {index}"
        return f"{what} at {self.dest_maddr:#x}+{self.dest_size:#x}"


def segments_from_plan(plan: LoadPlan) -> list[XenSegment]:
    """The plan's segments as Xen segments, in the plan's order (for CRASH_EFI segment 0
    must be the bzImage), roles kept."""
    return [XenSegment(bytes(s.data), len(s.data), s.mem, s.memsz, s.role) for s in plan.segments]


def type_name(type_: int) -> str:
    return abi.KEXEC_TYPE_NAMES.get(type_, f"type {type_}")


# --------------------------------------------------------------------------- detection
def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def hypervisor_type() -> str | None:
    """``/sys/hypervisor/type`` ("xen" under Xen), None when absent."""
    return _read(f"{SYS_HYPERVISOR}/type")


def xen_guest_type() -> str | None:
    """"PV", "PVH" or "HVM" from ``/sys/hypervisor/guest_type`` (Linux 4.15+), else None."""
    return _read(f"{SYS_HYPERVISOR}/guest_type")


def xen_control_domain() -> bool:
    """``/proc/xen/capabilities`` says ``control_d`` (needs xenfs mounted on /proc/xen)."""
    caps = _read(f"{PROC_XEN}/capabilities")
    return caps is not None and "control_d" in caps.split()


def xen_pv_dom0() -> bool:
    """True in a PV control domain: the only kind of domain Xen lets use kexec_op.

    A PVH dom0 reads the same ``control_d``; Linux tells the two apart in
    ``/sys/hypervisor/guest_type``. Older kernels lack that file: then we assume PV and
    a PVH dom0 shows itself by ENOSYS from kexec_op (see :func:`explain`).
    """
    return (hypervisor_type() == "xen" and xen_control_domain()
            and xen_guest_type() in (None, "PV"))


def check_pv_dom0() -> None:
    """Raise :class:`XenEnvironmentError` saying what is missing for kexec_op, if anything."""
    if hypervisor_type() != "xen":
        raise XenEnvironmentError("not running under Xen (/sys/hypervisor/type does not say xen)")
    if _read(f"{PROC_XEN}/capabilities") is None:
        raise XenEnvironmentError(f"{PROC_XEN}/capabilities is missing: "
                                  "modprobe xen-privcmd (and mount -t xenfs xenfs /proc/xen)")
    if not xen_control_domain():
        raise XenEnvironmentError("this domain is not dom0 (/proc/xen/capabilities lacks control_d): "
                                  "only the control domain may use kexec_op")
    guest = xen_guest_type()
    if guest == "PVH":
        raise XenEnvironmentError(_PVH_MESSAGE)
    if guest not in (None, "PV"):
        raise XenEnvironmentError(f"dom0 is a {guest} guest: Xen offers kexec_op only to a PV dom0")


_PVH_MESSAGE = ("dom0 runs in PVH mode and Xen offers kexec_op only to a PV dom0: "
                "boot dom0 as PV (remove dom0=pvh from Xen's command line)")


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
        self._ioctl: IoctlFunc = ioctl if ioctl is not None else fcntl.ioctl  # type: ignore[assignment]
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


# --------------------------------------------------------------------------- errors
def explain(err: int, command: str, *, type_: int | None = None, range_: int | None = None) -> str:
    """One line saying why Xen refused ``command`` (a KEXEC_CMD name, "memory_op" ...)."""
    what = f"Xen refused {command}" + (f" ({type_name(type_)})" if type_ is not None else "")
    if err == errno.ENOSYS:
        if xen_guest_type() == "PV":
            return f"{what}: this Xen has no kexec support (built without CONFIG_KEXEC)"
        return (f"{what}: ENOSYS: dom0 is probably PVH (Xen offers kexec_op only to a PV dom0; "
                "remove dom0=pvh from Xen's command line), or Xen lacks CONFIG_KEXEC")
    if err in (errno.EPERM, errno.EACCES):
        return (f"{what}: not permitted: only dom0 may use kexec_op, and an XSM/FLASK policy "
                "may forbid it (or the privcmd file is restricted)")
    if err == errno.EOPNOTSUPP:
        return f"{what}: this Xen does not know the command (EOPNOTSUPP)"
    if err == errno.EBUSY:
        return f"{what}: a kexec is already in progress"
    if err == errno.ENOENT:
        return f"{what}: nothing is loaded{'' if type_ is None else ' for this type'}"
    if err == errno.EFAULT:
        return f"{what}: Xen could not read a buffer (EFAULT): a pykexec bug, hypercall memory not resident"
    if err == errno.ERANGE:
        return f"{what}: no such CPU (ERANGE)"
    if err == errno.EADDRNOTAVAIL:
        return (f"{what}: a segment or the entry point is outside the crash area, or a segment is not "
                "page aligned (EADDRNOTAVAIL)")
    if err == errno.ENOMEM:
        if type_ in (abi.KEXEC_TYPE_CRASH, abi.KEXEC_TYPE_CRASH_EFI):
            return (f"{what}: out of memory (ENOMEM): the crash area needs free pages besides the "
                    "segments for Xen's control page and page tables")
        return (f"{what}: Xen is out of free memory (ENOMEM) to stage the image: give dom0 less "
                "(dom0_mem=) so Xen keeps enough free")
    if err == errno.EINVAL:
        if command == "kexec_get_range" and range_ == abi.KEXEC_RANGE_MA_CPU:
            return (f"{what}: Xen has no crash notes: it was booted without crashkernel= "
                    "on its own command line")
        if command == "kexec_get_range":
            name = abi.KEXEC_RANGE_NAMES.get(range_ or 0, f"range {range_}")
            return f"{what}: Xen does not report {name} on x86 (EINVAL)"
        if command == "kexec_load":
            return (f"{what}: invalid load (EINVAL) although the segments pass our checks "
                    "(at most 15, page aligned, no overlap, buf_size <= dest_size): the type or "
                    "arch is not one this Xen accepts (CRASH_EFI is not in any released Xen)")
        return f"{what}: invalid argument (EINVAL)"
    return f"{what}: {os.strerror(err)}"


# --------------------------------------------------------------------------- Xen's rules
def low_memory_fill(segments: Iterable[XenSegment]) -> list[XenSegment]:
    """Null-buffer segments covering every gap in 0-1 MiB that no segment covers.

    Xen maps only the segments' pages for the image; our purgatory reads and writes low
    memory (the kdump backup, the VGA text buffer), so kexec-tools (since 2019) adds
    such segments. They carry no data, so purgatory's digests never include them: add
    them after the digests are computed. Xen exempts null segments from the crash-area
    bounds but counts them for the overlap rule and the 15-segment limit.
    """
    covered = sorted(s.range for s in segments if s.dest_maddr < LOW_MEMORY_END and s.dest_size)
    fill: list[XenSegment] = []
    pos = 0
    for r in covered:
        if r.start > pos:
            fill.append(XenSegment(None, 0, pos, min(r.start, LOW_MEMORY_END) - pos, LOW_MEMORY_ROLE))
        pos = max(pos, r.end)
        if pos >= LOW_MEMORY_END:
            break
    if pos < LOW_MEMORY_END:
        fill.append(XenSegment(None, 0, pos, LOW_MEMORY_END - pos, LOW_MEMORY_ROLE))
    return fill


def with_low_memory_mapped(segments: Sequence[XenSegment]) -> list[XenSegment]:
    """``segments``, in their order, then :func:`low_memory_fill`'s."""
    return [*segments, *low_memory_fill(segments)]


def crash_pages_needed(segments: Sequence[XenSegment]) -> int:
    """Pages Xen takes from the crash area's free space for a crash load (an estimate).

    The control code page and the first indirection page, then the identity map of every
    segment: one L4, an L3 per 512 GiB, an L2 per GiB and an L1 per 2 MiB touched, plus
    the tables mapping kexec_reloc at its Xen address (``kimage_alloc_crash_control_page``).
    """
    l3: set[int] = set()
    l2: set[int] = set()
    l1: set[int] = set()
    for s in segments:
        for page in range(s.dest_maddr >> 12, (s.dest_maddr + s.dest_size + PAGE_SIZE - 1) >> 12):
            l1.add(page >> 9)
            l2.add(page >> 18)
            l3.add(page >> 27)
    return 2 + 1 + len(l3) + len(l2) + len(l1) + 3


def check_load(type_: int, arch: int, segments: Sequence[XenSegment], entry: int,
               crash_area: XenRange | None = None) -> None:
    """Refuse, naming the segment and the rule, what Xen's ``kexec_load`` would refuse.

    ``segments`` are the ones to be handed over, null-buffer ones included. For crash
    types ``crash_area`` is ``get_range(MA_CRASH)``.
    """
    segs = sorted(segments, key=lambda s: s.dest_maddr)
    crash = type_ in (abi.KEXEC_TYPE_CRASH, abi.KEXEC_TYPE_CRASH_EFI)
    if type_ == abi.KEXEC_TYPE_LIVE_UPDATE or type_ not in abi.KEXEC_TYPE_NAMES:
        raise PlanError(f"kexec type {type_} is not one Xen loads (default 0, crash 1, crash-efi 3)")
    if arch not in abi.KEXEC_ARCHES:
        raise PlanError(f"arch {arch} is not EM_386 (3) or EM_X86_64 (62): Xen enters nothing else")
    if not segs:
        raise PlanError("the load has no segments")
    if len(segs) > abi.XEN_MAX_SEGMENTS:
        raise PlanError(f"{len(segs)} segments: Xen takes at most {abi.XEN_MAX_SEGMENTS} "
                        f"(nr_segments < KEXEC_SEGMENT_MAX = {abi.KEXEC_SEGMENT_MAX}), "
                        "null segments mapping low memory included")
    for i, s in enumerate(segs):
        name = s.describe(i)
        if s.dest_maddr % PAGE_SIZE or s.dest_size % PAGE_SIZE:
            raise PlanError(f"{name}: Xen needs a page-aligned address and size")
        if s.buf_size > s.dest_size:
            raise PlanError(f"{name}: buf_size {s.buf_size:#x} is larger than dest_size {s.dest_size:#x}")
        if s.buf is None and s.dest_size == 0:
            raise PlanError(f"{name}: a segment without a buffer needs a size (Xen fails it with ENOMEM)")
        if s.buf is not None and len(s.buf) != s.buf_size:
            raise PlanError(f"{name}: its buffer holds {len(s.buf):#x} bytes but buf_size says {s.buf_size:#x}")
    for i, (a, b) in enumerate(zip(segs, segs[1:])):
        if a.range.overlaps(b.range):
            raise PlanError(f"{a.describe(i)} overlaps {b.describe(i + 1)}: Xen refuses overlapping "
                            "segments, null ones included")
    data_segs = [s for s in segs if s.buf is not None]
    if not any(s.range.contains(entry) for s in data_segs):
        raise PlanError(f"entry point {entry:#x} is not inside any segment with data")
    if not crash:
        return
    if crash_area is None or not crash_area.size:
        raise PlanError("no crash area: boot Xen with crashkernel=SIZE (e.g. crashkernel=256M) "
                        "on its own command line, not dom0's")
    area = crash_area.range()
    for i, s in enumerate(segs):
        if s.buf is not None and not area.contains(s.range):
            raise PlanError(f"{s.describe(i)} is outside Xen's crash area {crash_area}")
    if not area.contains(entry):
        raise PlanError(f"entry point {entry:#x} is outside Xen's crash area {crash_area}")
    used = sum(s.dest_size for s in data_segs)
    free = (area.size - used) // PAGE_SIZE
    need = crash_pages_needed(segs)
    if free < need:
        raise PlanError(f"the crash area {crash_area} has {free} free pages besides the segments; "
                        f"Xen needs about {need} for its control page and page tables")


# --------------------------------------------------------------------------- state record
def _boot_id() -> str:
    return _read(BOOT_ID) or "unknown"


def state_path(type_: int, state_dir: str = STATE_DIR) -> str:
    """The file recording whether an image of ``type_`` is loaded: ``xen-<type>.loaded``."""
    return os.path.join(state_dir, f"xen-{type_name(type_).replace(' ', '-')}.loaded")


def record_state(type_: int, loaded: bool, state_dir: str = STATE_DIR) -> None:
    """Remember a successful load (True) or unload (False) of ``type_`` for this boot.

    The file holds the boot id, so a record from before a reboot (or a kexec into a new
    system) is never believed. Failing to write it is not fatal: the load happened.
    """
    path = state_path(type_, state_dir)
    try:
        os.makedirs(state_dir, mode=0o755, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{_boot_id()} {1 if loaded else 0}\n")
        os.replace(tmp, path)
    except OSError:
        pass


def recorded_state(type_: int, state_dir: str = STATE_DIR) -> bool | None:
    """What :func:`record_state` last said this boot: True/False, None if nothing known."""
    text = _read(state_path(type_, state_dir))
    if not text:
        return None
    parts = text.split()
    if len(parts) != 2 or parts[0] != _boot_id() or parts[1] not in ("0", "1"):
        return None
    return parts[1] == "1"


# --------------------------------------------------------------------------- the hypervisor
class XenKexec:
    """kexec_op and friends on an open privcmd. Use as a context manager.

    ``state_dir`` is where loads and unloads are recorded (None: not recorded).
    """

    def __init__(self, privcmd: Privcmd, *, state_dir: str | None = STATE_DIR) -> None:
        self.privcmd = privcmd
        self.state_dir = state_dir
        self._scratch: HypercallBuffer | None = None

    @classmethod
    def open(cls, *, state_dir: str | None = STATE_DIR) -> XenKexec:
        """Check we are a PV dom0, then open privcmd."""
        check_pv_dom0()
        return cls(Privcmd.open(), state_dir=state_dir)

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.close()
            self._scratch = None
        self.privcmd.close()

    def __enter__(self) -> XenKexec:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing
    def _small(self) -> HypercallBuffer:
        """A one-page buffer for argument structs, reused call after call."""
        if self._scratch is None:
            self._scratch = self.privcmd.buffer(PAGE_SIZE)
        self._scratch.reset()
        return self._scratch

    def _kexec_op(self, cmd: int, arg: ctypes.Structure) -> tuple[int, bytes]:
        """kexec_op(cmd, &arg); return (rc, the struct's bytes as Xen left them)."""
        buf = self._small()
        data = bytes(arg)
        addr = buf.put(data)
        rc = self.privcmd.hypercall(abi.HYPERVISOR_kexec_op, cmd, addr)
        return rc, buf.read(addr, len(data))

    def _fail(self, rc: int, cmd: int, **kw: int | None) -> HypercallError:
        name = abi.KEXEC_CMD_NAMES.get(cmd, f"kexec_op {cmd}")
        return HypercallError(explain(-rc, name, **kw), -rc, name)  # type: ignore[arg-type]

    # -- ranges
    def get_range(self, range_: int, nr: int = 0) -> XenRange:
        """KEXEC_CMD_kexec_get_range: (start, size) of range ``range_`` (MA_CPU: pCPU ``nr``)."""
        rc, out = self._kexec_op(abi.KEXEC_CMD_kexec_get_range, abi.XenKexecRange(range_, nr, 0, 0))
        if rc < 0:
            raise self._fail(rc, abi.KEXEC_CMD_kexec_get_range, range_=range_)
        r = abi.XenKexecRange.from_buffer_copy(out)
        return XenRange(r.start, r.size)

    def crash_area(self) -> XenRange:
        """The crashkernel= area; size 0 when Xen reserved none."""
        return self.get_range(abi.KEXEC_RANGE_MA_CRASH)

    def xen_image_range(self) -> XenRange:
        """Xen's own image (text to the end of bss) in machine memory: it starts at
        ``xen_phys_start + XEN_IMG_OFFSET`` (2 MiB); its size is not page rounded."""
        return self.get_range(abi.KEXEC_RANGE_MA_XEN)

    def xen_phys_start(self) -> int:
        """Where Xen's virtual base (XEN_VIRT_START) sits in machine memory: what the crash
        note's ``xen_phys_start`` will say, and what makedumpfile/crash take as
        ``--xen_phys_start``. Xen's text is at ``va - XEN_VIRT_START + xen_phys_start``."""
        return self.xen_image_range().start - abi.XEN_IMG_OFFSET

    def vmcoreinfo_range(self) -> XenRange:
        """The VMCOREINFO_XEN note (4096 bytes; zeros until the first load)."""
        return self.get_range(abi.KEXEC_RANGE_MA_VMCOREINFO)

    def cpu_notes(self) -> list[CpuNote]:
        """The crash-note buffer of every physical CPU.

        Asks for pCPU 0, 1, ... until Xen answers ERANGE (past nr_cpu_ids). A CPU whose
        notes Xen could not allocate answers rc 0 with size 0: skipped, and the walk goes
        on (kexec-tools stops at the first failure and loses the CPUs after a hole).
        """
        notes: list[CpuNote] = []
        for cpu in range(_MAX_CPUS):
            rc, out = self._kexec_op(abi.KEXEC_CMD_kexec_get_range,
                                     abi.XenKexecRange(abi.KEXEC_RANGE_MA_CPU, cpu, 0, 0))
            if rc == -errno.ERANGE:
                break
            if rc < 0:
                raise self._fail(rc, abi.KEXEC_CMD_kexec_get_range, range_=abi.KEXEC_RANGE_MA_CPU)
            r = abi.XenKexecRange.from_buffer_copy(out)
            if r.size:
                notes.append(CpuNote(cpu, r.start, r.size))
        return notes

    # -- other hypercalls
    def machine_memory_map(self) -> list[E820Range]:
        """XENMEM_machine_memory_map: the host's e820 (the crash area still shows as RAM)."""
        entry_size = ctypes.sizeof(abi.E820Entry)
        count = 128
        while True:
            with self.privcmd.buffer(ctypes.sizeof(abi.XenMemoryMap) + 16 + count * entry_size) as buf:
                entries = buf.alloc(count * entry_size)
                arg = buf.put(bytes(abi.XenMemoryMap(count, 0, entries)))
                rc = self.privcmd.hypercall(abi.HYPERVISOR_memory_op, abi.XENMEM_machine_memory_map, arg)
                # Xen wants room for one entry more than it has; EINVAL says "too small".
                if rc == -errno.EINVAL and count < _MAX_E820_ENTRIES:
                    count *= 4
                    continue
                if rc < 0:
                    raise HypercallError(explain(-rc, "memory_op(XENMEM_machine_memory_map)"), -rc, "memory_op")
                n = abi.XenMemoryMap.from_buffer_copy(buf.read(arg, ctypes.sizeof(abi.XenMemoryMap))).nr_entries
                raw = buf.read(entries, min(n, count) * entry_size)
            return [E820Range(e.addr, e.size, e.type)
                    for e in (abi.E820Entry.from_buffer_copy(raw, i * entry_size) for i in range(min(n, count)))]

    def _version_string(self, cmd: int, size: int) -> str:
        buf = self._small()
        addr = buf.alloc(size)
        rc = self.privcmd.hypercall(abi.HYPERVISOR_xen_version, cmd, addr)
        if rc < 0:
            raise HypercallError(explain(-rc, f"xen_version({cmd})"), -rc, "xen_version")
        return buf.read(addr, size).split(b"\0", 1)[0].decode("ascii", "replace")

    def xen_version(self) -> tuple[int, int, str]:
        """(major, minor, extraversion), e.g. (4, 17, ".6")."""
        rc = self.privcmd.hypercall(abi.HYPERVISOR_xen_version, abi.XENVER_version, 0)
        if rc < 0:
            raise HypercallError(explain(-rc, "xen_version"), -rc, "xen_version")
        extra = self._version_string(abi.XENVER_extraversion, abi.XEN_EXTRAVERSION_LEN)
        return rc >> 16, rc & 0xFFFF, extra

    def capabilities(self) -> str:
        """XENVER_capabilities, e.g. "xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64"."""
        return self._version_string(abi.XENVER_capabilities, abi.XEN_CAPABILITIES_INFO_LEN)

    # -- load, unload, execute, status
    def load(self, type_: int, arch: int, segments: Sequence[XenSegment], entry: int, *,
             check: bool = True) -> None:
        """KEXEC_CMD_kexec_load (v2): hand ``segments`` to Xen, replacing the image of ``type_``.

        ``segments`` go as given: add :func:`with_low_memory_mapped`'s null segments first
        if the image needs low memory. With ``check`` (default) Xen's rules are applied
        first (:func:`check_load`; a crash type asks Xen for its crash area).
        """
        if check:
            crash_area = self.crash_area() if type_ in (abi.KEXEC_TYPE_CRASH, abi.KEXEC_TYPE_CRASH_EFI) else None
            check_load(type_, arch, segments, entry, crash_area)
        segs = list(segments)  # in the caller's order: segment 0 can matter (CRASH_EFI)
        data_buffers: list[HypercallBuffer] = []
        try:
            array = (abi.XenKexecSegment * len(segs))()
            for i, s in enumerate(segs):
                addr = 0
                if s.buf is not None and s.buf_size:
                    # One buffer per segment: small ones fit the device's per-file cap.
                    hb = self.privcmd.buffer(s.buf_size)
                    data_buffers.append(hb)
                    addr = hb.put(bytes(s.buf[:s.buf_size]), align=PAGE_SIZE)
                array[i] = abi.XenKexecSegment(addr, s.buf_size if s.buf is not None else 0,
                                               s.dest_maddr, s.dest_size)
            ctl = self._small()
            array_addr = ctl.put(bytes(array))
            load = abi.XenKexecLoad(type_, 0, arch, len(segs), array_addr, entry)
            load_addr = ctl.put(bytes(load))
            rc = self.privcmd.hypercall(abi.HYPERVISOR_kexec_op, abi.KEXEC_CMD_kexec_load, load_addr)
        finally:
            for hb in data_buffers:
                hb.close()
        if rc < 0:
            raise self._fail(rc, abi.KEXEC_CMD_kexec_load, type_=type_)
        self._record(type_, True)

    def unload(self, type_: int) -> None:
        """KEXEC_CMD_kexec_unload: drop the image of ``type_`` (nothing loaded is not an error)."""
        rc, _ = self._kexec_op(abi.KEXEC_CMD_kexec_unload, abi.XenKexecUnload(type_))
        if rc < 0:
            raise self._fail(rc, abi.KEXEC_CMD_kexec_unload, type_=type_)
        self._record(type_, False)

    def execute(self, type_: int = abi.KEXEC_TYPE_DEFAULT) -> None:
        """KEXEC_CMD_kexec: jump into the loaded image. Returns only by raising.

        Xen does not shut dom0 down: file systems are synced here first; stopping
        services is the caller's business. With type CRASH, Xen takes its crash path.
        """
        os.sync()
        rc, _ = self._kexec_op(abi.KEXEC_CMD_kexec, abi.XenKexecExec(type_))
        if rc < 0:
            raise self._fail(rc, abi.KEXEC_CMD_kexec, type_=type_)
        raise HypercallError(f"Xen returned from kexec ({type_name(type_)}) without jumping", 0, "kexec")

    def status(self, type_: int) -> bool:
        """KEXEC_CMD_kexec_status as Xen answers it. On Xen 4.9-4.22 the answer flips on
        every load and unload (see the module doc): prefer :meth:`is_loaded`."""
        rc, _ = self._kexec_op(abi.KEXEC_CMD_kexec_status, abi.XenKexecStatus(type_))
        if rc < 0:
            raise self._fail(rc, abi.KEXEC_CMD_kexec_status, type_=type_)
        return rc == 1

    def is_loaded(self, type_: int) -> bool:
        """Whether an image of ``type_`` is loaded: our record of this boot's loads and
        unloads when there is one, else Xen's (unreliable after a reload) status."""
        if self.state_dir is not None:
            known = recorded_state(type_, self.state_dir)
            if known is not None:
                return known
        return self.status(type_)

    def _record(self, type_: int, loaded: bool) -> None:
        if self.state_dir is not None:
            record_state(type_, loaded, self.state_dir)


__all__ = [
    "ARCH_PURGATORY", "EM_386", "EM_X86_64", "CpuNote", "E820Range", "HypercallBuffer", "HypercallError",
    "Privcmd", "XenEnvironmentError", "XenKexec", "XenRange", "XenSegment", "check_load", "check_pv_dom0",
    "crash_pages_needed", "explain", "hypervisor_type", "low_memory_fill", "record_state", "recorded_state",
    "segments_from_plan", "state_path", "type_name", "with_low_memory_mapped", "xen_control_domain",
    "xen_guest_type", "xen_pv_dom0",
]
