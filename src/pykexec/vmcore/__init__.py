"""Reading Linux crash dumps (``/proc/vmcore`` style ELF cores).

* :mod:`pykexec.vmcore.elfcore` -- the ELF core: notes, PT_LOAD address translation.
* :mod:`pykexec.vmcore.vmcoreinfo` -- the VMCOREINFO ``KEY=VALUE`` note.
* :mod:`pykexec.vmcore.printk` -- the kernel log in its three in-memory formats.
* :mod:`pykexec.vmcore.cli` -- ``pykexec vmcore dmesg``.

Kept import-light: ``vmcore dmesg`` start-up time is part of its speed.
"""

from __future__ import annotations

from pykexec.errors import KexecError


class VmcoreError(KexecError):
    """A dump cannot be read, or the kernel log in it is unusable; one line."""
