"""The built-in demo: pykexec in a QEMU guest (Debian 6.1 kernel, TCG).

1. pykexec -l with an initrd and a command line (kexec_load through pykexec's own
   purgatory, plan printed), then pykexec -e: the second kernel reports its command line.
2. A guest booted with crashkernel=256M loads a crash kernel with pykexec -c -p (our
   elfcorehdr and purgatory), panics, and in the crash kernel pykexec reads the dump:
   `vmcore info` and the dying kernel's last log lines with `vmcore dmesg`; then
   `vmcore save` writes it kdump-compressed (makedumpfile -d 31's pages, zstd) and the
   log read back from the saved file is the same.
"""

from __future__ import annotations

from support.testbed.assets import Assets, build_initramfs
from support.testbed.guest import run_guest_script

KEXEC_CMDLINE = "console=ttyS0 panic=-1 demo=pykexec-was-here"
# What the crash kernel runs: read the dump pykexec's elfcorehdr describes.
CRASH_INIT = """
echo "PYKEXEC-DEMO crash kernel up: $(cat /proc/cmdline)"
pykexec vmcore info /proc/vmcore | sed 's/^/PYKEXEC-DEMO info: /'
pykexec vmcore dmesg /proc/vmcore > /tmp/log
echo "PYKEXEC-DEMO dmesg: $(wc -l < /tmp/log) lines; the panic:"
grep -m1 'Kernel panic' /tmp/log | sed 's/^/PYKEXEC-DEMO dmesg: /'
pykexec vmcore save /proc/vmcore /tmp/vmcore.kdump
echo "PYKEXEC-DEMO save: exit $?, $(stat -c %s /tmp/vmcore.kdump) bytes from $(stat -c %s /proc/vmcore)"
pykexec vmcore dmesg /tmp/vmcore.kdump > /tmp/log2
cmp -s /tmp/log /tmp/log2 && echo "PYKEXEC-DEMO save: the saved dump has the same log as /proc/vmcore"
"""


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
        "drain-console\n"
        "pykexec -e\n", assets)
    show(run, ("role", "initrd", "kernel", "purgatory", "boot_params", "cmdline", "entry", "PYKEXEC-SECOND"))
    _, cmdline = run.second_kernel()
    ok1 = cmdline == KEXEC_CMDLINE
    print(f"  -> second kernel up with the exact command line: {'yes' if ok1 else 'NO'}  ({run.log_path})")

    print("== 2. kdump: pykexec -c -p, echo c > /proc/sysrq-trigger, pykexec reads /proc/vmcore in the crash kernel")
    crash_initrd = build_initramfs(assets.built / "demo-crash.cpio.gz", CRASH_INIT, {}, with_python=True,
                                   with_pykexec=True, assets=assets, kernels=(), compress=True)
    run = run_guest_script(
        "pykexec -c -p /boot/vmlinuz --initrd /boot/crash.cpio.gz "
        "--append 'console=ttyS0 panic=-1 maxcpus=1 reset_devices'\n"
        "pykexec -S -p; echo crash-kernel-loaded=$?\n"
        "drain-console\n"
        "echo c > /proc/sysrq-trigger\n", assets, append_extra="crashkernel=256M",
        extra_files={"/boot/crash.cpio.gz": crash_initrd})
    show(run, ("crash-kernel-loaded", "PYKEXEC-DEMO"))
    ok2 = any("PYKEXEC-DEMO dmesg" in line and "sysrq triggered crash" in line for line in run.log.splitlines())
    print(f"  -> crash kernel read the dump and found the panic: {'yes' if ok2 else 'NO'}  ({run.log_path})")
    ok3 = "the saved dump has the same log" in run.log
    print(f"  -> crash kernel saved the dump and read it back: {'yes' if ok3 else 'NO'}")
    return 0 if ok1 and ok2 and ok3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
