"""The Xen backend: a load plan checked against Xen's rules and handed to ``kexec_op``.

A plan with purgatory loads as type DEFAULT or CRASH, entered in 64-bit mode at
purgatory, with the first MiB mapped; a crash plan without purgatory is Xen's
proposed CRASH_EFI (:mod:`pykexec.xen_crash_efi`). Unload, status and execute go to the
hypervisor too: in a PV dom0 the kernel's kexec is not the one that runs.
"""

from __future__ import annotations

import errno

from pykexec.backends.xen.kexec_op import HypercallError, XenKexec
from pykexec.backends.xen.rules import ARCH_PURGATORY, XenRange, XenSegment, check_load, with_low_memory_mapped
from pykexec.errors import KexecError
from pykexec.layouts import xen as abi
from pykexec.plan import BACKEND_XEN

TYPE_CHECKING = False  # typing costs an import; this name is all type checkers need
if TYPE_CHECKING:
    from collections.abc import Callable

    from pykexec.machine import Machine
    from pykexec.plan import LoadPlan


def segments_from_plan(plan: LoadPlan) -> list[XenSegment]:
    """The plan's segments as Xen segments, in the plan's order (for CRASH_EFI segment 0
    must be the bzImage), roles kept."""
    return [XenSegment(bytes(s.data), len(s.data), s.mem, s.memsz, s.role) for s in plan.segments]


def _has_purgatory(plan: LoadPlan) -> bool:
    return any(s.role == "purgatory" for s in plan.segments)


def load_type(plan: LoadPlan) -> int:
    """The Xen load type of ``plan``: DEFAULT, CRASH (with purgatory) or CRASH_EFI."""
    if not plan.crash:
        return abi.KEXEC_TYPE_DEFAULT
    return abi.KEXEC_TYPE_CRASH if _has_purgatory(plan) else abi.KEXEC_TYPE_CRASH_EFI


def kexec_type(crash: bool) -> int:
    """The Xen type of the normal (or crash) image, for unload and status."""
    return abi.KEXEC_TYPE_CRASH if crash else abi.KEXEC_TYPE_DEFAULT


def xen_segments(plan: LoadPlan) -> list[XenSegment]:
    """The plan's segments as Xen takes them: purgatory needs the first MiB mapped (and
    all it copies aside: Xen as the crash kernel copies 0 through dom0's span), which
    Xen does only for segments it is given (null-buffer ones, added after the digests)."""
    segs = segments_from_plan(plan)
    if _has_purgatory(plan):
        segs = with_low_memory_mapped(segs, plan.backup_source.end if plan.backup_source else 0)
    return segs


class XenBackend:
    """Xen's ``kexec_op`` as a :class:`pykexec.backends.protocol.Backend`, for a PV dom0.

    ``connect`` opens the hypervisor for one call (default :meth:`XenKexec.open`: checks
    that this is a PV dom0, opens privcmd); each call opens and closes its own.
    """

    name = BACKEND_XEN

    def __init__(self, connect: Callable[[], XenKexec] = XenKexec.open) -> None:
        self._connect = connect

    def check(self, plan: LoadPlan, machine: Machine) -> None:
        """Xen's rules for kexec_load, applied before any hypercall; a crash plan must fit
        the machine's crash area (Xen's crashkernel=); a CRASH_EFI plan must also keep the
        series' placement rules (:func:`pykexec.xen_crash_efi.validate`)."""
        area = machine.crash_kernel
        type_ = load_type(plan)
        if type_ == abi.KEXEC_TYPE_CRASH_EFI:
            from pykexec import xen_crash_efi  # its rules need the image loaders

            xen_crash_efi.validate(plan, area)
        check_load(type_, ARCH_PURGATORY, xen_segments(plan), plan.entry or 0,
                   XenRange(area.start, area.size) if area is not None and plan.crash else None)

    def load(self, plan: LoadPlan) -> None:
        """Hand a checked plan to Xen, which checks it again against its own crash area. A
        Xen without the CRASH_EFI series is named, with its version, as the reason."""
        type_ = load_type(plan)
        with self._connect() as xen:
            try:
                xen.load(type_, ARCH_PURGATORY, xen_segments(plan), plan.entry or 0)
            except HypercallError as err:
                if type_ == abi.KEXEC_TYPE_CRASH_EFI and err.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                    major, minor, extra = xen.xen_version()
                    raise KexecError(f"Xen {major}.{minor}{extra} does not know the CRASH_EFI load type (3): it lacks "
                                     "the 'x86/kexec: Secure Boot support' series; nothing was loaded") from None
                raise

    def unload(self, crash: bool) -> None:
        with self._connect() as xen:
            xen.unload(kexec_type(crash))

    def is_loaded(self, crash: bool) -> bool:
        with self._connect() as xen:
            return xen.is_loaded(kexec_type(crash))

    def execute(self) -> None:
        """Jump into the loaded normal image (file systems synced first); Xen does not
        shut dom0 down."""
        with self._connect() as xen:
            if not xen.is_loaded(abi.KEXEC_TYPE_DEFAULT):
                raise KexecError("nothing has been loaded: load a kernel with -l first")
            xen.execute(abi.KEXEC_TYPE_DEFAULT)
