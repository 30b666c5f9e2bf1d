"""What both writers of ``vmcore save`` share: where the dump goes, the notes they copy,
and the size of a batch of pages.

A writer writes at offsets (:meth:`write_at`), as both formats need (page descriptors
before the pages they describe, headers rewritten at the end).  The destination is
either a new file (:class:`FileOutput`, ``pwrite``) or a stream (:class:`FlattenedOutput`:
standard output or a pipe), which gets makedumpfile's flattened format, one record per
write (layout in :mod:`pykexec.layouts.flattened`), so that ``makedumpfile -R`` or
``pykexec vmcore reassemble`` rebuild the very file the writer would have written.
"""

from __future__ import annotations

import errno
import os
import stat

from pykexec.errors import UsageError
from pykexec.vmcore.errors import VmcoreError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pykexec.vmcore.elfcore import ElfCore

    Data = bytes | bytearray | memoryview

#: Pages read, tested and compressed per round (8 MiB of 4 KiB pages).
CHUNK_PAGES = 2048
#: The DST that means standard output (in the flattened format), as in makedumpfile -F.
STDOUT = "-"


def create(dst: str, force: bool) -> int:
    """Open DST for writing: refused if it exists unless ``force``."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        return os.open(dst, flags | getattr(os, "O_CLOEXEC", 0), 0o600)
    except FileExistsError:
        raise UsageError(f"{dst} exists (use --force to overwrite it)") from None
    except OSError as err:
        raise VmcoreError(f"{dst}: cannot create: {err.strerror}") from None


def pwrite_all(fd: int, data: Data, offset: int) -> None:
    """All of ``data`` at ``offset``; a write that makes no progress is a full disk."""
    mv = memoryview(data)
    while mv:
        n = os.pwrite(fd, mv, offset)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        mv = mv[n:]
        offset += n


def write_all(fd: int, parts: list[Data]) -> None:
    """All of ``parts``, one after the other, at the stream's position."""
    views = [memoryview(p).cast("B") for p in parts]
    while views:
        n = os.writev(fd, views)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


class FileOutput:
    """A new file, written with ``pwrite``.  Its header is flagged incomplete until the
    end (``marks_end`` False: nothing else would say that the writer stopped early)."""

    marks_end = False

    def __init__(self, dst: str, force: bool) -> None:
        self.name = dst
        self.fd = create(dst, force)

    def write_at(self, data: Data, offset: int) -> None:
        pwrite_all(self.fd, data, offset)

    def sync_data(self) -> None:
        """Everything written so far on disk, before the header that says it is complete."""
        os.fdatasync(self.fd)

    def extend_to(self, size: int) -> None:
        """At least ``size`` bytes long (holes past the last write)."""
        if os.fstat(self.fd).st_size < size:
            os.ftruncate(self.fd, size)

    def finish(self) -> None:
        os.fsync(self.fd)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def close(self) -> None:
        os.close(self.fd)


class FlattenedOutput:
    """makedumpfile's flattened format on a stream: the start header first, a record
    (offset, size, data) per write, the end marker from :meth:`finish`.  The end marker
    is what says the stream is whole (``marks_end``): a header rewritten at the end
    would be a second record at offset 0, and crash, which reads a stream by its records
    sorted by offset, could find either."""

    marks_end = True

    def __init__(self, fd: int, name: str = "standard output") -> None:
        from pykexec.layouts import flattened as F

        self._layout = F
        self.name = name
        self.fd = fd
        self.extent = 0     # the rebuilt file's size so far
        self.written = 0    # bytes sent
        try:
            self._send([F.pack_start_header()])
        except OSError as err:
            raise VmcoreError(f"{name}: cannot write: {err.strerror}") from None

    def _send(self, parts: list[Data]) -> None:
        write_all(self.fd, parts)
        self.written += sum(len(p) for p in parts)

    def write_at(self, data: Data, offset: int) -> None:
        if len(data):  # makedumpfile -R takes a record of 0 bytes for the end of the stream
            self._send([self._layout.pack_data_header(offset, len(data)), data])
            self.extent = max(self.extent, offset + len(data))

    def sync_data(self) -> None:
        pass  # a stream keeps its order: the end marker comes last

    def extend_to(self, size: int) -> None:
        if size > self.extent:
            self.write_at(b"\0", size - 1)

    def finish(self) -> None:
        self._send([self._layout.END_MARKER])
        if stat.S_ISREG(os.fstat(self.fd).st_mode):  # > FILE: on disk like any dump
            os.fsync(self.fd)

    def size(self) -> int:
        return self.written

    def close(self) -> None:
        pass  # the caller's descriptor (standard output, a pipe): the caller closes it


Output = FileOutput | FlattenedOutput


def open_output(dst: str | int, force: bool) -> Output:
    """Where a writer writes: a new file DST, or a flattened stream on standard output
    (DST ``-``) or on the file descriptor DST (a pipe to ssh)."""
    if isinstance(dst, int):
        return FlattenedOutput(dst, f"file descriptor {dst}")
    if dst == STDOUT:
        return FlattenedOutput(1)
    return FileOutput(dst, force)


def note_blob(core: ElfCore) -> bytes:
    """The source's notes re-packed in order (what makedumpfile stores as offset_note)."""
    from pykexec.layouts.elf import pack_note

    return b"".join(pack_note(n.name, n.type, n.desc) for n in core.notes)
