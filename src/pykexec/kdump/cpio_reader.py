"""What an initramfs holds, as the kernel unpacks it: its cpio archives, one after
another, each compressed or not (layout: :mod:`pykexec.layouts.cpio`).

For ``kdump test`` (does the crash initramfs hold the capture and the target's
modules?) and ``kdump estimate`` (how much memory does it take unpacked?).
"""

from __future__ import annotations

import os
from collections import namedtuple

from pykexec.errors import InputError
from pykexec.layouts import cpio as C

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

#: Largest initramfs unpacked that is read (a crash initramfs is tens of MiB).
MAX_UNPACKED = 2 << 30
S_IFMT, S_IFREG, S_IFDIR, S_IFLNK = 0o170000, 0o100000, 0o040000, 0o120000


class CpioEntry(namedtuple("CpioEntry", "name mode size data")):
    """One file, directory, link or node; ``name`` without a leading ``./`` or ``/``;
    ``data``: its bytes when asked for (see :func:`read_initramfs`), else None."""

    __slots__ = ()
    name: str
    mode: int
    size: int
    data: bytes | None

    @property
    def is_file(self) -> bool:
        return self.mode & S_IFMT == S_IFREG

    @property
    def is_dir(self) -> bool:
        return self.mode & S_IFMT == S_IFDIR

    @property
    def is_symlink(self) -> bool:
        return self.mode & S_IFMT == S_IFLNK


def read_initramfs_file(path: str | os.PathLike[str],
                        want: Callable[[str], bool] | None = None) -> list[CpioEntry]:
    """:func:`read_initramfs` of a file; :class:`InputError` naming it if it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise InputError(f"cannot read initramfs {os.fspath(path)}: {err.strerror}") from None
    try:
        return read_initramfs(data, want)
    except ValueError as err:
        raise InputError(f"initramfs {os.fspath(path)}: {err}") from None


def read_initramfs(data: bytes, want: Callable[[str], bool] | None = None) -> list[CpioEntry]:
    """Every entry of an initramfs, in archive order (a later entry of the same name
    replaces the file, as the kernel unpacks it); the data of the files whose name
    ``want`` accepts.  ValueError says where the archive is broken."""
    entries: list[CpioEntry] = []
    _read_segments(memoryview(data), want, entries, 0)
    return entries


def _read_segments(buf: memoryview, want: Callable[[str], bool] | None, out: list[CpioEntry],
                   unpacked: int) -> int:
    """Archives and compressed streams one after another, as the kernel's
    unpack_to_rootfs reads them; returns the bytes unpacked so far."""
    from pykexec.images.bzimage import COMPRESSION_MAGICS

    pos = 0
    while pos < len(buf):
        if buf[pos] == 0:  # padding between segments
            pos += 1
            continue
        if bytes(buf[pos:pos + 5]) == C.NEWC_MAGIC[:5]:
            pos = _read_archive(buf, pos, want, out)
            continue
        kind = COMPRESSION_MAGICS.get(bytes(buf[pos:pos + 2]))
        if kind is None:
            raise ValueError(f"neither a cpio archive nor a compressed one at offset {pos}")
        content, used = _decompress(kind, buf[pos:], pos)
        unpacked += len(content)
        if unpacked > MAX_UNPACKED:
            raise ValueError(f"more than {MAX_UNPACKED >> 30} GiB unpacked: not a crash initramfs")
        unpacked = _read_segments(memoryview(content), want, out, unpacked)
        pos += used
    return unpacked


def _read_archive(buf: memoryview, pos: int, want: Callable[[str], bool] | None, out: list[CpioEntry]) -> int:
    """The entries of the archive at ``pos``, up to its trailer; returns the offset after it."""
    while True:
        hdr = C.unpack_header(buf, pos)
        name_at = pos + C.HEADER_SIZE
        name_end = name_at + hdr.namesize
        if hdr.namesize == 0 or name_end > len(buf):
            raise ValueError(f"cpio entry at offset {pos}: its name runs past the end")
        name = bytes(buf[name_at:name_end - 1]).decode("utf-8", "surrogateescape")
        data_at = name_end + C.padding(name_end - pos)
        data_end = data_at + hdr.filesize
        if data_end > len(buf):
            raise ValueError(f"cpio entry {name!r} at offset {pos}: its data runs past the end")
        pos = data_end + C.padding(hdr.filesize)
        if name == C.TRAILER:
            return pos
        clean = name.lstrip("/")
        clean = clean[2:] if clean.startswith("./") else clean
        if clean in ("", "."):
            continue
        data = bytes(buf[data_at:data_end]) if want is not None and want(clean) else None
        out.append(CpioEntry(clean, hdr.mode, hdr.filesize, data))


def _decompress(kind: str, buf: memoryview, at: int) -> tuple[bytes, int]:
    """One compressed stream at the start of ``buf``: its content, and the bytes it took."""
    import bz2
    import lzma
    import zlib

    decompressor: object
    errors: tuple[type[Exception], ...] = (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error)
    if kind == "gzip":
        decompressor = zlib.decompressobj(wbits=31)
    elif kind == "bzip2":
        decompressor = bz2.BZ2Decompressor()
    elif kind == "xz":
        decompressor = lzma.LZMADecompressor(lzma.FORMAT_XZ)
    elif kind == "lzma":
        decompressor = lzma.LZMADecompressor(lzma.FORMAT_ALONE)
    elif kind == "zstd":
        import zstandard

        decompressor = zstandard.ZstdDecompressor().decompressobj()
        errors += (zstandard.ZstdError,)
    else:
        raise ValueError(f"a {kind}-compressed archive at offset {at}: pykexec reads gzip, bzip2, lzma, xz "
                         "and zstd initramfs archives")
    try:
        content = decompressor.decompress(bytes(buf))
    except errors as err:
        raise ValueError(f"{kind} archive at offset {at} is corrupt: {err}") from None
    if not getattr(decompressor, "eof", True):
        raise ValueError(f"{kind} archive at offset {at} is cut short")
    unused = getattr(decompressor, "unused_data", b"")
    return content, len(buf) - len(unused)


def unpacked_bytes(entries: list[CpioEntry], page: int = 4096) -> int:
    """The memory the entries take unpacked in the initramfs's tmpfs: whole pages of
    file and link data (the last of each entry's version that survives)."""
    sizes: dict[str, int] = {}
    for e in entries:
        sizes[e.name] = -(-e.size // page) * page if (e.is_file or e.is_symlink) else 0
    return sum(sizes.values())
