"""Xen's ``kexec_op`` and the few other hypercalls a kexec tool needs, on an open privcmd.

Entry points::

    with XenKexec.open() as xen:
        xen.crash_area() / xen.xen_image_range() / xen.vmcoreinfo_range() -> XenRange(start, size)
        xen.xen_phys_start() -> int
        xen.cpu_notes() -> [CpuNote(cpu, start, size)]
        xen.machine_memory_map() -> [E820Range(start, size, type)]
        xen.xen_version() -> (major, minor, extra); xen.capabilities() -> str
        xen.load(type, arch, segments, entry); xen.unload(type); xen.execute(type)
        xen.status(type) -> bool (raw); xen.is_loaded(type) -> bool (trustworthy)

A load is checked against Xen's rules first (:mod:`pykexec.backends.xen.rules`);
``status`` is Xen's broken answer and ``is_loaded`` ours (:mod:`pykexec.backends.xen.state`).
Every refusal becomes a :class:`HypercallError` whose message :func:`explain` wrote.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections import namedtuple

from pykexec.backends.xen.detect import check_pv_dom0, xen_guest_type
from pykexec.backends.xen.privcmd import HypercallBuffer, Privcmd
from pykexec.backends.xen.rules import XenRange, check_load, type_name
from pykexec.backends.xen.state import STATE_DIR, record_state, recorded_state
from pykexec.errors import SyscallError
from pykexec.layouts import xen as abi
from pykexec.layouts.x86_paging import PAGE_SIZE

TYPE_CHECKING = False  # typing costs an import; this name is all type checkers need
if TYPE_CHECKING:
    from collections.abc import Sequence

    from pykexec.backends.xen.rules import XenSegment

# Safety stop for the MA_CPU enumeration (Xen stops us with ERANGE at nr_cpu_ids).
_MAX_CPUS = 1 << 16
_MAX_E820_ENTRIES = 4096


class HypercallError(SyscallError):
    """Xen refused a hypercall; ``errno`` and ``syscall`` (the command name) are kept."""


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


# --------------------------------------------------------------------------- kexec_op
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
        return HypercallError(explain(-rc, name, **kw), -rc, name)

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

    def commandline(self) -> str:
        """XENVER_commandline: Xen's own command line, e.g. "console=com1 crashkernel=256M@1G"."""
        return self._version_string(abi.XENVER_commandline, abi.XEN_COMMANDLINE_LEN)

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
        every load and unload (see :mod:`pykexec.backends.xen.state`): prefer :meth:`is_loaded`."""
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
