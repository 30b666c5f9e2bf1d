"""What every dump reader offers the kernel-log, info and Xen code: :class:`DumpMemory`.

Satisfied by :class:`~pykexec.vmcore.elfcore.ElfCore`,
:class:`~pykexec.vmcore.kdump.KdumpCore` and dom0's view of a Xen dump
(:class:`~pykexec.vmcore.xen.Dom0Memory`).  Import it under ``TYPE_CHECKING``
only: ``typing`` costs a good part of a ``vmcore dmesg`` run.
"""

from __future__ import annotations

from typing import Protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from pykexec.layouts.elf import Note
    from pykexec.vmcore.elfcore import Buffer, Load
    from pykexec.vmcore.vmcoreinfo import VmcoreInfo


class DumpMemory(Protocol):
    """A dump's notes and VMCOREINFO, and its memory by kernel virtual or physical address.

    Reads raise :class:`~pykexec.vmcore.errors.VmcoreError` (one line) for memory
    the dump does not hold.
    """

    @property
    def path(self) -> str: ...

    @property
    def format(self) -> str:
        """``elf64`` or ``kdump-compressed``."""
        ...

    @property
    def machine(self) -> int:
        """The ELF ``e_machine`` of the dumped kernel (0 if unknown)."""
        ...

    @property
    def notes(self) -> list[Note]: ...

    @property
    def vmcoreinfo(self) -> VmcoreInfo | None: ...

    @property
    def loads(self) -> Sequence[Load]:
        """The PT_LOADs (none in a kdump-compressed file)."""
        ...

    @property
    def memory_bytes(self) -> int:
        """How much memory the dump holds."""
        ...

    def require_vmcoreinfo(self) -> VmcoreInfo:
        """VMCOREINFO, or :class:`~pykexec.vmcore.errors.VmcoreError` if the dump has none."""
        ...

    def read(self, addr: int, size: int, *, physical: bool = False) -> Buffer:
        """``size`` bytes at kernel virtual (or ``physical``) address ``addr``."""
        ...

    def u64(self, addr: int, *, physical: bool = False) -> int: ...

    def u32(self, addr: int, *, physical: bool = False) -> int: ...
