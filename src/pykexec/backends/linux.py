"""The Linux kexec syscalls through ctypes: kexec_load, kexec_file_load, unload,
status, and reboot(LINUX_REBOOT_CMD_KEXEC), and the two backends built on them
(:class:`KexecLoad`, :class:`KexecFileLoad`). Kernel errors become one-line
:class:`SyscallError` messages that say what to do; the kernel's segment rules are
checked first, so that a refusal names the segment and the rule instead of EINVAL."""

from __future__ import annotations

import ctypes
import errno
import os

from pykexec.backends import read_stripped
from pykexec.errors import KexecError, PlanError, SyscallError
from pykexec.layouts import kexec as abi
from pykexec.layouts.x86_paging import PAGE_SIZE
from pykexec.plan import BACKEND_KEXEC_FILE_LOAD, BACKEND_KEXEC_LOAD, LoadPlan

TYPE_CHECKING = False  # typing costs an import; this name is all type checkers need
if TYPE_CHECKING:
    from pykexec.machine import Machine

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

SYS_KEXEC = "/sys/kernel"


def _call(nr: int, *args: object) -> int:
    ctypes.set_errno(0)
    ret = _syscall(ctypes.c_long(nr), *args)
    if ret < 0:
        return ctypes.get_errno() or errno.EIO
    return 0


def lockdown_state() -> str:
    from pykexec.probe import parse_lockdown

    return parse_lockdown(read_stripped("/sys/kernel/security/lockdown"))


def kexec_load_disabled() -> bool:
    return read_stripped("/proc/sys/kernel/kexec_load_disabled") == "1"


def _eperm_reason(syscall: str) -> str:
    if os.geteuid() != 0:
        return "needs root (CAP_SYS_BOOT)"
    if kexec_load_disabled():
        return "kexec is disabled by sysctl kernel.kexec_load_disabled=1 (cannot be undone until reboot)"
    lock = lockdown_state()
    if syscall == "kexec_load" and lock != "none":
        return f"kernel lockdown ({lock}) forbids kexec_load; use -s (kexec_file_load) with a signed kernel"
    return "operation not permitted (CAP_SYS_BOOT missing, or a security module refused)"


def explain(err: int, syscall: str, plan: LoadPlan | None = None) -> str:
    """One line saying why the kernel refused, in terms of what the user can change."""
    what = f"{syscall} failed"
    if err == errno.EPERM:
        return f"{what}: {_eperm_reason(syscall)}"
    if err == errno.EBUSY:
        return f"{what}: busy: another kexec load or unload is in progress, or the crash kernel is in use"
    if err == errno.ENOSYS:
        option = "CONFIG_KEXEC_FILE" if syscall == "kexec_file_load" else "CONFIG_KEXEC"
        return f"{what}: this kernel has no {syscall} ({option} is off)"
    if err == errno.ENOEXEC:
        return f"{what}: the kernel cannot load this image type with {syscall} (not a bzImage it accepts)"
    if err in (errno.EKEYREJECTED, errno.ENOKEY, errno.EBADMSG, errno.ENODATA, errno.ENOPKG, errno.ELIBBAD):
        return (f"{what}: the kernel's signature was rejected ({errno.errorcode.get(err, err)}): "
                "it is not signed by a key in the .builtin/.secondary/.platform/MOK keyrings")
    if err == errno.ENOMEM:
        return f"{what}: out of memory, or the crash kernel region is too small for the image"
    if err == errno.EADDRNOTAVAIL:
        return f"{what}: no room for the image in the crash kernel region"
    if err == errno.EINVAL:
        if plan is not None and plan.segments:
            return f"{what}: the kernel rejected the segments (EINVAL): {diagnose_einval(plan)}"
        return f"{what}: invalid argument (EINVAL)"
    return f"{what}: {os.strerror(err)}"


def diagnose_einval(plan: LoadPlan, iomem: str | None = None, meminfo: str | None = None) -> str:
    """Which segment the kernel most likely refused, judged by its own view of memory
    (our plan was checked against the firmware's map, which can be larger). Trying the
    segments one by one would replace the image loaded before: not an option."""
    from pykexec.probe import parse_iomem

    segs = plan.sorted_segments()
    try:
        ram, _ = parse_iomem(iomem if iomem is not None else read_stripped("/proc/iomem") or "")
        for s in segs:
            if not ram.is_ram(s.range):
                return (f"the {s.role} segment {s.range} is not all System RAM as the running kernel sees it "
                        "(/proc/iomem): try --mem-max below it")
    except KexecError:
        pass
    text = meminfo if meminfo is not None else read_stripped("/proc/meminfo") or ""
    total_kib = next((int(line.split()[1]) for line in text.splitlines() if line.startswith("MemTotal:")), 0)
    need = sum(s.memsz for s in segs)
    if total_kib and need > total_kib * 1024 // 2:
        return (f"the segments need {need >> 20} MiB, more than half of the kernel's usable memory "
                f"({total_kib >> 10} MiB MemTotal)")
    listed = ", ".join(f"{s.role} {s.range}" for s in segs)
    return f"no segment breaks a rule we know of ({listed})"


def kexec_load(plan: LoadPlan) -> None:
    """Hand the plan's segments to the kernel. Buffers are passed without copying; the
    bytes objects stay referenced by ``plan`` until the call returns."""
    segs = plan.sorted_segments()
    array = (abi.KexecSegment * len(segs))()
    keep: list[object] = []
    for i, s in enumerate(segs):
        buf = bytes(s.data) if not isinstance(s.data, bytes) else s.data
        keep.append(buf)
        ptr = ctypes.cast(ctypes.c_char_p(buf), ctypes.c_void_p).value
        array[i] = abi.KexecSegment(ptr, len(buf), s.mem, s.memsz)
    flags = abi.KEXEC_ARCH_X86_64 | (abi.KEXEC_ON_CRASH if plan.crash else 0)
    assert plan.entry is not None
    err = _call(abi.NR_KEXEC_LOAD, ctypes.c_ulong(plan.entry), ctypes.c_ulong(len(segs)),
                ctypes.byref(array), ctypes.c_ulong(flags))
    del keep
    if err:
        raise SyscallError(explain(err, "kexec_load", plan), err, "kexec_load")


def kexec_file_load(kernel: str, initrd: str | None, cmdline: str, crash: bool,
                    kernel_data: bytes | None = None, initrd_data: bytes | None = None) -> int:
    """Returns 0 or the errno (so -a can decide to fall back); raises on file errors.
    ``kernel_data``/``initrd_data`` go in memory files (a UKI's parts), the paths then
    only name them."""
    flags = abi.KEXEC_FILE_ON_CRASH if crash else 0
    if initrd is None:
        flags |= abi.KEXEC_FILE_NO_INITRAMFS
    cmd = cmdline.encode() + b"\0"
    kfd = _open_input(kernel, kernel_data)
    ifd = -1
    try:
        if initrd is not None:
            ifd = _open_input(initrd, initrd_data)
        return _call(abi.NR_KEXEC_FILE_LOAD, ctypes.c_int(kfd), ctypes.c_int(ifd), ctypes.c_ulong(len(cmd)),
                     ctypes.c_char_p(cmd), ctypes.c_ulong(flags))
    finally:
        os.close(kfd)
        if ifd >= 0:
            os.close(ifd)


def _open_input(path: str, data: bytes | None) -> int:
    """A read-only fd on the file ``path``, or on a memory file holding ``data``."""
    if data is None:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise KexecError(f"cannot open {path}: {e.strerror}") from None
    try:
        fd = os.memfd_create(os.path.basename(path)[:200] or "pykexec", os.MFD_CLOEXEC)
    except OSError as e:
        raise KexecError(f"cannot create a memory file for {path}: {e.strerror}") from None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError as e:
        os.close(fd)
        raise KexecError(f"cannot fill the memory file for {path}: {e.strerror}") from None
    return fd


def unload(crash: bool, use_file_syscall: bool | None) -> None:
    """Unload with the syscall family that loaded (lockdown forbids kexec_load even for
    unloading): file unload first unless told otherwise, then kexec_load(nr=0)."""
    if use_file_syscall is not False:
        flags = abi.KEXEC_FILE_UNLOAD | (abi.KEXEC_FILE_ON_CRASH if crash else 0)
        err = _call(abi.NR_KEXEC_FILE_LOAD, ctypes.c_int(-1), ctypes.c_int(-1), ctypes.c_ulong(0),
                    ctypes.c_void_p(None), ctypes.c_ulong(flags))
        if not err:
            return
        if use_file_syscall or err not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise SyscallError(explain(err, "kexec_file_load"), err, "kexec_file_load")
    flags = abi.KEXEC_ARCH_X86_64 | (abi.KEXEC_ON_CRASH if crash else 0)
    err = _call(abi.NR_KEXEC_LOAD, ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_void_p(None), ctypes.c_ulong(flags))
    if err:
        raise SyscallError(explain(err, "kexec_load"), err, "kexec_load")


def is_loaded(crash: bool) -> bool:
    name = "kexec_crash_loaded" if crash else "kexec_loaded"
    value = read_stripped(f"{SYS_KEXEC}/{name}")
    if value is None:
        raise KexecError(f"cannot read {SYS_KEXEC}/{name}: is sysfs mounted and CONFIG_KEXEC on?")
    return value == "1"


def execute() -> None:
    """sync, then reboot into the loaded image. Returns only on failure."""
    if not is_loaded(crash=False):
        raise KexecError("nothing has been loaded: load a kernel with -l first")
    os.sync()
    err = _call(abi.NR_REBOOT, ctypes.c_uint(abi.LINUX_REBOOT_MAGIC1), ctypes.c_uint(abi.LINUX_REBOOT_MAGIC2),
                ctypes.c_uint(abi.LINUX_REBOOT_CMD_KEXEC), ctypes.c_void_p(None))
    raise SyscallError(explain(err or errno.EIO, "reboot(LINUX_REBOOT_CMD_KEXEC)"), err, "reboot")



def check_segments(plan: LoadPlan, machine: Machine) -> None:
    """Refuse a plan the kernel would refuse (kernel/kexec_core.c sanity_check_segment_list),
    with the segment and the rule named."""
    segs = plan.sorted_segments()
    if not segs:
        raise PlanError("the plan has no segments", segs)
    if len(segs) > abi.KEXEC_SEGMENT_MAX:
        raise PlanError(f"{len(segs)} segments, the kernel accepts at most {abi.KEXEC_SEGMENT_MAX}", segs)
    ram = machine.memory
    for s in segs:
        name = f"{s.role} segment at {s.mem:#x}"
        if s.mem % PAGE_SIZE or s.memsz % PAGE_SIZE:
            raise PlanError(f"{name}: address and size must be page aligned (memsz {s.memsz:#x})", segs)
        if s.bufsz > s.memsz:
            raise PlanError(f"{name}: buffer ({s.bufsz:#x}) is larger than memsz ({s.memsz:#x})", segs)
        if not ram.is_ram(s.range):
            raise PlanError(f"{name}: {s.range} is not inside System RAM", segs)
        if plan.crash and machine.crash_kernel and not machine.crash_kernel.contains(s.range):
            raise PlanError(f"{name}: {s.range} is outside the crash kernel region {machine.crash_kernel}", segs)
    for a, b in zip(segs, segs[1:]):
        if a.range.overlaps(b.range):
            raise PlanError(f"{a.role} segment {a.range} overlaps {b.role} segment {b.range}", segs)
    if plan.entry is None or not any(s.range.contains(plan.entry) for s in segs):
        raise PlanError(f"entry point {plan.entry} is not inside any segment", segs)
    total = sum(s.memsz for s in segs)
    ram_total = sum(r.size for r in ram.ram())
    if not plan.crash and total > ram_total // 2:
        raise PlanError(f"segments need {total >> 20} MiB, more than half of RAM ({ram_total >> 20} MiB): "
                        "the kernel refuses that", segs)


class _KexecSyscalls:
    """What both Linux backends share: the kernel reports what is loaded, and reboot
    starts it, whichever syscall loaded it."""

    def is_loaded(self, crash: bool) -> bool:
        return is_loaded(crash)

    def execute(self) -> None:
        execute()


class KexecLoad(_KexecSyscalls):
    """kexec_load: our segments, entered through our purgatory."""

    name = BACKEND_KEXEC_LOAD

    def check(self, plan: LoadPlan, machine: Machine) -> None:
        check_segments(plan, machine)

    def load(self, plan: LoadPlan) -> None:
        kexec_load(plan)

    def unload(self, crash: bool) -> None:
        unload(crash, use_file_syscall=False)


class KexecFileLoad(_KexecSyscalls):
    """kexec_file_load: the kernel reads the files, checks signatures and places
    everything itself; the plan holds only what we hand it."""

    name = BACKEND_KEXEC_FILE_LOAD

    def check(self, plan: LoadPlan, machine: Machine) -> None:
        if plan.file_inputs is None:
            raise PlanError("a kexec_file_load plan names the files the kernel reads (no file inputs given)")

    def load(self, plan: LoadPlan) -> None:
        """Raises :class:`SyscallError` carrying the errno, from which -a decides to fall back."""
        fi = plan.file_inputs
        if fi is None:
            raise PlanError("a kexec_file_load plan names the files the kernel reads (no file inputs given)")
        err = kexec_file_load(fi.kernel, fi.initrd, fi.cmdline, plan.crash, fi.kernel_data, fi.initrd_data)
        if err:
            raise SyscallError(explain(err, "kexec_file_load"), err, "kexec_file_load")

    def unload(self, crash: bool) -> None:
        unload(crash, use_file_syscall=True)
