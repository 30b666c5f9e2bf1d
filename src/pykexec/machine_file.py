"""``--machine FILE.json``: a machine described in a file (docs/machine-file.md), so that
a plan can be made for any machine without root, and the inverse for tests and doctor."""

from __future__ import annotations

import os

from pykexec.errors import InputError
from pykexec.machine import Machine, XenInfo
from pykexec.memory import MemoryMap, MemType, Range, Region

TYPE_CHECKING = False  # typing costs an import; this name is all type checkers need
if TYPE_CHECKING:
    from pykexec.crash import DumpSources


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
        with open(path) as f:
            text = f.read()
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
