"""Opening a dump file of either format, told apart by its first bytes."""

from __future__ import annotations

from pykexec.vmcore.errors import VmcoreError, open_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    import os

    from pykexec.vmcore.dump_memory import DumpMemory
    from pykexec.vmcore.elfcore import ElfCore
    from pykexec.vmcore.kdump import KdumpCore
    from pykexec.vmcore.xen import Dom0Memory

    # Every reader is DumpMemory: mypy checks it here, where no reader imports from.
    _READERS: tuple[type[DumpMemory], ...] = (ElfCore, KdumpCore, Dom0Memory)


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
