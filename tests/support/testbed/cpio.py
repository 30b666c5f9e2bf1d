"""The newc ("070701") cpio format the kernel unpacks as an initramfs."""

from __future__ import annotations

import gzip
import io
import os
import stat
from pathlib import Path
from typing import BinaryIO, Callable


class CpioWriter:
    """Minimal writer for the newc ("070701") cpio format the kernel unpacks.

    Written in-process so device nodes (``/dev/console``) can be created
    without root and output is deterministic (mtime 0, uid/gid 0).
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._ino = 1
        self._dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        name_b = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0)
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._ino += 1
        self._out.write(hdr + name_b)
        self._out.write(b"\0" * (-(len(hdr) + len(name_b)) % 4))
        self._out.write(data)
        self._out.write(b"\0" * (-len(data) % 4))

    @staticmethod
    def _norm(path: str) -> str:
        return path.strip("/")

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        """Create ``path`` and its missing parents."""
        path = self._norm(path)
        if not path or path in self._dirs:
            return
        parent = os.path.dirname(path)
        if parent:
            self.mkdir(parent)
        self._dirs.add(path)
        self._entry(path, stat.S_IFDIR | mode)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        path = self._norm(path)
        self.mkdir(os.path.dirname(path))
        self._entry(path, stat.S_IFREG | (mode & 0o7777), data)

    def symlink(self, path: str, target: str) -> None:
        path = self._norm(path)
        self.mkdir(os.path.dirname(path))
        self._entry(path, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        path = self._norm(path)
        self.mkdir(os.path.dirname(path))
        self._entry(path, stat.S_IFCHR | mode, rdev=(major, minor))

    def host_path(self, guest: str, host: Path) -> None:
        """Copy a host file, symlink or directory tree (recursively) to ``guest``."""
        st = host.lstat()
        if stat.S_ISLNK(st.st_mode):
            self.symlink(guest, os.readlink(host))
        elif stat.S_ISDIR(st.st_mode):
            self.mkdir(guest)
            for child in sorted(host.iterdir()):
                self.host_path(f"{guest.rstrip('/')}/{child.name}", child)
        elif stat.S_ISREG(st.st_mode):
            self.file(guest, host.read_bytes(), st.st_mode)

    def close(self) -> None:
        """Write the trailer and pad to 512 bytes so archives concatenate."""
        self._entry("TRAILER!!!", 0)
        pos = self._out.tell()
        self._out.write(b"\0" * (-pos % 512))


def cpio_bytes(build: Callable[[CpioWriter], None], *, compress: bool) -> bytes:
    """Run ``build`` against a fresh archive; return it, gzip -1 compressed if asked."""
    buf = io.BytesIO()
    w = CpioWriter(buf)
    build(w)
    w.close()
    data = buf.getvalue()
    if compress:
        data = gzip.compress(data, compresslevel=1, mtime=0)
        # The kernel skips zero padding between concatenated segments; keep
        # each segment 4-byte aligned as it requires for uncompressed ones.
        data += b"\0" * (-len(data) % 4)
    return data
