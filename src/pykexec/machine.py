"""What we need to know about the machine: memory map, crash region, command line,
lockdown, firmware tables. Probed from the running system, or read from a
``--machine FILE.json`` description so a plan can be made for any machine without root.
"""

from __future__ import annotations

import ctypes
import os
import re
from collections import namedtuple
TYPE_CHECKING = False  # typing costs an import; this name is all type checkers need

from pykexec.errors import InputError, MachineError
from pykexec.memory import MemoryMap, MemType, Range, Region


if TYPE_CHECKING:
    from pykexec.crash import DumpSources


class XenInfo(namedtuple("XenInfo", "version xen_start xen_end cpus", defaults=(None,) * 4)):
    """The hypervisor we run under (filled in for Xen dom0 machines)."""

    __slots__ = ()
    version: str | None
    xen_start: int | None
    xen_end: int | None
    cpus: int | None


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


# --- /proc/iomem and /sys/firmware/memmap -------------------------------------------

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
        from pykexec.backends import xen

        if xen.xen_pv_dom0():
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
    return bool(var) and var[-1] == 1


def probe_xen_dom0() -> Machine:
    """The machine as Xen describes it to its PV dom0 through kexec_op and memory_op."""
    from pykexec.backends.xen import XenKexec
    from pykexec.crash import DumpSources

    with XenKexec.open() as x:
        memory = MemoryMap(Region(Range.sized(e.start, e.size), MemType.from_e820(e.type))
                           for e in x.machine_memory_map() if e.size)
        area = x.crash_area()
        crash_kernel = area.range() if area.size else None
        image = x.xen_image_range()
        major, minor, extra = x.xen_version()
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
                    cpus=len(notes) or None),
        dump=dump,
        source="this machine (Xen dom0)",
        secure_boot=secure_boot_enabled(boot_params),
    )


def _xen_symbols() -> bytes | None:
    """Xen's console-ring symbols from dom0's /proc/xen/xensyms, for the dump."""
    from pykexec.vmcore.xen import xensyms_note_desc

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


# --- --machine FILE.json ---------------------------------------------------------------

def _addr(obj: object, what: str) -> int:
    if isinstance(obj, bool):
        raise InputError(f"{what}: expected an address, got {obj!r}")
    if isinstance(obj, int):
        value = obj
    elif isinstance(obj, str):
        try:
            value = int(obj, 0)
        except ValueError:
            raise InputError(f"{what}: {obj!r} is not a number") from None
    else:
        raise InputError(f"{what}: expected an address, got {type(obj).__name__}")
    if not 0 <= value < 1 << 64:
        raise InputError(f"{what}: {obj!r} is outside the 64-bit address space")
    return value


def _range(obj: object, what: str) -> Range:
    if not isinstance(obj, dict) or "start" not in obj or "end" not in obj:
        raise InputError(f"{what}: expected {{\"start\": ..., \"end\": ...}}")
    start, last = _addr(obj["start"], f"{what}.start"), _addr(obj["end"], f"{what}.end")
    if last < start:
        raise InputError(f"{what}: end {last:#x} is below start {start:#x}")
    return Range.inclusive(start, last)


def _names(keys: set[str]) -> str:
    """Keys for a one-line message: as written, or quoted when they hold newlines and the like."""
    return ", ".join(k if k.isprintable() else repr(k) for k in sorted(keys))


def from_dict(data: object, source: str = "--machine") -> Machine:
    """Build a Machine from the documented JSON description (see docs/machine-file.md)."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: the top level must be a JSON object")
    unknown = set(data) - {"memory", "crash_kernel", "xen", "cmdline", "lockdown", "acpi_rsdp", "dump",
                           "secure_boot"}
    if unknown:
        raise InputError(f"{source}: unknown key(s) {_names(unknown)}")
    mem = data.get("memory")
    if not isinstance(mem, list) or not mem:
        raise InputError(f"{source}: \"memory\" must be a non-empty list of {{start, end, type}}")
    regions = []
    for i, entry in enumerate(mem):
        rng = _range(entry, f"{source}: memory[{i}]")
        name = entry.get("type", "System RAM")
        mtype = MemType.from_name(name) if isinstance(name, str) else None
        if mtype is None:
            raise InputError(f"{source}: memory[{i}].type {name!r} is not a memory type "
                             f"(one of: {', '.join(t.label for t in MemType)})")
        regions.append(Region(rng, mtype))
    try:
        memory = MemoryMap(regions)
    except ValueError as err:
        raise InputError(f"{source}: {err}") from None
    if not memory.ram():
        raise InputError(f"{source}: the memory map has no System RAM")
    crash = _range(data["crash_kernel"], f"{source}: crash_kernel") if data.get("crash_kernel") else None
    if crash is not None and not memory.is_ram(crash):
        raise InputError(f"{source}: crash_kernel {crash} is not inside System RAM")
    xen = None
    if data.get("xen") is not None:
        x = data["xen"]
        if not isinstance(x, dict):
            raise InputError(f"{source}: \"xen\" must be an object")
        cpus = x.get("cpus")
        if cpus is not None and (not isinstance(cpus, int) or isinstance(cpus, bool) or cpus < 1):
            raise InputError(f"{source}: xen.cpus must be a positive integer")
        xen = XenInfo(
            version=str(x["version"]) if x.get("version") is not None else None,
            xen_start=_addr(x["xen_start"], f"{source}: xen.xen_start") if "xen_start" in x else None,
            xen_end=_addr(x["xen_end"], f"{source}: xen.xen_end") if "xen_end" in x else None,
            cpus=cpus,
        )
    cmdline = data.get("cmdline", "")
    if not isinstance(cmdline, str):
        raise InputError(f"{source}: cmdline must be a string")
    lockdown = data.get("lockdown", "none")
    if isinstance(lockdown, bool):
        lockdown = "integrity" if lockdown else "none"
    if lockdown not in ("none", "integrity", "confidentiality"):
        raise InputError(f"{source}: lockdown must be none, integrity, confidentiality, true or false")
    rsdp = _addr(data["acpi_rsdp"], f"{source}: acpi_rsdp") if data.get("acpi_rsdp") is not None else None
    dump = _dump_sources(data["dump"], source) if data.get("dump") is not None else None
    secure_boot = data.get("secure_boot", False)
    if not isinstance(secure_boot, bool):
        raise InputError(f"{source}: secure_boot must be true or false")
    return Machine(memory=memory, crash_kernel=crash, cmdline=cmdline.strip(), lockdown=lockdown,
                   xen=xen, acpi_rsdp=rsdp, dump=dump, source=source, secure_boot=secure_boot)


def _dump_sources(d: object, source: str) -> "DumpSources":
    from pykexec.crash import DumpSources, KernelImage

    if not isinstance(d, dict):
        raise InputError(f"{source}: \"dump\" must be an object")
    unknown = set(d) - {"cpu_notes", "vmcoreinfo", "kernel_image", "page_offset", "kernel_release"}
    if unknown:
        raise InputError(f"{source}: unknown key(s) in dump: {_names(unknown)}")
    notes = d.get("cpu_notes", [])
    if not isinstance(notes, list):
        raise InputError(f"{source}: dump.cpu_notes must be a list of {{start, end}}")
    image = None
    if d.get("kernel_image") is not None:
        k = d["kernel_image"]
        if not isinstance(k, dict) or not {"vaddr", "paddr", "size"} <= set(k):
            raise InputError(f"{source}: dump.kernel_image needs vaddr, paddr and size")
        image = KernelImage(*(_addr(k[f], f"{source}: dump.kernel_image.{f}") for f in ("vaddr", "paddr", "size")))
    release = d.get("kernel_release")
    if release is not None and not isinstance(release, str):
        raise InputError(f"{source}: dump.kernel_release must be a string")
    return DumpSources(
        cpu_notes=tuple(_range(n, f"{source}: dump.cpu_notes[{i}]") for i, n in enumerate(notes)),
        vmcoreinfo=_range(d["vmcoreinfo"], f"{source}: dump.vmcoreinfo") if d.get("vmcoreinfo") else None,
        kernel_image=image,
        page_offset=_addr(d["page_offset"], f"{source}: dump.page_offset") if "page_offset" in d
        else DumpSources().page_offset,
        kernel_release=release,
    )


def load(path: str | os.PathLike[str]) -> Machine:
    try:
        text = _read_or_fail(path)
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a machine JSON file") from None
    except OSError as err:
        raise InputError(f"cannot read machine file {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file") from None
    import json  # only --machine needs it

    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    return from_dict(data, source=str(path))


def to_dict(machine: Machine) -> dict[str, object]:
    """The inverse of :func:`from_dict` (for `--machine` files written by tests or doctor)."""
    out: dict[str, object] = {
        "memory": [{"start": f"{r.range.start:#x}", "end": f"{r.range.last:#x}", "type": r.type.label}
                   for r in machine.memory],
        "cmdline": machine.cmdline,
        "lockdown": machine.lockdown,
    }
    if machine.crash_kernel:
        out["crash_kernel"] = {"start": f"{machine.crash_kernel.start:#x}", "end": f"{machine.crash_kernel.last:#x}"}
    if machine.acpi_rsdp is not None:
        out["acpi_rsdp"] = f"{machine.acpi_rsdp:#x}"
    return out
