"""``pykexec vmcore info``: what a dump holds, without debug symbols: its notes, each
CPU's registers at the crash, the VMCOREINFO keys, and for Xen dumps the hypervisor's
crash information (version, ``xen_phys_start``, dom0's p2m root) and, when dom0's VMCOREINFO
was not recorded as a note (kexec-tools), the one found in dom0's memory."""

from __future__ import annotations

import ctypes

from pykexec.layouts import elf as E

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pykexec.vmcore.dump_memory import DumpMemory
    from pykexec.vmcore.vmcoreinfo import VmcoreInfo

EM_NAMES = {E.EM_X86_64: "x86_64", E.EM_386: "i386", E.EM_AARCH64: "aarch64"}


def cpu_states(core: DumpMemory) -> list[dict[str, object]]:
    """One entry per "CORE" NT_PRSTATUS note, in note order (= CPU order)."""
    cpus: list[dict[str, object]] = []
    size = ctypes.sizeof(E.Elf64_Prstatus_x86_64)
    for note in core.notes:
        if note.name != b"CORE" or note.type != E.NT_PRSTATUS:
            continue
        entry: dict[str, object] = {"cpu": len(cpus)}
        if core.machine == E.EM_X86_64 and len(note.desc) >= size:
            st = E.Elf64_Prstatus_x86_64.from_buffer_copy(note.desc[:size])
            entry["pid"] = st.pr_pid
            entry["registers"] = {name: f"{value:#x}" for name, value in zip(E.X86_64_REGISTERS, st.pr_reg)}
        else:
            entry["raw_size"] = len(note.desc)
        cpus.append(entry)
    return cpus


def xen_info(core: DumpMemory) -> dict[str, object] | None:
    """The hypervisor's crash information, for dumps of a Xen machine: Xen's crash-info
    note (version, xen_phys_start, dom0's p2m root), pykexec's own xen_phys_start note
    (for Xens whose crash info lacks it), and VMCOREINFO_XEN."""
    from pykexec.layouts import xen as X

    out: dict[str, object] = {}
    for note in core.notes:
        if note.name == b"Xen" and note.type == X.XEN_ELFNOTE_CRASH_INFO and "version" not in out:
            try:
                ci = X.parse_crash_xen_info(note.desc)
            except ValueError:
                continue
            out["version"] = f"{ci.major}.{ci.minor}"
            out["tainted"] = ci.tainted
            if ci.xen_phys_start is not None:
                out["xen_phys_start"] = f"{ci.xen_phys_start:#x}"
                out["xen_phys_start_from"] = "xen crash info"
            if ci.dom0_p2m_root is not None:
                out["dom0_p2m_root"] = f"{ci.dom0_p2m_root:#x}"
        elif note.name == E.PYKEXEC_NOTE_NAME and note.type == E.NT_PYKEXEC_XEN_PHYS_START \
                and len(note.desc) >= 8:
            value = int.from_bytes(note.desc[:8], "little")
            out["xen_phys_start_at_load"] = f"{value:#x}"
            out.setdefault("xen_phys_start", f"{value:#x}")
            out.setdefault("xen_phys_start_from", "pykexec note (load time)")
        elif note.name == b"VMCOREINFO_XEN" and note.type == E.NT_VMCOREINFO:
            from pykexec.vmcore.vmcoreinfo import VmcoreInfo

            out["vmcoreinfo"] = dict(VmcoreInfo(note.desc).entries)
    return out or None


def _dom0_vmcoreinfo_in_memory(core: DumpMemory) -> VmcoreInfo | None:
    """Dom0's VMCOREINFO of a Xen dump that has no note of it (a crash kernel loaded by
    kexec-tools), found in dom0's memory; None if it cannot be found."""
    from pykexec.vmcore.errors import VmcoreError
    from pykexec.vmcore.xen import Dom0Memory, is_xen_dump

    if not is_xen_dump(core.notes):
        return None
    try:
        return Dom0Memory(core).vmcoreinfo
    except VmcoreError:
        return None


def describe(core: DumpMemory) -> dict[str, object]:
    """The whole description, as ``--json`` prints it."""
    info: dict[str, object] = {
        "file": core.path,
        "format": core.format,
        "machine": EM_NAMES.get(core.machine, str(core.machine)),
        "loads": len(core.loads),
        "memory_bytes": core.memory_bytes,
        "notes": [{"name": n.name.decode("ascii", "replace"), "type": f"{n.type:#x}", "size": len(n.desc)}
                  for n in core.notes],
        "cpus": cpu_states(core),
    }
    vmcoreinfo = core.vmcoreinfo
    xen = xen_info(core)
    if vmcoreinfo is None and xen is not None:
        vmcoreinfo = _dom0_vmcoreinfo_in_memory(core)
        if vmcoreinfo is not None:
            xen["dom0_vmcoreinfo_from"] = "dom0 memory"
    if vmcoreinfo is not None:
        info["vmcoreinfo"] = dict(vmcoreinfo.entries)
        info["osrelease"] = vmcoreinfo.osrelease
        info["crashtime"] = vmcoreinfo.crashtime
    if xen is not None:
        info["xen"] = xen
    return info


def render_text(info: dict[str, object]) -> str:
    lines = [f"{info['file']}: {info['format']} {info['machine']} dump, {info['loads']} PT_LOADs, "
             f"{int(info['memory_bytes']) >> 20} MiB of memory"]  # type: ignore[call-overload]
    if info.get("osrelease"):
        lines.append(f"kernel: {info['osrelease']}, crash time {info.get('crashtime')}")
    notes = info["notes"]
    assert isinstance(notes, list)
    lines.append(f"notes ({len(notes)}):")
    for n in notes:
        lines.append(f"  {n['name']:<16} type {n['type']:<10} {n['size']} bytes")
    cpus = info["cpus"]
    assert isinstance(cpus, list)
    for cpu in cpus:
        regs = cpu.get("registers", {})
        lines.append(f"cpu {cpu['cpu']}: pid {cpu.get('pid', '?')} rip {regs.get('rip', '?')} "
                     f"rsp {regs.get('rsp', '?')} rbp {regs.get('rbp', '?')}")
    xen = info.get("xen")
    if isinstance(xen, dict):
        lines.append("xen: " + ", ".join(f"{k} {v}" for k, v in xen.items() if k != "vmcoreinfo"))
    vmcoreinfo = info.get("vmcoreinfo")
    if isinstance(vmcoreinfo, dict):
        lines.append(f"vmcoreinfo: {len(vmcoreinfo)} keys")
    return "\n".join(lines) + "\n"
