"""Command line: kexec-tools' flags, plus --dry-run, --json and --machine.

Thin by design: argv becomes a :class:`~pykexec.request.KexecRequest` for the library
core (:mod:`pykexec.kexec`), and its plans and errors become output. Every expected
failure is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pykexec import __version__, images, kexec, machine_file, render
from pykexec.argv import Parser
from pykexec.errors import KexecError, UsageError, report
from pykexec.machine import Machine
from pykexec.plan import LoadPlan
from pykexec.request import KexecRequest

COM1_PORT = 0x3F8  # ttyS0: where -d makes purgatory report


def _address(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1 << 64:
        raise argparse.ArgumentTypeError(f"{text!r} is outside the 64-bit address space")
    return value


def _profile(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a profile number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: profiles are numbered from 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="pykexec", add_help=False,
               usage="pykexec [-l|-p|-e|-u|-S] [options] [KERNEL]\n"
                     "       pykexec vmcore {dmesg,info} [options] DUMP\n"
                     "       pykexec vmcore save [options] SRC DST\n"
                     "       pykexec kdump COMMAND [options]\n"
                     "       pykexec doctor [--json]",
               description="Load a new kernel and jump to it without firmware (a drop-in for kexec).")
    act = p.add_argument_group("actions")
    act.add_argument("-l", "--load", action="store_true", help="load KERNEL for a later -e")
    act.add_argument("-p", "--load-panic", action="store_true", help="load KERNEL as the crash kernel")
    act.add_argument("-e", "--exec", action="store_true", help="jump into the loaded kernel now")
    act.add_argument("-u", "--unload", action="store_true", help="unload (with -p: the crash kernel)")
    act.add_argument("-S", "--status", action="store_true",
                     help="exit 1 if loaded, 0 if not (crash kernel, or normal with -l)")
    p.add_argument("kernel", nargs="?", help="kernel image (bzImage, ELF vmlinux, UKI, multiboot)")
    opt = p.add_argument_group("load options")
    opt.add_argument("-t", "--type", help="image type: " + ", ".join(t.name for t in images.image_types()))
    opt.add_argument("--initrd", "--ramdisk", help="initial ramdisk")
    opt.add_argument("--append", "--command-line", dest="append", metavar="STRING",
                     help="kernel command line (the last one given wins, as in kexec-tools)")
    opt.add_argument("--reuse-cmdline", action="store_true",
                     help="start from /proc/cmdline (without BOOT_IMAGE=, crashkernel=, kexec_jump_back_entry=)")
    opt.add_argument("--module", action="append", default=[], metavar='"FILE ARGS"',
                     help="multiboot module (repeatable)")
    opt.add_argument("--uki-profile", type=_profile, metavar="N",
                     help="UKI: boot profile N (.profile sections; default 0, as systemd-stub)")
    opt.add_argument("--uki-addon", action="append", default=[], metavar="FILE.addon.efi",
                     help="UKI: add this addon's .cmdline/.initrd/.ucode, as systemd-stub does (repeatable)")
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


def request_from(args: argparse.Namespace) -> KexecRequest:
    """The library request for a load command line."""
    if args.kernel is None:
        raise UsageError("no kernel image given")
    return KexecRequest(kernel=args.kernel, initrd=args.initrd, append=args.append, reuse_cmdline=args.reuse_cmdline,
                        modules=tuple(args.module), crash=args.load_panic, image_type=args.type,
                        mem_min=args.mem_min, mem_max=args.mem_max, syscall=args.syscall or "auto",
                        xen_crash_efi=args.xen_crash_efi, pass_memmap_cmdline=args.pass_memmap_cmdline,
                        purgatory_console=COM1_PORT if args.debug else 0, uki_profile=args.uki_profile,
                        uki_addons=tuple(args.uki_addon))


def do_load(args: argparse.Namespace) -> int:
    request = request_from(args)
    if args.dry_run or args.machine is not None:
        machine = machine_file.load(args.machine) if args.machine else kexec.this_machine()
        plan = kexec.plan(request, machine)
        print(render.render_json(plan) if args.json else render.render_text(plan, machine))
        return 0

    def log(message: str) -> None:
        print(f"pykexec: {message}", file=sys.stderr)

    def show_plan(plan: LoadPlan, machine: Machine) -> None:
        print(render.render_text(plan, machine), file=sys.stderr)

    loaded = kexec.load(request, log=log if args.debug else None, show_plan=show_plan if args.debug else None)
    for warning in loaded.warnings:
        print(f"pykexec: warning: {warning}", file=sys.stderr)
    return 0


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
        return 1 if kexec.status(crash=not args.load) else 0
    if args.unload:
        if args.dry_run or args.machine:
            print(f"would unload the {'crash' if args.load_panic else 'kexec'} image")
            return 0
        kexec.unload(crash=args.load_panic, syscall=args.syscall or "auto")
        return 0
    if args.load and args.load_panic:
        raise UsageError("-l and -p are exclusive: load one image at a time")
    if args.load or args.load_panic:
        return do_load(args)
    if args.exec:
        if args.dry_run or args.machine:  # --machine implies --dry-run, for -e too
            print("would execute the loaded kexec image")
            return 0
        kexec.execute()
        return 1  # execute returns only by raising
    if not actions and args.kernel is not None:
        args.load = True
        do_load(args)
        if args.dry_run or args.machine:
            return 0
        return do_reboot_after_load()
    raise UsageError("nothing to do: give -l/-p KERNEL, -e, -u or -S (see --help)")


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
