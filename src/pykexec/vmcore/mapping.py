"""A dump file mapped read-only, as the ELF reader and the flattened-stream reader map
theirs: never read as a whole, pages come in as reads touch them."""

from __future__ import annotations

import mmap
import os

from pykexec.vmcore.errors import VmcoreError, open_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


def map_readonly(path: str, min_size: int, too_small: Callable[[int], str]) -> mmap.mmap:
    """``path`` mapped read-only; one-line VmcoreError if it cannot be opened, is a
    directory, cannot be mapped, or has fewer than ``min_size`` bytes (``too_small(size)``
    says why that is wrong)."""
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
        try:
            return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as err:
            raise VmcoreError(f"{path}: cannot map the file: {err}") from None
    finally:
        os.close(fd)
