"""The one error every dump reader raises, and the one line for a dump that cannot be opened."""

from __future__ import annotations

from pykexec.errors import KexecError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import os


class VmcoreError(KexecError):
    """A dump cannot be read, or the kernel log in it is unusable; one line."""


def open_error(path: str | os.PathLike[str], err: OSError) -> VmcoreError:
    """The one-line error for a dump that cannot be opened."""
    if isinstance(err, IsADirectoryError):
        return VmcoreError(f"{path}: is a directory")
    if isinstance(err, FileNotFoundError):
        return VmcoreError(f"{path}: no such file")
    return VmcoreError(f"{path}: cannot open: {err.strerror}")
