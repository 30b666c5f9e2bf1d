"""Probe the running system for the :class:`~pykexec.machine.Machine` a plan is made for:
/proc/iomem or the firmware's memory map, the crash region, the command line, lockdown,
EFI and ACPI; in a Xen PV dom0, the machine as Xen describes it."""

from __future__ import annotations

import ctypes
import os
import re

from pykexec.errors import InputError, MachineError
from pykexec.machine import EfiFirmware, EfiRuntimeRange, Machine, XenInfo
from pykexec.memory import MemoryMap, MemType, Range, Region

TYPE_CHECKING = False  # typing costs an import; this name is all type checkers need
if TYPE_CHECKING:
    from pykexec.backends.xen.kexec_op import XenKexec
    from pykexec.crash import DumpSources


_IOMEM_LINE = re.compile(r"^(\s*)([0-9a-fA-F]+)-([0-9a-fA-F]+) : (.*)$")


def parse_iomem(text: str) -> tuple[MemoryMap, list[tuple[int, Range, str]]]:
    """Parse /proc/iomem. Returns the memory map built from the top-level lines, and every
    line as (depth, range, name) so callers can find nested entries such as "Crash kernel"."""
    regions: list[Region] = []
    entries: list[tuple[int, Range, str]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _IOMEM_LINE.match(line)
        if not m:
            raise InputError(f"/proc/iomem line {lineno} is not 'start-end : name': {line.strip()[:60]!r}")
        indent, start, last, name = m.groups()
        if int(last, 16) < int(start, 16):
            raise InputError(f"/proc/iomem line {lineno} ends below its start: {line.strip()[:60]!r}")
        rng = Range.inclusive(int(start, 16), int(last, 16))
        depth = len(indent) // 2
        entries.append((depth, rng, name))
        if depth == 0:
            mtype = MemType.from_name(name)
            if mtype is not None:
                regions.append(Region(rng, mtype))
    if entries and all(r.start == 0 and r.end == 1 for _, r, _ in entries):
        raise MachineError("/proc/iomem shows only zero addresses: it must be read as root")
    try:
        return MemoryMap(regions), entries
    except ValueError as err:  # top-level lines that overlap
        raise InputError(f"/proc/iomem: {err}") from None


def read_firmware_memmap(root: str | os.PathLike[str] = "/sys/firmware/memmap") -> MemoryMap | None:
    """The firmware's (e820) map as exported by CONFIG_FIRMWARE_MEMMAP, or None."""
    try:
        entries = os.listdir(root)
    except OSError:
        return None
    regions = []
    for entry in entries:
        d = os.path.join(root, entry)
        try:
            start = int(_read_or_fail(os.path.join(d, "start")), 16)
            last = int(_read_or_fail(os.path.join(d, "end")), 16)
            name = _read_or_fail(os.path.join(d, "type")).strip()
            rng = Range.inclusive(start, last)  # ValueError: end below start
        except (OSError, ValueError):  # UnicodeDecodeError is a ValueError too
            continue
        regions.append(Region(rng, MemType.from_name(name) or MemType.RESERVED))
    try:
        return MemoryMap(regions) if regions else None
    except ValueError:  # overlapping entries: fall back to /proc/iomem, as when it is absent
        return None


def _read_or_fail(path: str | os.PathLike[str]) -> str:
    with open(path) as f:
        return f.read()


def _read(path: str | os.PathLike[str]) -> str | None:
    try:
        return _read_or_fail(path)
    except (OSError, UnicodeDecodeError):
        return None


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def parse_lockdown(text: str | None) -> str:
    """/sys/kernel/security/lockdown reads like 'none [integrity] confidentiality'."""
    if not text:
        return "none"
    m = re.search(r"\[(\w+)\]", text)
    return m.group(1) if m else "none"


def probe() -> Machine:
    """Describe the running machine from /proc and /sys, or from Xen in a PV dom0 (whose
    /proc/iomem shows pseudo-physical memory, neither the machine's RAM nor the crash
    area)."""
    if (_read("/sys/hypervisor/type") or "").strip() == "xen":
        from pykexec.backends.xen.detect import xen_pv_dom0

        if xen_pv_dom0():
            return probe_xen_dom0()
    iomem = _read("/proc/iomem")
    if iomem is None:
        raise MachineError("cannot read /proc/iomem: is /proc mounted?")
    iomem_map, entries = parse_iomem(iomem)
    memory = read_firmware_memmap() or iomem_map
    if not memory.ram():
        raise MachineError("no System RAM found in /sys/firmware/memmap or /proc/iomem")
    crash = [r for _, r, name in entries if name == "Crash kernel"]
    boot_params = _read_bytes("/sys/kernel/boot_params/data")
    crash_kernel = max(crash, default=None)
    return Machine(
        memory=memory,
        crash_kernel=crash_kernel,
        cmdline=(_read("/proc/cmdline") or "").strip(),
        lockdown=parse_lockdown(_read("/sys/kernel/security/lockdown")),
        acpi_rsdp=_find_rsdp(boot_params),
        running_boot_params=boot_params,
        efi=read_efi(boot_params),
        dump=_probe_dump() if crash_kernel else None,
        secure_boot=secure_boot_enabled(boot_params),
    )


def secure_boot_enabled(boot_params: bytes | None) -> bool:
    """The firmware's Secure Boot state as the running kernel recorded it in boot_params
    (0x1ec: 3 = enabled), else the SecureBoot EFI variable."""
    from pykexec.layouts.boot_params import BootParams

    off = BootParams.secure_boot.offset
    if boot_params is not None and len(boot_params) > off and boot_params[off] in (2, 3):
        return boot_params[off] == 3
    var = _read_bytes("/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c")
    return var is not None and var[-1:] == b"\x01"


def probe_xen_dom0() -> Machine:
    """The machine as Xen describes it to its PV dom0 through kexec_op and memory_op."""
    from pykexec.backends.xen.kexec_op import XenKexec
    from pykexec.crash import DumpSources

    with XenKexec.open() as x:
        memory = MemoryMap(Region(Range.sized(e.start, e.size), MemType.from_e820(e.type))
                           for e in x.machine_memory_map() if e.size)
        area = x.crash_area()
        crash_kernel = area.range() if area.size else None
        image = x.xen_image_range()
        major, minor, extra = x.xen_version()
        xen_cmdline = _xen_commandline(x)
        notes = x.cpu_notes() if crash_kernel else []
        dump = None
        if crash_kernel:
            vmcoreinfo = x.vmcoreinfo_range()
            dump = DumpSources(cpu_notes=tuple(Range.sized(n.start, n.size) for n in notes if n.size),
                               vmcoreinfo=vmcoreinfo.range() if vmcoreinfo.size else None,
                               kernel_release=f"xen-{major}.{minor}{extra}",
                               extra_notes=_dom0_vmcoreinfo(), xen_phys_start=x.xen_phys_start(),
                               xen_symbols=_xen_symbols())
    boot_params = _read_bytes("/sys/kernel/boot_params/data")
    return Machine(
        memory=memory,
        crash_kernel=crash_kernel,
        cmdline=(_read("/proc/cmdline") or "").strip(),
        lockdown=parse_lockdown(_read("/sys/kernel/security/lockdown")),
        xen=XenInfo(version=f"{major}.{minor}{extra}", xen_start=image.start, xen_end=image.start + image.size - 1,
                    cpus=len(notes) or None, cmdline=xen_cmdline),
        dump=dump,
        source="this machine (Xen dom0)",
        secure_boot=secure_boot_enabled(boot_params),
    )


def _xen_commandline(x: XenKexec) -> str | None:
    """Xen's command line (which console a kernel it kexecs should use); None if refused."""
    from pykexec.backends.xen.kexec_op import HypercallError

    try:
        return x.commandline()
    except HypercallError:
        return None


def _xen_symbols() -> bytes | None:
    """Xen's console-ring symbols from dom0's /proc/xen/xensyms, for the dump."""
    from pykexec.xen_symbols import xensyms_note_desc

    return xensyms_note_desc()


def _dom0_vmcoreinfo() -> tuple[Range, ...]:
    """Dom0's own VMCOREINFO note (a PV kernel reports its machine address), so that the
    dump can later yield dom0's log too."""
    try:
        addr_s, size_s = (_read("/sys/kernel/vmcoreinfo") or "").split()[:2]
        return (Range.sized(int(addr_s, 16), int(size_s, 16)),)
    except ValueError:
        return ()


def _probe_dump() -> "DumpSources":
    from pykexec.crash import probe_dump_sources  # only crash loads need it

    return probe_dump_sources()


def read_efi(boot_params: bytes | None, root: str | os.PathLike[str] = "/sys/firmware/efi") -> EfiFirmware | None:
    """EFI hand-over data, or None when not booted by EFI or when a piece is missing
    (then the next kernel boots without EFI runtime services, as with noefi)."""
    from pykexec.layouts.boot_params import BootParams, EfiInfo

    start = BootParams.efi_info.offset
    end = start + ctypes.sizeof(EfiInfo)
    if boot_params is None or len(boot_params) < end or not os.path.isdir(root):
        return None
    efi_info = boot_params[start:end]
    if not any(efi_info):
        return None

    def hexfile(*names: str) -> int:
        return int(_read_or_fail(os.path.join(root, *names)).strip(), 16)

    try:
        fw_vendor, runtime, config_table = hexfile("fw_vendor"), hexfile("runtime"), hexfile("config_table")
        systab = _read_or_fail(os.path.join(root, "systab"))
        m = re.search(r"^SMBIOS=(0x[0-9a-fA-F]+)", systab, re.M)
        smbios = int(m.group(1), 16) if m else 0
        ranges = []
        entries = sorted(os.listdir(os.path.join(root, "runtime-map")), key=lambda n: int(n) if n.isdigit() else -1)
        for entry in entries:
            ranges.append(EfiRuntimeRange(*(hexfile("runtime-map", entry, f) for f in
                                            ("type", "phys_addr", "virt_addr", "num_pages", "attribute"))))
    except (OSError, ValueError):
        return None
    return EfiFirmware(efi_info, fw_vendor, runtime, config_table, smbios, tuple(ranges))


def _find_rsdp(boot_params: bytes | None) -> int | None:
    from pykexec.layouts.boot_params import BootParams

    off = BootParams.acpi_rsdp_addr.offset
    if boot_params and len(boot_params) >= off + 8:
        addr = int.from_bytes(boot_params[off:off + 8], "little")
        if addr:
            return addr
    systab = _read("/sys/firmware/efi/systab")
    if systab:
        for key in ("ACPI20", "ACPI"):
            m = re.search(rf"^{key}=(0x[0-9a-fA-F]+)", systab, re.M)
            if m:
                return int(m.group(1), 16)
    return None
