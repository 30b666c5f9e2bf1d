"""Command line: kexec-tools' flags, plus --dry-run, --json and --machine.

Thin by design: parse options, read the inputs, then probe -> image -> plan -> validate
-> backend. Every expected failure is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import errno
import re
import sys
from collections.abc import Sequence

from pykexec import __version__
from pykexec import images
from pykexec import machine as machine_mod
from pykexec.errors import KexecError, UsageError, read_input, report
from pykexec.machine import Machine
from pykexec.plan import BACKEND_KEXEC_FILE_LOAD, BACKEND_KEXEC_LOAD, BACKEND_XEN, FileLoadInputs, LoadPlan, validate

# --reuse-cmdline drops what belongs to the running kernel's boot only.
_DROP_ON_REUSE = ("BOOT_IMAGE=", "crashkernel=", "kexec_jump_back_entry=")
_CMDLINE_WORD = re.compile(r'(?:[^\s"]+|"[^"]*")+')
# kexec_file_load errors after which kexec_load may be tried (not signature errors).
_FALLBACK_ERRNOS = (errno.ENOSYS, errno.EINVAL, errno.ENOEXEC, errno.EOPNOTSUPP)
COM1_PORT = 0x3F8  # ttyS0: where -d makes purgatory report


def _address(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1 << 64:
        raise argparse.ArgumentTypeError(f"{text!r} is outside the 64-bit address space")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pykexec", add_help=False,
                usage="pykexec [-l|-p|-e|-u|-S] [options] [KERNEL]\n"
                      "       pykexec vmcore {dmesg,info} [options] DUMP\n"
                      "       pykexec doctor [--json]",
                description="Load a new kernel and jump to it without firmware (a drop-in for kexec).")
    act = p.add_argument_group("actions")
    act.add_argument("-l", "--load", action="store_true", help="load KERNEL for a later -e")
    act.add_argument("-p", "--load-panic", action="store_true", help="load KERNEL as the crash kernel")
    act.add_argument("-e", "--exec", action="store_true", help="jump into the loaded kernel now")
    act.add_argument("-u", "--unload", action="store_true", help="unload (with -p: the crash kernel)")
    act.add_argument("-S", "--status", action="store_true",
                     help="exit 1 if loaded, 0 if not (crash kernel, or normal with -l)")
    p.add_argument("kernel", nargs="?", help="kernel image (bzImage or ELF vmlinux)")
    opt = p.add_argument_group("load options")
    opt.add_argument("-t", "--type", help="image type: " + ", ".join(t.name for t in images.image_types()))
    opt.add_argument("--initrd", "--ramdisk", help="initial ramdisk")
    opt.add_argument("--append", "--command-line", dest="append", metavar="STRING",
                     help="kernel command line (the last one given wins, as in kexec-tools)")
    opt.add_argument("--reuse-cmdline", action="store_true",
                     help="start from /proc/cmdline (without BOOT_IMAGE=, crashkernel=, kexec_jump_back_entry=)")
    opt.add_argument("--module", action="append", default=[], metavar='"FILE ARGS"',
                     help="multiboot module (repeatable)")
    opt.add_argument("--mem-min", type=_address, default=0, help="lowest address to use")
    opt.add_argument("--mem-max", type=_address, default=(1 << 64) - 1, help="highest address to use")
    opt.add_argument("--pass-memmap-cmdline", action="store_true",
                     help="-p: also describe the crash kernel's memory with memmap= options")
    opt.add_argument("--xen-crash-efi", action="store_true",
                     help="-p under Xen: Xen's purgatory-less CRASH_EFI load type (Secure Boot); chosen "
                          "automatically in a Xen dom0 under lockdown or Secure Boot")
    opt.add_argument("--args-linux", action="store_true", help="accepted for kexec-tools compatibility (ELF)")
    sc = opt.add_mutually_exclusive_group()
    sc.add_argument("-s", "--kexec-file-syscall", dest="syscall", action="store_const", const="file",
                    help="use kexec_file_load only (signed kernels, Secure Boot)")
    sc.add_argument("-c", "--kexec-syscall", dest="syscall", action="store_const", const="load",
                    help="use kexec_load only (our purgatory)")
    sc.add_argument("-a", "--kexec-syscall-auto", dest="syscall", action="store_const", const="auto",
                    help="kexec_file_load, falling back to kexec_load when allowed (default)")
    out = p.add_argument_group("planning")
    out.add_argument("--dry-run", action="store_true", help="do everything but the syscall; print the plan")
    out.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    out.add_argument("--machine", metavar="FILE.json",
                     help="plan for the machine described in FILE instead of this one (implies --dry-run)")
    misc = p.add_argument_group("other")
    misc.add_argument("-d", "--debug", action="store_true", help="verbose output; purgatory prints on ttyS0")
    misc.add_argument("-v", "--version", action="version", version=f"pykexec {__version__}")
    misc.add_argument("-h", "--help", action="help", help="show this help and exit")
    return p


def compose_cmdline(running: str, reuse: bool, append: str | None, crash: bool) -> str:
    words: list[str] = []
    if reuse:
        words = [w for w in _CMDLINE_WORD.findall(running) if not w.startswith(_DROP_ON_REUSE)]
    if append:
        words.append(append.strip())
    return " ".join(w for w in words if w)


def _read_input(path: str, what: str) -> bytes:
    return read_input(path, what)


def _read_module(spec: str) -> images.Module:
    """``--module="FILE ARGS"``: the file is the first word; the whole string is the
    module's command line, as kexec-tools and GRUB pass it."""
    words = spec.split(maxsplit=1)
    if not words:
        raise UsageError("--module needs a file name")
    return images.Module(words[0], _read_input(words[0], "module"), spec.strip())


def _debug(args: argparse.Namespace, message: str) -> None:
    if args.debug:
        print(f"pykexec: {message}", file=sys.stderr)


def make_plan(args: argparse.Namespace, machine: Machine, kernel: bytes, image_type: images.ImageType,
              backend: str) -> LoadPlan:
    """Plan the load of the already read ``kernel`` for ``backend``."""
    if args.load_panic and machine.crash_kernel is None:
        raise UsageError(f"no crash kernel region is reserved on {machine.source} "
                         "(boot with crashkernel=SIZE, e.g. crashkernel=256M)")
    initrd = _read_input(args.initrd, "initrd") if args.initrd else None
    cmdline = compose_cmdline(machine.cmdline, args.reuse_cmdline, args.append, args.load_panic)
    multiboot = image_type.name.startswith("multiboot")
    if args.module and not multiboot:
        raise UsageError(f"--module is for multiboot images; {args.kernel} is {image_type.name}")
    if args.initrd and multiboot:
        raise UsageError("--initrd is for Linux images; pass the initrd of a multiboot kernel with --module")
    modules = [_read_module(spec) for spec in args.module]
    if use_xen_crash_efi(args, machine):
        from pykexec import xen_crash_efi

        req = images.LoadRequest(args.kernel, kernel, machine, cmdline=cmdline, initrd_path=args.initrd,
                                 initrd=initrd, crash=True, mem_min=args.mem_min, mem_max=args.mem_max)
        plan = xen_crash_efi.plan(req)
        if not args.xen_crash_efi:
            why = "Secure Boot is on" if machine.secure_boot else f"lockdown is {machine.lockdown}"
            plan.notes.insert(0, f"CRASH_EFI chosen because {why}: Xen must not run unsigned purgatory")
        check_xen_plan(plan, machine)
        return plan
    if backend == BACKEND_KEXEC_FILE_LOAD:
        if not image_type.file_load:
            raise UsageError(f"kexec_file_load cannot load {image_type.name} images; use -c")
        return LoadPlan(image_type=image_type.name, backend=backend, crash=args.load_panic, cmdline=cmdline,
                        file_inputs=FileLoadInputs(args.kernel, args.initrd, cmdline))
    req = images.LoadRequest(kernel_path=args.kernel, kernel=kernel, machine=machine, cmdline=cmdline,
                             initrd_path=args.initrd, initrd=initrd, crash=args.load_panic,
                             mem_min=args.mem_min, mem_max=args.mem_max, backend=backend,
                             purgatory_console=COM1_PORT if args.debug else 0,
                             memmap_cmdline=args.pass_memmap_cmdline, modules=modules)
    plan = image_type.plan(req)
    if backend == BACKEND_XEN:
        plan.backend = BACKEND_XEN
        check_xen_plan(plan, machine)
    else:
        validate(plan, machine)
    return plan


def xen_load_type(plan: LoadPlan) -> int:
    from pykexec.layouts import xen as xen_abi

    if not plan.crash:
        return xen_abi.KEXEC_TYPE_DEFAULT
    has_purgatory = any(s.role == "purgatory" for s in plan.segments)
    return xen_abi.KEXEC_TYPE_CRASH if has_purgatory else xen_abi.KEXEC_TYPE_CRASH_EFI


def xen_segments(plan: LoadPlan) -> list:
    """The plan's segments as Xen takes them: purgatory needs the first MiB mapped, which
    Xen does only for segments it is given (null-buffer ones, added after the digests)."""
    from pykexec.backends import xen

    segs = xen.segments_from_plan(plan)
    if any(s.role == "purgatory" for s in plan.segments):
        segs = xen.with_low_memory_mapped(segs)
    return segs


def check_xen_plan(plan: LoadPlan, machine: Machine) -> None:
    """Xen's rules for kexec_load, applied before any hypercall."""
    from pykexec.backends import xen

    area = machine.crash_kernel
    xen.check_load(xen_load_type(plan), xen.ARCH_PURGATORY, xen_segments(plan), plan.entry or 0,
                   xen.XenRange(area.start, area.size) if area is not None and plan.crash else None)


def use_xen_crash_efi(args: argparse.Namespace, machine: Machine) -> bool:
    """--xen-crash-efi, or a crash load in a Xen dom0 under lockdown or Secure Boot."""
    if args.xen_crash_efi:
        if not args.load_panic:
            raise UsageError("--xen-crash-efi is a crash load type: use it with -p")
        if machine.xen is None:
            raise UsageError(f"--xen-crash-efi is a Xen load type, and {machine.source} runs no Xen")
        return True
    return bool(args.load_panic and machine.xen is not None
                and (machine.lockdown != "none" or machine.secure_boot))


def first_backend(args: argparse.Namespace, image_type: images.ImageType, machine: Machine) -> str:
    """-s and -c are explicit; -a (the default) starts with kexec_file_load when the
    kernel could take the image. In a Xen dom0 the hypervisor loads every image."""
    if machine.xen is not None:
        if args.syscall == "file":
            raise UsageError("kexec_file_load is not for a Xen dom0: Xen loads images itself (drop -s)")
        return BACKEND_XEN
    if args.syscall == "file":
        return BACKEND_KEXEC_FILE_LOAD
    if args.syscall == "load":
        return BACKEND_KEXEC_LOAD
    return BACKEND_KEXEC_FILE_LOAD if image_type.file_load else BACKEND_KEXEC_LOAD


def do_load(args: argparse.Namespace) -> int:
    from pykexec.backends import dryrun

    if args.kernel is None:
        raise UsageError("no kernel image given")
    if args.mem_min > args.mem_max:
        raise UsageError(f"--mem-min {args.mem_min:#x} is above --mem-max {args.mem_max:#x}")
    dry = args.dry_run or args.machine is not None
    machine = machine_mod.load(args.machine) if args.machine else machine_mod.probe()
    kernel = images.decompress(_read_input(args.kernel, "kernel"), args.kernel)
    image_type = images.select(kernel, args.type)
    backend = first_backend(args, image_type, machine)
    if dry:
        plan = make_plan(args, machine, kernel, image_type, backend)
        print(dryrun.render_json(plan) if args.json else dryrun.render_text(plan, machine))
        return 0

    from pykexec.lock import Lock

    with Lock():
        return load(args, machine, kernel, image_type, backend)


def load(args: argparse.Namespace, machine: Machine, kernel: bytes, image_type: images.ImageType,
         backend: str) -> int:
    """Plan and load for real (under the lock). A crash load that the kernel refuses has
    already dropped the previous crash kernel (both syscalls free it first): say so."""
    from pykexec.backends import linux

    if backend == BACKEND_XEN:
        return load_through_xen(args, make_plan(args, machine, kernel, image_type, backend), machine)
    had_crash_kernel = args.load_panic and _crash_loaded()
    try:
        return _load_linux(args, machine, kernel, image_type, backend)
    except KexecError as err:
        if had_crash_kernel and not _crash_loaded():
            raise KexecError(f"{err}; the kernel had already unloaded the previous crash kernel: "
                             "none is loaded now") from None
        raise


def _crash_loaded() -> bool:
    from pykexec.backends import linux

    try:
        return linux.is_loaded(crash=True)
    except KexecError:
        return False


def _load_linux(args: argparse.Namespace, machine: Machine, kernel: bytes, image_type: images.ImageType,
                backend: str) -> int:
    from pykexec.backends import dryrun, linux

    if backend == BACKEND_KEXEC_FILE_LOAD:
        plan = make_plan(args, machine, kernel, image_type, backend)
        assert plan.file_inputs is not None
        err = linux.kexec_file_load(args.kernel, args.initrd, plan.cmdline, args.load_panic)
        if not err:
            _debug(args, f"loaded {args.kernel} with kexec_file_load")
            return 0
        fallback = args.syscall in (None, "auto") and err in _FALLBACK_ERRNOS
        if not fallback:
            raise linux.SyscallError(linux.explain(err, "kexec_file_load"), err, "kexec_file_load")
        if machine.lockdown != "none":
            raise linux.SyscallError(linux.explain(err, "kexec_file_load") +
                                     f"; kexec_load is not an option under lockdown ({machine.lockdown})",
                                     err, "kexec_file_load")
        _debug(args, f"kexec_file_load: {errno.errorcode.get(err, err)}; falling back to kexec_load")
    plan = make_plan(args, machine, kernel, image_type, BACKEND_KEXEC_LOAD)
    if args.debug:
        print(dryrun.render_text(plan, machine), file=sys.stderr)
    linux.kexec_load(plan)
    return 0


def load_through_xen(args: argparse.Namespace, plan: LoadPlan, machine: Machine) -> int:
    """Hand a checked plan to Xen (PV dom0)."""
    from pykexec.backends import dryrun, xen
    from pykexec.layouts import xen as xen_abi

    if args.debug:
        print(dryrun.render_text(plan, machine), file=sys.stderr)
    load_type = xen_load_type(plan)
    with xen.XenKexec.open() as x:
        try:
            x.load(load_type, xen.ARCH_PURGATORY, xen_segments(plan), plan.entry or 0)
        except xen.HypercallError as err:
            if load_type == xen_abi.KEXEC_TYPE_CRASH_EFI and err.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                major, minor, extra = x.xen_version()
                raise KexecError(f"Xen {major}.{minor}{extra} does not know the CRASH_EFI load type (3): it lacks "
                                 "the 'x86/kexec: Secure Boot support' series; nothing was loaded") from None
            raise
    return 0


def _xen_dom0() -> bool:
    """Cheaply: are we a Xen PV dom0 (then -e/-u/-S go to the hypervisor)?"""
    try:
        with open("/sys/hypervisor/type") as f:
            if f.read().strip() != "xen":
                return False
    except OSError:
        return False
    from pykexec.backends import xen

    return xen.xen_pv_dom0()


def _xen_type(crash: bool) -> int:
    from pykexec.layouts import xen as xen_abi

    return xen_abi.KEXEC_TYPE_CRASH if crash else xen_abi.KEXEC_TYPE_DEFAULT


def do_reboot_after_load() -> int:
    """kexec-tools' behaviour with no action option: load, then a clean reboot, which
    the init system finishes with kexec."""
    import subprocess

    for cmd in (["shutdown", "-r", "now"], ["/etc/shutdown", "-r", "now"], ["/bin/shutdown", "-r", "now"]):
        try:
            return subprocess.call(cmd)
        except OSError:
            continue
    raise KexecError("loaded, but no shutdown command was found to reboot; run pykexec -e")


def run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    actions = [name for name in ("load", "load_panic", "exec", "unload", "status") if getattr(args, name)]
    if args.json and not (args.dry_run or args.machine):
        raise UsageError("--json only applies to --dry-run plans")
    if args.status:  # overrides every other action, as in kexec-tools
        if args.machine:
            raise UsageError("-S reports what this machine has loaded; --machine only describes one for plans")
        if _xen_dom0():
            from pykexec.backends import xen

            with xen.XenKexec.open() as x:
                return 1 if x.is_loaded(_xen_type(crash=not args.load)) else 0
        from pykexec.backends import linux

        return 1 if linux.is_loaded(crash=not args.load) else 0
    if args.unload:
        if args.dry_run or args.machine:
            print(f"would unload the {'crash' if args.load_panic else 'kexec'} image")
            return 0
        from pykexec.lock import Lock

        with Lock():
            return unload(args)
    if args.load and args.load_panic:
        raise UsageError("-l and -p are exclusive: load one image at a time")
    if args.load or args.load_panic:
        return do_load(args)
    if args.exec:
        if args.dry_run or args.machine:  # --machine implies --dry-run, for -e too
            print("would execute the loaded kexec image")
            return 0
        from pykexec.lock import Lock

        with Lock():
            return execute()
    if not actions and args.kernel is not None:
        args.load = True
        do_load(args)
        if args.dry_run or args.machine:
            return 0
        return do_reboot_after_load()
    raise UsageError("nothing to do: give -l/-p KERNEL, -e, -u or -S (see --help)")


def unload(args: argparse.Namespace) -> int:
    if _xen_dom0():
        from pykexec.backends import xen

        with xen.XenKexec.open() as x:
            x.unload(_xen_type(args.load_panic))
        return 0
    from pykexec.backends import linux

    linux.unload(crash=args.load_panic, use_file_syscall={"file": True, "load": False}.get(args.syscall))
    return 0


def execute() -> int:
    """Jump into the loaded image; returns only on failure."""
    if _xen_dom0():
        from pykexec.backends import xen

        with xen.XenKexec.open() as x:
            if not x.is_loaded(_xen_type(crash=False)):
                raise KexecError("nothing has been loaded: load a kernel with -l first")
            x.execute(_xen_type(crash=False))
        return 1
    from pykexec.backends import linux

    linux.execute()
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "-d" in argv or "--debug" in argv
    try:
        return run(argv)
    except KexecError as err:
        return report(err)
    except KeyboardInterrupt:
        print("pykexec: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug: still one line, the traceback only on request
        if debug:
            import traceback

            traceback.print_exc()
        print(f"pykexec: internal error: {type(err).__name__}: {err} (run with -d for the traceback)",
              file=sys.stderr)
        return 70


if __name__ == "__main__":
    raise SystemExit(main())
