"""A dump file mapped read-only, as the ELF reader and the flattened-stream reader map
theirs: never read as a whole, pages come in as reads touch them; /proc/vmcore a window
at a time (:class:`MapWindows`)."""

from __future__ import annotations

import mmap
import os

from pykexec.vmcore.errors import VmcoreError, open_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


def open_dump(path: str, min_size: int, too_small: Callable[[int], str]) -> tuple[int, int]:
    """``(fd, size)`` of ``path`` opened read-only; one-line VmcoreError if it cannot be
    opened, is a directory, or has fewer than ``min_size`` bytes (``too_small(size)`` says
    why that is wrong)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise open_error(path, err) from None
    try:
        size = os.fstat(fd).st_size
        if os.path.isdir(path):
            raise VmcoreError(f"{path}: is a directory")
        if size < min_size:
            raise VmcoreError(f"{path}: {too_small(size)}")
    except BaseException:
        os.close(fd)
        raise
    return fd, size


def map_readonly(path: str, min_size: int, too_small: Callable[[int], str]) -> mmap.mmap:
    """``path`` mapped read-only; one-line VmcoreError as :func:`open_dump`, or if it
    cannot be mapped."""
    fd, _size = open_dump(path, min_size, too_small)
    try:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as err:
        raise VmcoreError(f"{path}: cannot map the file: {err}") from None
    finally:
        os.close(fd)


#: Bytes of a file mapped at once by :class:`MapWindows` (as makedumpfile maps /proc/vmcore).
WINDOW = 4 << 20
#: Windows kept mapped, least recently used dropped first.
KEEP = 16


class MapWindows:
    """``path`` mapped read-only a window of :data:`WINDOW` bytes at a time, for
    /proc/vmcore: its mmap fills every page-table entry when the map is made (no faults
    later, see :mod:`pykexec.vmcore.elfcore`), so mapping it whole costs 2 MiB of page
    tables per GiB of the crashed machine's memory, all built before the first read (80 ms
    of a save in a TCG crash kernel; 2 GiB of page tables for a 1 TiB machine, more than a
    crash kernel has).  A window that cannot be mapped is read with pread(2) instead.
    """

    def __init__(self, path: str, min_size: int, too_small: Callable[[int], str]) -> None:
        self._fd, self.size = open_dump(path, min_size, too_small)
        self.path = path
        self._windows: dict[int, memoryview | None] = {}  # window index -> its map (None: pread)

    def _window(self, index: int) -> memoryview | None:
        if index in self._windows:
            mv = self._windows.pop(index)
        else:
            if len(self._windows) >= KEEP:
                # Dropped, not closed: views handed out keep their window mapped until freed.
                del self._windows[next(iter(self._windows))]
            start = index * WINDOW
            try:
                mv = memoryview(mmap.mmap(self._fd, min(WINDOW, self.size - start), access=mmap.ACCESS_READ,
                                          offset=start))
            except (OSError, ValueError):
                mv = None
        self._windows[index] = mv  # most recently used last
        return mv

    def view(self, offset: int, size: int) -> bytes | memoryview:
        """Up to ``size`` bytes at ``offset`` (fewer past the end): a view of a window's map
        when one window holds them, else a map of their own (or bytes read with pread)."""
        size = max(0, min(size, self.size - offset))
        if size == 0:
            return b""
        index = offset // WINDOW
        if (offset + size - 1) // WINDOW == index:
            mv = self._window(index)
            if mv is not None:
                return mv[offset - index * WINDOW:offset - index * WINDOW + size]
        else:
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            try:
                span = memoryview(mmap.mmap(self._fd, offset + size - start, access=mmap.ACCESS_READ, offset=start))
                return span[offset - start:]
            except (OSError, ValueError):
                pass
        try:
            return os.pread(self._fd, size, offset)
        except OSError as err:
            raise VmcoreError(f"{self.path}: cannot read {size} bytes at offset {offset:#x}: {err.strerror}") from None

    def readinto(self, buf: memoryview, offset: int) -> int:
        """Bytes at ``offset`` copied into ``buf`` (as ``os.preadv``: fewer past the end;
        OSError where pread fails)."""
        done = 0
        want = max(0, min(len(buf), self.size - offset))
        while done < want:
            at = offset + done
            index = at // WINDOW
            n = min(want - done, (index + 1) * WINDOW - at)
            mv = self._window(index)
            if mv is not None:
                buf[done:done + n] = mv[at - index * WINDOW:at - index * WINDOW + n]
            else:
                got = os.preadv(self._fd, [buf[done:done + n]], at)
                if got < n:
                    return done + got
            done += n
        return done

    def close(self) -> None:
        for mv in self._windows.values():
            if mv is not None:
                mapped = mv.obj
                try:
                    mv.release()
                    mapped.close()  # type: ignore[attr-defined]
                except BufferError:
                    pass  # views still alive; the window goes with them
        self._windows.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
