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
    return "\n".join(lines)
