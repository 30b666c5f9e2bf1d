"""Whether this domain may use Xen's ``kexec_op``: cheap checks of what Linux shows in
/sys/hypervisor and /proc/xen (no ctypes, no hypercall), for every pykexec start-up."""

from __future__ import annotations

from pykexec.backends import read_stripped
from pykexec.errors import KexecError

# Where Linux shows Xen to user space; module constants so tests can point them elsewhere.
SYS_HYPERVISOR = "/sys/hypervisor"
PROC_XEN = "/proc/xen"

_PVH_MESSAGE = ("dom0 runs in PVH mode and Xen offers kexec_op only to a PV dom0: "
                "boot dom0 as PV (remove dom0=pvh from Xen's command line)")


class XenEnvironmentError(KexecError):
    """This system cannot talk to Xen's kexec_op (not Xen, not dom0, PVH, privcmd missing)."""


def hypervisor_type() -> str | None:
    """``/sys/hypervisor/type`` ("xen" under Xen), None when absent."""
    return read_stripped(f"{SYS_HYPERVISOR}/type")


def xen_guest_type() -> str | None:
    """"PV", "PVH" or "HVM" from ``/sys/hypervisor/guest_type`` (Linux 4.15+), else None."""
    return read_stripped(f"{SYS_HYPERVISOR}/guest_type")


def xen_control_domain() -> bool:
    """``/proc/xen/capabilities`` says ``control_d`` (needs xenfs mounted on /proc/xen)."""
    caps = read_stripped(f"{PROC_XEN}/capabilities")
    return caps is not None and "control_d" in caps.split()


def xen_pv_dom0() -> bool:
    """True in a PV control domain: the only kind of domain Xen lets use kexec_op.

    A PVH dom0 reads the same ``control_d``; Linux tells the two apart in
    ``/sys/hypervisor/guest_type``. Older kernels lack that file: then we assume PV and
    a PVH dom0 shows itself by ENOSYS from kexec_op (see
    :func:`pykexec.backends.xen.kexec_op.explain`).
    """
    return (hypervisor_type() == "xen" and xen_control_domain()
            and xen_guest_type() in (None, "PV"))


def check_pv_dom0() -> None:
    """Raise :class:`XenEnvironmentError` saying what is missing for kexec_op, if anything."""
    if hypervisor_type() != "xen":
        raise XenEnvironmentError("not running under Xen (/sys/hypervisor/type does not say xen)")
    if read_stripped(f"{PROC_XEN}/capabilities") is None:
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
