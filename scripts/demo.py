"""The built-in demo: pykexec in a QEMU guest (Debian 6.1 kernel, TCG).

1. pykexec -l with an initrd and a command line (kexec_load through pykexec's own
   purgatory, plan printed), then pykexec -e: the second kernel reports its command line.
2. A guest booted with crashkernel=256M loads a crash kernel with pykexec -p, panics,
   and the crash kernel finds /proc/vmcore.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "vm"))

from testbed import Assets, run_guest_script  # noqa: E402

KEXEC_CMDLINE = "console=ttyS0 panic=-1 demo=pykexec-was-here"


def show(run, markers: tuple[str, ...]) -> None:
    for line in run.log.splitlines():
        if line.startswith(markers):
            print("  guest| " + line)


def main() -> int:
    assets = Assets()
    assets.pykexec_segment()
    print("== 1. kexec: pykexec -c -l, then pykexec -e (first boot + second boot, ~10 s)")
    run = run_guest_script(
        f"pykexec --dry-run -c -l /boot/vmlinuz --initrd /boot/second.cpio.gz --append '{KEXEC_CMDLINE}'\n"
        f"pykexec -c -l /boot/vmlinuz --initrd /boot/second.cpio.gz --append '{KEXEC_CMDLINE}'\n"
        "pykexec -e\n", assets)
    show(run, ("role", "initrd", "kernel", "purgatory", "boot_params", "cmdline", "entry", "PYKEXEC-SECOND"))
    _, cmdline = run.second_kernel()
    ok1 = cmdline == KEXEC_CMDLINE
    print(f"  -> second kernel up with the exact command line: {'yes' if ok1 else 'NO'}  ({run.log_path})")

    print("== 2. kdump: pykexec -p, echo c > /proc/sysrq-trigger, crash kernel reads /proc/vmcore")
    run = run_guest_script(
        "pykexec -p /boot/vmlinuz --initrd /boot/second.cpio.gz "
        "--append 'console=ttyS0 panic=-1 maxcpus=1 reset_devices'\n"
        "pykexec -S -p; echo crash-kernel-loaded=$?\n"
        "echo c > /proc/sysrq-trigger\n", assets, append_extra="crashkernel=256M")
    show(run, ("crash-kernel-loaded", "PYKEXEC-SECOND"))
    ok2 = "PYKEXEC-SECOND-KERNEL-VMCORE size=" in run
    print(f"  -> crash kernel up with /proc/vmcore: {'yes' if ok2 else 'NO'}  ({run.log_path})")
    return 0 if ok1 and ok2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
