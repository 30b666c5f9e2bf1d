"""Backends: what hands a checked plan to the kernel or to the hypervisor.

One protocol, three implementations: ``kexec_load`` (our segments and purgatory),
``kexec_file_load`` (the kernel parses the image) and Xen's ``kexec_op`` (a PV dom0).
The library core (:mod:`pykexec.kexec`) chooses one before planning; the plan is then
checked through that backend's ``check`` and handed to its ``load``; the protocol is in
:mod:`pykexec.backends.protocol`.
"""


def read_stripped(path: str) -> str | None:
    """The text of a small /proc or /sys file without surrounding white space, None
    when unreadable: how every backend asks the running system what it has."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None
