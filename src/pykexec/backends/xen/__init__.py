"""Xen's ``kexec_op`` from a 64-bit PV dom0, without libxenctrl.

Dom0 user space reaches the hypervisor through Linux's privcmd driver, which Xen trusts
to pass hypercalls on; only a PV control domain may use ``kexec_op``. One module per
concern, each imported by its own name (this package re-exports nothing)::

    detect     are we a PV dom0? (cheap: reads /sys and /proc, no ctypes)
    privcmd    the transport: hypercalls through /dev/xen/privcmd, buffers Xen may read
    rules      Xen's rules for a load (XenSegment, check_load, the low-memory map)
    state      the record of our loads and unloads (Xen's own status is unreliable)
    kexec_op   XenKexec: get_range, machine memory map, version, load, unload, execute
    backend    XenBackend: a load plan handed to Xen (pykexec.backends.protocol.Backend)
"""
