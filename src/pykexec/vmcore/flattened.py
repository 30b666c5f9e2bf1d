"""A flattened makedumpfile stream (``makedumpfile -F``, ``vmcore save -F``) read in
place as the file it rebuilds, as crash reads one: its records are indexed once, then
reads by offset are served from them, zero-copy when one record holds the bytes.

:class:`FlattenedFile` offers what the dump readers need of a file: ``pread``,
``readinto`` and ``view`` by offset in the rebuilt file, its ``size``, and
``complete`` (the stream ends with its end marker).  :func:`pykexec.vmcore.open.open_dump`
puts an ELF or kdump-compressed reader on top of it.  Layout in
:mod:`pykexec.layouts.flattened`.
"""

from __future__ import annotations

import mmap
import os
from bisect import bisect_left, bisect_right

from pykexec.layouts import flattened as F
from pykexec.vmcore.errors import VmcoreError
from pykexec.vmcore.mapping import map_readonly

TYPE_CHECKING = False
if TYPE_CHECKING:
    Buffer = bytes | memoryview


class FlattenedFile:
    """A flattened stream, read as the file ``makedumpfile -R`` would rebuild from it.

    Records are indexed when it is opened: ``records`` (how many), ``size`` (of the
    rebuilt file), ``stream_size`` (of the stream), ``complete`` (False: the stream stops before its end marker, cut
    short; what it holds is served all the same).  Later records win where records
    overlap; bytes no record covers read as zeros.  Context manager.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._map: mmap.mmap | None = map_readonly(
            self.path, F.START_HEADER_SIZE,
            lambda size: f"a flattened stream cut short in its {F.START_HEADER_SIZE}-byte start header ({size} bytes)")
        self._mv = memoryview(self._map)
        try:
            self._index()
        except BaseException:
            self.close()
            raise

    def _index(self) -> None:
        mv = self._mv
        if not F.is_start_header(mv[:F.START_HEADER_FMT.size]):
            raise VmcoreError(f"{self.path}: not a flattened makedumpfile stream (bad signature or type)")
        records: list[tuple[int, int, int]] = []  # (offset in the rebuilt file, size, offset in the stream)
        pos = F.START_HEADER_SIZE
        self.complete = False
        end = self.stream_size = len(mv)
        while pos + F.DATA_HEADER_FMT.size <= end:
            try:
                record = F.unpack_data_header(mv, pos)
            except ValueError as err:
                raise VmcoreError(f"{self.path}: corrupt flattened stream: {err} (data header at {pos:#x})") from None
            pos += F.DATA_HEADER_FMT.size
            if record is None:
                self.complete = True
                break
            offset, size = record[0], min(record[1], end - pos)  # a record cut short: what arrived of it
            if size:
                records.append((offset, size, pos))
            pos += size
        self.records = len(records)
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._sources: list[int] = []
        ordered = sorted(records)
        if all(a[0] + a[1] <= b[0] for a, b in zip(ordered, ordered[1:])):
            for offset, size, source in ordered:
                self._starts.append(offset)
                self._ends.append(offset + size)
                self._sources.append(source)
        else:
            for offset, size, source in records:  # in stream order: a later write wins
                self._paint(offset, offset + size, source)
        #: The size of the rebuilt file: where the furthest record ends.
        self.size = self._ends[-1] if self._ends else 0

    def _paint(self, start: int, end: int, source: int) -> None:
        """Put the record ``[start, end)`` (data at ``source`` in the stream) over the pieces it covers."""
        starts, ends, sources = self._starts, self._ends, self._sources
        lo = bisect_right(ends, start)   # first piece ending after start
        hi = bisect_left(starts, end)    # first piece starting at or after end
        new_starts, new_ends, new_sources = [start], [end], [source]
        if lo < hi:
            if starts[lo] < start:  # the left piece keeps its head
                new_starts.insert(0, starts[lo])
                new_ends.insert(0, start)
                new_sources.insert(0, sources[lo])
            if ends[hi - 1] > end:  # the right piece keeps its tail
                new_starts.append(end)
                new_ends.append(ends[hi - 1])
                new_sources.append(sources[hi - 1] + end - starts[hi - 1])
        starts[lo:hi], ends[lo:hi], sources[lo:hi] = new_starts, new_ends, new_sources

    # -- reads by offset in the rebuilt file --------------------------------------------------
    def view(self, offset: int, size: int) -> Buffer:
        """Up to ``size`` bytes at ``offset`` of the rebuilt file (fewer only past its
        end, as a file read): a view of the stream when one record holds them all."""
        size = max(0, min(size, self.size - offset))
        if size == 0 or offset < 0:
            return b""
        starts, ends, sources = self._starts, self._ends, self._sources
        i = bisect_right(starts, offset) - 1
        if i >= 0 and offset + size <= ends[i]:
            at = sources[i] + offset - starts[i]
            return self._mv[at:at + size]
        out = bytearray(size)  # zeros where no record writes
        i = max(i, 0)
        stop = offset + size
        while i < len(starts) and starts[i] < stop:
            a, b = max(starts[i], offset), min(ends[i], stop)
            if a < b:
                at = sources[i] + a - starts[i]
                out[a - offset:b - offset] = self._mv[at:at + b - a]
            i += 1
        return bytes(out)

    def pread(self, size: int, offset: int) -> bytes:
        """As ``os.pread`` on the rebuilt file."""
        return bytes(self.view(offset, size))

    def readinto(self, buf: memoryview, offset: int) -> int:
        """As ``os.preadv(fd, [buf], offset)`` on the rebuilt file: the bytes read."""
        data = self.view(offset, len(buf))
        buf[:len(data)] = data
        return len(data)

    # -- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        if self._map is not None:
            try:
                self._mv.release()
                self._map.close()
            except BufferError:
                pass  # views handed out are still alive; the map goes with them
            self._map = None

    def __enter__(self) -> FlattenedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
