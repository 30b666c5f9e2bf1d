"""A plan for people (--dry-run, -d): a readable table and memory map, or JSON."""

from __future__ import annotations

import json

from pykexec.machine import Machine
from pykexec.plan import BACKEND_KEXEC_FILE_LOAD, LoadPlan


def render_json(plan: LoadPlan) -> str:
    return json.dumps(plan.to_json(), indent=2)


def render_text(plan: LoadPlan, machine: Machine) -> str:
    lines = [f"image type: {plan.image_type}    backend: {plan.backend}"
             f"{'    (crash kernel)' if plan.crash else ''}"]
    if plan.entry is not None:
        via = f" -> kernel entry {plan.kernel_entry:#x}" if plan.kernel_entry is not None else ""
        if any(s.role == "purgatory" for s in plan.segments):
            lines.append(f"entry: {plan.entry:#x} (purgatory){via}")
        else:
            lines.append(f"parameters: {plan.entry:#x} (boot_params; Xen enters the kernel){via}")
    lines.append(f"command line: {plan.cmdline!r}")
    if plan.uki is not None:
        lines += _uki_lines(plan.uki)
    lines.append("")
    lines.append(f"{'role':<12} {'mem':<18} {'memsz':<11} {'bufsz':<11} sha256")
    for seg in plan.segment_docs():
        mem = seg["mem"] or "(kernel picks)"
        memsz = seg["memsz"] or "-"
        lines.append(f"{seg['role']:<12} {mem:<18} {memsz:<11} {seg['bufsz']:<11} {(seg['sha256'] or '')[:16]}")
    if plan.backend == BACKEND_KEXEC_FILE_LOAD:
        lines.append("(kexec_file_load: the kernel parses the image and chooses addresses itself)")
    lines.append("")
    lines.append(f"memory map of {machine.source}:")
    segs = plan.sorted_segments()
    for region in machine.memory:
        lines.append(f"  {region.range.start:#018x}-{region.range.last:#018x}  {region.type.label}")
        for s in segs:
            if region.range.overlaps(s.range):
                lines.append(f"      {s.mem:#018x}-{s.mem + s.memsz - 1:#018x}  {s.role}")
    if machine.crash_kernel is not None:
        lines.append(f"  crash kernel region: {machine.crash_kernel}")
    for note in plan.notes:
        lines.append(f"note: {note}")
    for warning in plan.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def _uki_lines(uki: dict[str, object]) -> list[str]:
    """What a UKI load uses: its OS, profile, command line source, sections, initrd parts."""
    profile = f"profile {uki['profile']}"
    if uki.get("profile_title"):
        profile += f" ({uki['profile_title']})"
    count = uki.get("profiles") or 0
    lines = [f"UKI: {uki.get('pretty_name') or '(no .osrel PRETTY_NAME)'}    {profile} of "
             f"{count if count else 'none (profile 0 implied)'}"
             f"{'    uname ' + str(uki['uname']) if uki.get('uname') else ''}",
             f"command line from: {uki['cmdline_from']}"]
    addons = uki.get("addons") or []
    if isinstance(addons, list) and addons:
        lines.append(f"addons: {', '.join(str(a) for a in addons)}")
    for title, key in (("UKI sections used", "sections"), ("initrd, in order", "initrd")):
        parts = uki.get(key)
        if not isinstance(parts, list) or not parts:
            continue
        lines.append(f"{title}:")
        for part in parts:
            lines.append(f"  {str(part['section']):<34} {str(part['from']):<14} {part['size']:>10}  "
                         f"{str(part['sha256'])[:16]}")
    return lines
