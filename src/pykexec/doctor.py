"""``pykexec doctor``: can this machine kexec and kdump, and if not, what to change.

Each check reads what the running system exposes and reports a finding: ``ok``,
``warn`` (works, but something to know) or ``fail`` (a load would fail), each with the
fix. Paths are read under ``root`` so that the checks can be tested on a fake tree.
"""

from __future__ import annotations

import gzip
import os
import re
from collections import namedtuple

OK, WARN, FAIL = "ok", "warn", "fail"
CAP_SYS_BOOT = 22


class Finding(namedtuple("Finding", "check status message fix", defaults=("",))):
    """One check's result; ``fix`` says what to do when the status is not ok."""

    __slots__ = ()
    check: str
    status: str
    message: str
    fix: str


class System:
    """The files doctor reads, under ``root`` ("/" for the running system)."""

    def __init__(self, root: str = "/", release: str | None = None) -> None:
        self.root = root
        self.release = release or os.uname().release

    def path(self, p: str) -> str:
        return os.path.join(self.root, p.lstrip("/"))

    def read(self, p: str) -> str | None:
        try:
            with open(self.path(p), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return None

    def exists(self, p: str) -> bool:
        return os.path.exists(self.path(p))

    def kernel_config(self) -> tuple[dict[str, str], str] | None:
        """The running kernel's build options, from /proc/config.gz or /boot/config-*."""
        try:
            with gzip.open(self.path("/proc/config.gz"), "rt") as f:
                return _parse_config(f.read()), "/proc/config.gz"
        except (OSError, EOFError):
            pass
        text = self.read(f"/boot/config-{self.release}")
        return (_parse_config(text), f"/boot/config-{self.release}") if text is not None else None


def _parse_config(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"(CONFIG_\w+)=(.*)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def check_privileges(sys_: System) -> list[Finding]:
    status = sys_.read("/proc/self/status") or ""
    m = re.search(r"^CapEff:\s*([0-9a-f]+)", status, re.M)
    if m is None:
        return [Finding("privileges", WARN, "cannot read the effective capabilities", "run as root")]
    if int(m.group(1), 16) >> CAP_SYS_BOOT & 1:
        return [Finding("privileges", OK, "CAP_SYS_BOOT held")]
    return [Finding("privileges", FAIL, "CAP_SYS_BOOT is missing: loads and -e are refused (EPERM)", "run as root")]


def check_config(sys_: System) -> list[Finding]:
    found = sys_.kernel_config()
    if found is None:
        return [Finding("kernel config", WARN, f"no /proc/config.gz or /boot/config-{sys_.release}",
                        "install the kernel's config file to let doctor check its options")]
    cfg, where = found
    out = []
    wanted = [("CONFIG_KEXEC", FAIL, "kexec_load (pykexec -c, Multiboot, Xen images) is unavailable"),
              ("CONFIG_KEXEC_FILE", WARN, "kexec_file_load (pykexec -s, Secure Boot) is unavailable"),
              ("CONFIG_CRASH_DUMP", WARN, "this kernel cannot load a crash kernel (-p)"),
              ("CONFIG_PROC_VMCORE", WARN, "as a crash kernel it would not offer /proc/vmcore"),
              ("CONFIG_FIRMWARE_MEMMAP", WARN, "no /sys/firmware/memmap: the next kernel's e820 comes from "
                                               "/proc/iomem, which hides some firmware ranges"),
              ("CONFIG_PROC_KCORE", WARN, "no /proc/kcore: crash dumps get no kernel-image mapping")]
    for option, severity, consequence in wanted:
        if cfg.get(option) == "y":
            out.append(Finding(option, OK, f"{option}=y ({where})"))
        else:
            out.append(Finding(option, severity, f"{option} is off: {consequence}",
                               f"use a kernel built with {option}=y"))
    if cfg.get("CONFIG_KEXEC_SIG_FORCE") == "y":
        out.append(Finding("CONFIG_KEXEC_SIG_FORCE", WARN, "kexec_file_load accepts only signed kernels",
                           "load kernels signed by a key in the .builtin/.secondary/.platform/MOK keyrings"))
    return out


def check_policy(sys_: System) -> list[Finding]:
    out = []
    disabled = (sys_.read("/proc/sys/kernel/kexec_load_disabled") or "").strip()
    if disabled == "1":
        out.append(Finding("kexec_load_disabled", FAIL, "sysctl kernel.kexec_load_disabled=1: every load is refused",
                           "it cannot be undone until reboot; remove it from /etc/sysctl.d and reboot"))
    else:
        out.append(Finding("kexec_load_disabled", OK, "kexec loads are allowed"))
    for kind in ("reboot", "panic"):
        limit = (sys_.read(f"/proc/sys/kernel/kexec_load_limit_{kind}") or "").strip()
        if limit == "0":
            out.append(Finding(f"kexec_load_limit_{kind}", FAIL, f"kernel.kexec_load_limit_{kind}=0: no more "
                               f"{'crash' if kind == 'panic' else 'kexec'} loads this boot", "reboot"))
    lock = sys_.read("/sys/kernel/security/lockdown")
    mode = re.search(r"\[(\w+)\]", lock or "")
    if mode and mode.group(1) != "none":
        out.append(Finding("lockdown", WARN, f"kernel lockdown is {mode.group(1)}: kexec_load is refused, "
                           "only signed kernels load with kexec_file_load",
                           "use -s (or the default -a) with a signed kernel"))
    else:
        out.append(Finding("lockdown", OK, "no kernel lockdown"))
    return out


def check_crash_region(sys_: System) -> list[Finding]:
    iomem = sys_.read("/proc/iomem") or ""
    regions = [(int(a, 16), int(b, 16)) for a, b in re.findall(r"^\s*([0-9a-f]+)-([0-9a-f]+) : Crash kernel$",
                                                                   iomem, re.M)]
    cmdline = sys_.read("/proc/cmdline") or ""
    if not regions or all(a == b == 0 for a, b in regions):
        if "crashkernel=" in cmdline:
            return [Finding("crash region", FAIL, "crashkernel= is on the command line but nothing is reserved",
                            "the size may be too large for this machine: try a smaller crashkernel=")]
        return [Finding("crash region", WARN, "no crash kernel region is reserved: kdump (-p) is unavailable",
                        "boot with crashkernel=256M (under Xen: on Xen's command line)")]
    size = sum(b - a + 1 for a, b in regions)
    out = [Finding("crash region", OK, f"{size >> 20} MiB reserved for a crash kernel")]
    need = _crash_need(sys_)
    if need and need > size:
        out.append(Finding("crash region size", WARN, f"this kernel and its initrd need about {need >> 20} MiB, "
                           f"more than the {size >> 20} MiB reserved",
                           f"reserve at least crashkernel={-(-need // (1 << 20)) + 32}M"))
    return out


def _crash_need(sys_: System) -> int:
    """Bytes the running kernel's image (init_size) and initrd would take as a crash kernel."""
    from pykexec.errors import ImageFormatError
    from pykexec.images.bzimage import parse

    try:
        with open(sys_.path(f"/boot/vmlinuz-{sys_.release}"), "rb") as f:
            head = f.read(1 << 16)  # the setup header and enough after it for parse's checks
        init_size = parse(head).header.init_size
    except (OSError, ImageFormatError):
        return 0
    try:
        initrd = os.path.getsize(sys_.path(f"/boot/initrd.img-{sys_.release}"))
    except OSError:
        initrd = 0
    return init_size + initrd + (1 << 20)


def check_xen(sys_: System) -> list[Finding]:
    if (sys_.read("/sys/hypervisor/type") or "").strip() != "xen":
        return []
    caps = sys_.read("/proc/xen/capabilities")
    guest = (sys_.read("/sys/hypervisor/guest_type") or "PV").strip()
    if caps is None:
        return [Finding("xen", FAIL, "running under Xen, but /proc/xen is not mounted",
                        "modprobe xen-privcmd xenfs; mount -t xenfs xenfs /proc/xen")]
    if "control_d" not in caps:
        return [Finding("xen", WARN, "a Xen guest, not dom0: kexec works as on bare metal inside this guest")]
    if guest != "PV":
        return [Finding("xen", FAIL, f"a {guest} dom0: Xen offers kexec_op only to a PV dom0",
                        "boot dom0 in PV mode (drop dom0=pvh from Xen's command line)")]
    if not (sys_.exists("/dev/xen/privcmd") or sys_.exists("/proc/xen/privcmd")):
        return [Finding("xen", FAIL, "PV dom0 without privcmd", "modprobe xen-privcmd")]
    out = [Finding("xen", OK, "PV dom0: loads go to Xen through kexec_op")]
    if not sys_.exists("/dev/xen/hypercall"):
        out.append(Finding("xen hypercall buffers", WARN, "no /dev/xen/hypercall: pykexec uses locked memory "
                           "for hypercall buffers", "use a dom0 kernel of 4.18 or later"))
    return out


def check_loaded(sys_: System) -> list[Finding]:
    out = []
    for name, what in (("kexec_loaded", "kexec image"), ("kexec_crash_loaded", "crash kernel")):
        value = (sys_.read(f"/sys/kernel/{name}") or "").strip()
        if value:
            out.append(Finding(name, OK, f"{what}: {'loaded' if value == '1' else 'not loaded'}"))
    return out


def check_memmap(sys_: System) -> list[Finding]:
    if sys_.exists("/sys/firmware/memmap"):
        return [Finding("firmware memmap", OK, "/sys/firmware/memmap present")]
    return [Finding("firmware memmap", WARN, "no /sys/firmware/memmap: the e820 for the next kernel comes from "
                    "/proc/iomem", "enable CONFIG_FIRMWARE_MEMMAP")]


CHECKS = (check_privileges, check_config, check_policy, check_crash_region, check_memmap, check_xen, check_loaded)


def run(sys_: System | None = None) -> list[Finding]:
    sys_ = sys_ or System()
    return [f for check in CHECKS for f in check(sys_)]


def render(findings: list[Finding]) -> str:
    lines = []
    for f in findings:
        lines.append(f"[{f.status:>4}] {f.check}: {f.message}")
        if f.fix and f.status != OK:
            lines.append(f"       fix: {f.fix}")
    fails = sum(f.status == FAIL for f in findings)
    warns = sum(f.status == WARN for f in findings)
    lines.append(f"{fails} problem(s), {warns} warning(s)")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """``pykexec doctor [--json]``: exit 1 when a check fails."""
    import sys

    from pykexec.argv import Parser
    from pykexec.errors import UsageError, report

    parser = Parser(prog="pykexec doctor", add_help=False, allow_abbrev=False,
                    description="Check whether this machine can kexec and kdump, and say what to change.",
                    unknown_option="unknown doctor option {}")
    parser.add_argument("-h", "--help", action="store_true", help="show this help")
    parser.add_argument("--json", action="store_true", help="the findings as JSON")
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        return report(err, "pykexec doctor")
    if args.help:
        sys.stdout.write(parser.format_help())
        return 0
    findings = run()
    if args.json:
        import json

        sys.stdout.write(json.dumps([f._asdict() for f in findings], indent=2) + "\n")
    else:
        sys.stdout.write(render(findings))
    return 1 if any(f.status == FAIL for f in findings) else 0
