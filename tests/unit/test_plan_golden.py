"""Dry-run plans, text and JSON, byte for byte as recorded: a matrix of synthetic images
(bzImage, ELF vmlinux, a Xen-like Multiboot image) x machines (plain, crash region with
dump sources, Xen dom0, Xen dom0 under lockdown) x actions and options, errors included.

The recording (tests/unit/golden/plans.json) was made by the code before the library
core was split out of the CLI (commit 3445990), so this proves the split changed no
plan. When a plan is meant to change, re-record with PYKEXEC_REGEN_GOLDEN=1 and review
the diff of the JSON file.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
from pathlib import Path

from support.multiboot_synth import xen_like
from support.synth_images import MACHINE_1G, make_bzimage, make_elf_vmlinux

GOLDEN = Path(__file__).parent / "golden" / "plans.json"

MACHINES: dict[str, dict[str, object]] = {
    "plain": MACHINE_1G,
    "crash": {**MACHINE_1G, "crash_kernel": {"start": "0x20000000", "end": "0x2fffffff"},
              "dump": {"cpu_notes": [{"start": "0x3f000000", "end": "0x3f0003ff"},
                                     {"start": "0x3f001000", "end": "0x3f0013ff"}],
                       "vmcoreinfo": {"start": "0x3e000000", "end": "0x3e000fff"},
                       "kernel_image": {"vaddr": "0xffffffff81000000", "paddr": "0x1000000", "size": "0x2000000"},
                       "page_offset": "0xffff888000000000", "kernel_release": "6.1.0"}},
    "xen": {"memory": [{"start": "0x0", "end": "0x9fbff", "type": "System RAM"},
                       {"start": "0x9fc00", "end": "0x9ffff", "type": "Reserved"},
                       {"start": "0x100000", "end": "0x7ffdffff", "type": "System RAM"}],
            "crash_kernel": {"start": "0x40000000", "end": "0x4fffffff"}, "xen": {"version": "4.17", "cpus": 2},
            "cmdline": "placeholder=1 console=hvc0"},
}
MACHINES["xen-lockdown"] = {**MACHINES["xen"], "lockdown": "integrity"}

LINUX_OPTIONS = [[], ["-c"], ["-s"], ["--reuse-cmdline", "--append", "console=ttyS0 quiet"],
                 ["-c", "--initrd", "initrd", "--append", "root=/dev/vda"], ["-c", "--mem-max", "0x2fffffff"]]
XEN_OPTIONS = [["--command-line", "console=com1 dom0_mem=1G"],
               ["--module", "mod1 root=/dev/vda", "--module", "initrd"],
               ["-t", "multiboot-x86", "--module", "mod1"]]


def write_inputs(workdir: Path) -> None:
    """Every input, named relative to ``workdir`` so that the outputs do not depend on it."""
    (workdir / "bzImage").write_bytes(make_bzimage())
    (workdir / "vmlinux").write_bytes(make_elf_vmlinux([(0x1000000, b"\x90" * 0x3000, 0x5000)], 0x1000000))
    (workdir / "xen.gz").write_bytes(gzip.compress(xen_like(), mtime=0))
    (workdir / "initrd").write_bytes(b"initrd-bytes" * 1000)
    (workdir / "mod1").write_bytes(b"module-one" * 500)
    for name, machine in MACHINES.items():
        (workdir / f"{name}.json").write_text(json.dumps(machine))


def cases() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for kernel in ("bzImage", "vmlinux", "xen.gz"):
        options = XEN_OPTIONS if kernel == "xen.gz" else LINUX_OPTIONS
        for machine in MACHINES:
            for action in ("-l", "-p"):
                extra = [["--pass-memmap-cmdline", "-c"]] if action == "-p" and machine == "crash" else []
                extra += [["--xen-crash-efi"]] if machine.startswith("xen") and kernel == "bzImage" else []
                for opts in options + extra:
                    for fmt in ([], ["--json"]):
                        name = " ".join([kernel, machine, action, *opts, *fmt])
                        out[name] = ["--dry-run", "--machine", f"{machine}.json", action, kernel, *opts, *fmt]
    return out


def run_matrix(workdir: Path) -> dict[str, str]:
    """Each case's exit status, stdout and stderr through the real command line."""
    from pykexec.cli import main

    write_inputs(workdir)
    results = {}
    old = os.getcwd()
    os.chdir(workdir)
    try:
        for name, argv in cases().items():
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = main(argv)
            results[name] = f"rc={rc}\n{out.getvalue()}--stderr--\n{err.getvalue()}"
    finally:
        os.chdir(old)
    return results


def test_dry_run_plans_are_as_recorded(tmp_path):
    results = run_matrix(tmp_path)
    if os.environ.get("PYKEXEC_REGEN_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(results, indent=0, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert sorted(results) == sorted(golden)
    changed = [name for name in golden if results[name] != golden[name]]
    assert not changed, f"{len(changed)} plans differ, first {changed[0]!r}:\n{results[changed[0]]}"
    assert sum(v.startswith("rc=0") for v in golden.values()) > len(golden) // 2  # mostly plans, not errors
