"""Opening a dump file of either format, told apart by its first bytes, and either
format sent as a flattened makedumpfile stream (``makedumpfile -F``, ``vmcore save -F``)."""

from __future__ import annotations

from pykexec.vmcore.errors import VmcoreError, open_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    import os

    from pykexec.vmcore.dump_memory import DumpMemory
    from pykexec.vmcore.elfcore import ElfCore
    from pykexec.vmcore.flattened import FlattenedFile
    from pykexec.vmcore.kdump import KdumpCore
    from pykexec.vmcore.xen import Dom0Memory

    # Every reader is DumpMemory: mypy checks it here, where no reader imports from.
    _READERS: tuple[type[DumpMemory], ...] = (ElfCore, KdumpCore, Dom0Memory)

ELF_MAGIC = b"\x7fELF"
#: The first bytes of a flattened stream's signature ("makedumpfile").
FLATTENED_MAGIC = b"makedump"


def _magic(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(8)
    except OSError as err:
        raise open_error(path, err) from None


def _flattened(path: str | os.PathLike[str]) -> tuple[FlattenedFile, bytes]:
    """The stream at ``path``, indexed, and the first bytes of the file it rebuilds."""
    from pykexec.vmcore.flattened import FlattenedFile

    flat = FlattenedFile(path)
    return flat, flat.pread(8, 0)


def open_dump(path: str | os.PathLike[str]) -> ElfCore | KdumpCore:
    """An ELF core (/proc/vmcore, makedumpfile -E) or a kdump-compressed file (ours or
    makedumpfile's), told apart by their first bytes; either may be a flattened stream.

    The kdump reader (ctypes layouts) is imported only for kdump files: reading
    the log of an ELF core is a short command, and imports are most of it.
    """
    magic = _magic(path)
    flat = None
    if magic == FLATTENED_MAGIC:
        flat, magic = _flattened(path)
    try:
        if magic.startswith(ELF_MAGIC):
            from pykexec.vmcore.elfcore import ElfCore

            return ElfCore(path, flat)
        from pykexec.layouts.kdump import KDUMP_SIGNATURE

        if magic == KDUMP_SIGNATURE:
            from pykexec.vmcore.kdump import KdumpCore

            return KdumpCore(path, flat)
    except BaseException:
        if flat is not None:
            flat.close()
        raise
    if flat is not None:
        flat.close()
        if not flat.complete:  # an ELF core's header is sent last (vmcore save -E -F)
            raise VmcoreError(f"DUMP INCOMPLETE: {path}: a flattened stream that ends at byte {flat.stream_size} "
                              f"without its end marker, before its dump's header arrived ({flat.records} records, "
                              f"{flat.size} bytes of the dump; nothing to read)")
        raise VmcoreError(f"{path}: a flattened stream of neither an ELF core nor a kdump-compressed dump"
                          + ("" if flat.records else " (it holds no data)"))
    raise VmcoreError(f"{path}: neither an ELF core nor a kdump-compressed dump")


def open_elf(path: str | os.PathLike[str]) -> ElfCore:
    """An ELF core, or a flattened stream of one (makedumpfile -E -F): what ``vmcore
    save`` reads."""
    from pykexec.vmcore.elfcore import ElfCore

    if _magic(path) != FLATTENED_MAGIC:
        return ElfCore(path)
    flat, magic = _flattened(path)
    if not magic.startswith(ELF_MAGIC):
        flat.close()
        raise VmcoreError(f"{path}: a flattened stream of a kdump-compressed dump: vmcore save reads ELF cores "
                          "(/proc/vmcore, makedumpfile -E)")
    return ElfCore(path, flat)
