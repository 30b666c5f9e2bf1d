"""Backends: what hands a checked plan to the kernel or to the hypervisor.

One protocol, three implementations: ``kexec_load`` (our segments and purgatory),
``kexec_file_load`` (the kernel parses the image) and Xen's ``kexec_op`` (a PV dom0).
The library core (:mod:`pykexec.kexec`) chooses one before planning; the plan is then
checked through that backend's ``check`` and handed to its ``load``; the protocol is in
:mod:`pykexec.backends.protocol`.
"""
