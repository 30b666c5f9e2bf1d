"""The newc ("070701") cpio format, the one the kernel unpacks as an initramfs
(Documentation/driver-api/early-userspace/buffer-format.rst).

An archive is a sequence of entries, each a 110-byte ASCII header (the magic, then 13
fields of 8 hex digits), the NUL-terminated name padded to a multiple of 4 bytes
(counting the header), then the data padded to a multiple of 4; the entry named
``TRAILER!!!`` ends it.  An initramfs may be several archives, each compressed or not,
one after another (zero bytes may pad between them).

The only definition of the layout in pykexec: what writes a crash initramfs and what
reads one (:mod:`pykexec.kdump.cpio_reader`) both use it.
"""

from __future__ import annotations

from collections import namedtuple

NEWC_MAGIC = b"070701"
#: newc with a checksum of the data (the kernel accepts it too; the sum is not checked here).
NEWC_CRC_MAGIC = b"070702"
#: The magic, then 13 numbers of 8 hex digits.
HEADER_SIZE = 6 + 13 * 8
TRAILER = "TRAILER!!!"
ALIGN = 4


class NewcHeader(namedtuple("NewcHeader", ["ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor",
                                            "devminor", "rdevmajor", "rdevminor", "namesize", "check"])):
    """The 13 numbers of a newc header."""

    __slots__ = ()
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    filesize: int
    devmajor: int
    devminor: int
    rdevmajor: int
    rdevminor: int
    namesize: int
    check: int


def padding(n: int) -> int:
    """Zero bytes after ``n`` bytes to reach the next 4-byte boundary."""
    return -n % ALIGN


def pack_entry(header: NewcHeader, name: str, data: bytes = b"") -> bytes:
    """One entry: header, name (``namesize`` must count its NUL), data, with their padding."""
    name_bytes = name.encode() + b"\0"
    if header.namesize != len(name_bytes) or header.filesize != len(data):
        raise ValueError(f"cpio entry {name!r}: namesize/filesize do not match the name and data")
    head = NEWC_MAGIC + b"".join(b"%08X" % value for value in tuple(header)) + name_bytes
    return head + bytes(padding(len(head))) + data + bytes(padding(len(data)))


def unpack_header(buf: bytes | memoryview, offset: int = 0) -> NewcHeader:
    """The header at ``offset``; ValueError if it is not a newc header."""
    raw = bytes(buf[offset:offset + HEADER_SIZE])
    if len(raw) < HEADER_SIZE:
        raise ValueError(f"cpio header at offset {offset} is cut short")
    if raw[:6] not in (NEWC_MAGIC, NEWC_CRC_MAGIC):
        raise ValueError(f"no newc cpio magic at offset {offset} (found {raw[:6]!r})")
    try:
        return NewcHeader(*(int(raw[i:i + 8], 16) for i in range(6, HEADER_SIZE, 8)))
    except ValueError:
        raise ValueError(f"cpio header at offset {offset} has a field that is not hex digits") from None
