"""What both writers of ``vmcore save`` share: the destination file (created, written
in full), the notes they copy, and the size of a batch of pages."""

from __future__ import annotations

import errno
import os

from pykexec.errors import UsageError
from pykexec.vmcore.errors import VmcoreError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pykexec.vmcore.elfcore import ElfCore

#: Pages read, tested and compressed per round (8 MiB of 4 KiB pages).
CHUNK_PAGES = 2048


def create(dst: str, force: bool) -> int:
    """Open DST for writing: refused if it exists unless ``force``."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        return os.open(dst, flags | getattr(os, "O_CLOEXEC", 0), 0o600)
    except FileExistsError:
        raise UsageError(f"{dst} exists (use --force to overwrite it)") from None
    except OSError as err:
        raise VmcoreError(f"{dst}: cannot create: {err.strerror}") from None


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """All of ``data`` at ``offset``; a write that makes no progress is a full disk."""
    mv = memoryview(data)
    while mv:
        n = os.pwrite(fd, mv, offset)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        mv = mv[n:]
        offset += n


def note_blob(core: ElfCore) -> bytes:
    """The source's notes re-packed in order (what makedumpfile stores as offset_note)."""
    from pykexec.layouts.elf import pack_note

    return b"".join(pack_note(n.name, n.type, n.desc) for n in core.notes)
