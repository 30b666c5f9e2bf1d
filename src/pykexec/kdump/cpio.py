"""Writes the newc cpio archive the kernel unpacks as an initramfs (layout:
:mod:`pykexec.layouts.cpio`; :mod:`pykexec.kdump.cpio_reader` reads it back).

Written in-process so that device nodes need no root and the archive is the same
bytes for the same input (owner root, mtime 0, inodes numbered in order).
"""

from __future__ import annotations

import os
import stat

from pykexec.layouts import cpio as C

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class Writable(Protocol):
        def write(self, data: bytes, /) -> object: ...


class CpioWriter:
    """Entries appended to ``out`` (any writable binary stream: a file, a gzip or
    zstd stream); parent directories are added before their first child, each path
    once (the first wins).  ``size`` counts the bytes written: the archive unpacked."""

    def __init__(self, out: Writable) -> None:
        self._out = out
        self._ino = 1
        self._names: set[str] = set()
        self.size = 0

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        header = C.NewcHeader(ino=self._ino, mode=mode, uid=0, gid=0, nlink=1, mtime=0, filesize=len(data),
                              devmajor=0, devminor=0, rdevmajor=rdev[0], rdevminor=rdev[1],
                              namesize=len(name.encode()) + 1, check=0)
        self._ino += 1
        entry = C.pack_entry(header, name, data)
        self._out.write(entry)
        self.size += len(entry)

    def _claim(self, path: str) -> str | None:
        """``path`` without its leading ``/``, its parents made; None if already there."""
        name = path.strip("/")
        if not name or name in self._names:
            return None
        parent = os.path.dirname(name)
        if parent:
            self.directory(parent)
        self._names.add(name)
        return name

    def __contains__(self, path: str) -> bool:
        return path.strip("/") in self._names

    def directory(self, path: str, mode: int = 0o755) -> None:
        name = self._claim(path)
        if name is not None:
            self._entry(name, stat.S_IFDIR | mode)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        name = self._claim(path)
        if name is not None:
            self._entry(name, stat.S_IFREG | (mode & 0o7777), data)

    def symlink(self, path: str, target: str) -> None:
        name = self._claim(path)
        if name is not None:
            self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        name = self._claim(path)
        if name is not None:
            self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def close(self) -> None:
        """The trailer, padded to 512 bytes so that another archive may follow."""
        self._entry(C.TRAILER, 0)
        tail = bytes(-self.size % 512)
        self._out.write(tail)
        self.size += len(tail)
