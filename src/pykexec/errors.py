"""Typed errors. Every error pykexec raises on purpose derives from :class:`KexecError`;
the CLI prints ``str(err)`` as one line and exits non-zero, never a traceback."""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs an import; this name is all type checkers need
if TYPE_CHECKING:
    from collections.abc import Sequence

    from pykexec.plan import Segment


class KexecError(Exception):
    """Base class: a failure explained in one line."""

    exit_code = 1


class UsageError(KexecError):
    """Bad or contradictory command-line options."""

    exit_code = 2


class InputError(KexecError):
    """A file we were given cannot be read or parsed (image, initrd, machine file)."""


class ImageFormatError(InputError):
    """The kernel image is not of a type we can load, or its header is broken."""


class MachineError(KexecError):
    """The running system (or the --machine description) cannot be probed or is unusable."""


class PlacementError(KexecError):
    """No room for a segment under its constraints. Carries what was already placed."""

    def __init__(self, message: str, segments: Sequence["Segment"] = ()) -> None:
        super().__init__(message)
        self.segments = list(segments)


class PlanError(KexecError):
    """A finished plan breaks one of the kernel's (or Xen's) rules for segments."""

    def __init__(self, message: str, segments: Sequence["Segment"] = ()) -> None:
        super().__init__(message)
        self.segments = list(segments)


def report(err: KexecError, help_command: str = "") -> int:
    """Print ``err`` as pykexec's one stderr line and return its exit status.  A usage
    error points at ``help_command --help`` (still one line) when one is given."""
    import sys

    hint = f" (see {help_command} --help)" if help_command and isinstance(err, UsageError) else ""
    sys.stderr.write(f"pykexec: {err}{hint}\n")
    return err.exit_code


def read_input(path: str, what: str, error: type[KexecError] = InputError) -> bytes:
    """A whole input file, or ``error`` with one line naming it and what went wrong."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except IsADirectoryError:
        raise error(f"{what} {path} is a directory") from None
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror}") from None
    if not data:
        raise error(f"{what} {path} is empty")
    return data


class SyscallError(KexecError):
    """The kernel refused a kexec syscall; the message says why in user terms."""

    def __init__(self, message: str, errno: int, syscall: str) -> None:
        super().__init__(message)
        self.errno = errno
        self.syscall = syscall
