"""What a load is asked to do, in two steps of the one-way flow:

* :class:`KexecRequest` -- what a user (the command line, the kdump service, a Python
  caller) asks for: files by path and the options of kexec-tools' command line;
* :class:`LoadRequest` -- what an image loader receives once the core has read the
  files, probed the machine and composed the command line.
"""

from __future__ import annotations

import os
from collections import namedtuple

from pykexec.errors import UsageError
from pykexec.plan import BACKEND_KEXEC_LOAD

TYPE_CHECKING = False  # typing costs an import; this name is all type checkers need
if TYPE_CHECKING:
    from pykexec.machine import Machine

SYSCALLS = ("auto", "file", "load")
ADDRESS_MAX = (1 << 64) - 1


class KexecRequest(namedtuple("KexecRequest", ["kernel", "initrd", "append", "reuse_cmdline", "modules", "crash",
                                               "image_type", "mem_min", "mem_max", "syscall", "xen_crash_efi",
                                               "pass_memmap_cmdline", "purgatory_console", "uki_profile", "uki_addons"],
                              defaults=(None, None, False, (), False, None, 0, ADDRESS_MAX, "auto", False, False, 0,
                                        None, ()))):
    """A load as a user asks for it. ``syscall``: ``"auto"`` (kexec_file_load, falling
    back to kexec_load where allowed: kexec-tools' -a), ``"file"`` (-s) or ``"load"`` (-c);
    in a Xen dom0 the hypervisor loads every image. ``modules`` are ``"FILE ARGS"``
    strings as ``--module`` takes them. ``purgatory_console`` is the I/O port of the UART
    purgatory reports on (0: silent). ``uki_profile`` (None: the default, 0) and
    ``uki_addons`` (paths) are for Unified Kernel Images.

    (A named tuple, not a dataclass: importing dataclasses costs the command line
    several milliseconds.)"""

    __slots__ = ()
    kernel: str
    initrd: str | None
    append: str | None
    reuse_cmdline: bool
    modules: tuple[str, ...]
    crash: bool
    image_type: str | None
    mem_min: int
    mem_max: int
    syscall: str
    xen_crash_efi: bool
    pass_memmap_cmdline: bool
    purgatory_console: int
    uki_profile: int | None
    uki_addons: tuple[str, ...]

    def __new__(cls, *args: object, **kwargs: object) -> KexecRequest:
        self = super().__new__(cls, *args, **kwargs)
        if self.syscall not in SYSCALLS:
            raise UsageError(f"unknown syscall choice {self.syscall!r}; one of {', '.join(SYSCALLS)}")
        if self.mem_min > self.mem_max:
            raise UsageError(f"--mem-min {self.mem_min:#x} is above --mem-max {self.mem_max:#x}")
        if self.uki_profile is not None and self.uki_profile < 0:
            raise UsageError(f"--uki-profile {self.uki_profile}: profiles are numbered from 0")
        return self


class Module(namedtuple("Module", "path data cmdline")):
    """A multiboot module from ``--module="FILE ARGS"``: ``cmdline`` is the whole
    string, file name first, as boot loaders pass it (Xen skips the first word)."""

    __slots__ = ()
    path: str
    data: bytes
    cmdline: str


class LoadRequest:
    """Everything a loader needs, already read and checked by the caller. ``kernel``
    is decompressed already (see :func:`pykexec.images.decompress`)."""

    def __init__(self, kernel_path: str | os.PathLike[str], kernel: bytes, machine: Machine, *,
                 cmdline: str = "", initrd_path: str | os.PathLike[str] | None = None,
                 initrd: bytes | None = None, crash: bool = False, mem_min: int = 0,
                 mem_max: int = ADDRESS_MAX, backend: str = BACKEND_KEXEC_LOAD, purgatory_console: int = 0,
                 memmap_cmdline: bool = False, modules: list[Module] | None = None) -> None:
        if mem_min > mem_max:  # a library caller would otherwise get a ValueError from Range
            raise UsageError(f"--mem-min {mem_min:#x} is above --mem-max {mem_max:#x}")
        self.kernel_path = kernel_path
        self.kernel = kernel
        self.machine = machine
        self.cmdline = cmdline
        self.initrd_path = initrd_path
        self.initrd = initrd
        self.crash = crash
        self.mem_min = mem_min
        self.mem_max = mem_max
        # The backend chosen for this load: its name is the plan's.
        self.backend = backend
        # I/O port of the UART purgatory reports on (0: silent), set by -d.
        self.purgatory_console = purgatory_console
        # -p: describe the crash kernel's memory with memmap= options too.
        self.memmap_cmdline = memmap_cmdline
        self.modules = modules if modules is not None else []
