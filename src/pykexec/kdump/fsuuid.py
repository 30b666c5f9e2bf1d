"""A file system's UUID, read from its superblock: how the crash kernel finds the
target's device without udev (its name may differ from the running system's).
ext2/3/4, XFS and Btrfs; the superblock offsets are their on-disk formats'.
"""

from __future__ import annotations

import os

#: (magic offset, magic, UUID offset) of each superblock, from the device's start.
_EXT = (1024 + 0x38, b"\x53\xef", 1024 + 0x68)
_SUPERBLOCKS = {
    "ext2": _EXT, "ext3": _EXT, "ext4": _EXT,
    "xfs": (0, b"XFSB", 32),
    "btrfs": (0x10040, b"_BHRfS_M", 0x10020),
}
SUPPORTED = tuple(_SUPERBLOCKS)


def read_uuid(device: str | os.PathLike[str], fstype: str) -> str | None:
    """The UUID of the ``fstype`` file system on ``device`` (``8-4-4-4-12`` lower-case
    hex, as blkid prints it); None if unreadable, of another type, or not supported."""
    layout = _SUPERBLOCKS.get(fstype)
    if layout is None:
        return None
    magic_at, magic, uuid_at = layout
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        found = os.pread(fd, len(magic), magic_at)
        raw = os.pread(fd, 16, uuid_at)
    except OSError:
        return None
    finally:
        os.close(fd)
    if found != magic or len(raw) != 16:
        return None
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
