"""What we need to know about the machine: memory map, crash region, command line,
lockdown, firmware tables. :mod:`pykexec.probe` fills it in from the running system,
:mod:`pykexec.machine_file` from a ``--machine FILE.json`` description (so a plan can be
made for any machine without root).
"""

from __future__ import annotations

from collections import namedtuple

TYPE_CHECKING = False  # typing costs an import; this name is all type checkers need

if TYPE_CHECKING:
    from pykexec.crash import DumpSources
    from pykexec.memory import MemoryMap, Range


class XenInfo(namedtuple("XenInfo", "version xen_start xen_end cpus cmdline",
                         defaults=(None, None, None, None, None))):
    """The hypervisor we run under (filled in for Xen dom0 machines); ``cmdline`` is Xen's
    own command line (None: unknown)."""

    __slots__ = ()
    version: str | None
    xen_start: int | None
    xen_end: int | None
    cpus: int | None
    cmdline: str | None


class EfiRuntimeRange(namedtuple("EfiRuntimeRange", "type phys_addr virt_addr num_pages attribute")):
    """One entry of /sys/firmware/efi/runtime-map: a region EFI runtime services use,
    with the virtual address the running kernel mapped it at."""

    __slots__ = ()


class EfiFirmware(namedtuple("EfiFirmware", "efi_info fw_vendor runtime config_table smbios runtime_map")):
    """What a kexec'd kernel needs to keep using EFI runtime services. ``efi_info`` is
    the running boot_params' 32 bytes; ``runtime_map`` a tuple of EfiRuntimeRange."""

    __slots__ = ()


class Machine(namedtuple("Machine", "memory crash_kernel cmdline lockdown xen acpi_rsdp running_boot_params "
                                    "efi dump source secure_boot",
                         defaults=(None, "", "none", None, None, None, None, None, "this machine", False))):
    """The machine a plan is for.

    memory: MemoryMap; crash_kernel: Range | None; cmdline: str (as /proc/cmdline);
    lockdown: "none" | "integrity" | "confidentiality"; xen: XenInfo | None;
    acpi_rsdp: int | None; running_boot_params: the running kernel's zero page, the
    template for video information we pass on; efi: EfiFirmware | None; dump:
    crash.DumpSources | None, what a crash kernel's elfcorehdr points at; source: a
    name for messages ("this machine", or the --machine file); secure_boot: booted
    with UEFI Secure Boot enabled.
    """

    __slots__ = ()
    memory: MemoryMap
    crash_kernel: Range | None
    cmdline: str
    lockdown: str
    xen: XenInfo | None
    acpi_rsdp: int | None
    running_boot_params: bytes | None
    efi: EfiFirmware | None
    dump: "DumpSources | None"
    source: str
    secure_boot: bool
