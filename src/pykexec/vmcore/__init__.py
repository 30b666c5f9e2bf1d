"""Reading Linux crash dumps (``/proc/vmcore`` style ELF cores).

* :mod:`pykexec.vmcore.elfcore` -- the ELF core: notes, PT_LOAD address translation.
* :mod:`pykexec.vmcore.vmcoreinfo` -- the VMCOREINFO ``KEY=VALUE`` note.
* :mod:`pykexec.vmcore.printk` -- the kernel log in its three in-memory formats.
* :mod:`pykexec.vmcore.cli` -- ``pykexec vmcore dmesg``.

Kept import-light: ``vmcore dmesg`` start-up time is part of its speed.
"""

from __future__ import annotations

from pykexec.errors import KexecError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import os

    from pykexec.vmcore.elfcore import ElfCore
    from pykexec.vmcore.kdump import KdumpCore


class VmcoreError(KexecError):
    """A dump cannot be read, or the kernel log in it is unusable; one line."""


def open_error(path: str | os.PathLike[str], err: OSError) -> VmcoreError:
    """The one-line error for a dump that cannot be opened."""
    if isinstance(err, IsADirectoryError):
        return VmcoreError(f"{path}: is a directory")
    if isinstance(err, FileNotFoundError):
        return VmcoreError(f"{path}: no such file")
    return VmcoreError(f"{path}: cannot open: {err.strerror}")


def open_dump(path: str | os.PathLike[str]) -> ElfCore | KdumpCore:
    """An ELF core (/proc/vmcore, makedumpfile -E) or a kdump-compressed file (ours or
    makedumpfile's), told apart by their first bytes.

    The kdump reader (ctypes layouts) is imported only for kdump files: reading
    the log of an ELF core is a short command, and imports are most of it.
    """
    try:
        with open(path, "rb") as f:
            magic = f.read(8)
    except OSError as err:
        raise open_error(path, err) from None
    if magic.startswith(b"\x7fELF"):
        from pykexec.vmcore.elfcore import ElfCore

        return ElfCore(path)
    from pykexec.layouts.kdump import KDUMP_SIGNATURE

    if magic == KDUMP_SIGNATURE:
        from pykexec.vmcore.kdump import KdumpCore

        return KdumpCore(path)
    if magic.startswith(b"makedump"):
        raise VmcoreError(f"{path}: a flattened makedumpfile stream: convert it with makedumpfile -R first")
    raise VmcoreError(f"{path}: neither an ELF core nor a kdump-compressed dump")
