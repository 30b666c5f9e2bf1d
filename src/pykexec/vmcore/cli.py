"""``pykexec vmcore dmesg [options] PATH``: print the kernel log of a crash dump.

Entry point :func:`main` takes the arguments after ``vmcore``
(``["dmesg", "-x", "/var/crash/vmcore"]``); ``python -m pykexec.vmcore.cli``
does the same.  Without options the output is byte for byte what
kexec-tools' ``vmcore-dmesg`` prints, except for two kinds of empty lines
it prints that are not messages (the 3.5-5.9 end-of-buffer marker, 5.10+
failed reservations; see :func:`pykexec.vmcore.printk.format_vmcore_dmesg`).

The options are parsed by hand rather than with argparse: importing
argparse costs more than reading a dump's log, and this command is
meant to be as quick as the C tool it replaces.
"""

from __future__ import annotations

import sys

from pykexec.errors import KexecError, UsageError, report

USAGE = """\
usage: pykexec vmcore dmesg [options] PATH
       pykexec vmcore dmesg --xen [--xen-syms FILE] PATH
       pykexec vmcore info [--json] PATH
       pykexec vmcore save [--format kdump|elf] [--compress zstd|zlib|none] [--level N] [-d LEVEL] [--force] SRC DST

Print the kernel log (dmesg) recorded in an ELF crash dump such as /proc/vmcore.
Output matches kexec-tools' vmcore-dmesg unless an option changes it.  In a dump
of a Xen machine that is dom0's log (needs dom0's VMCOREINFO, saved when the crash
kernel was loaded with pykexec -p); --xen prints the hypervisor's console ring.

options:
  -l, --level LIST   only these levels: comma-separated names
                     (emerg,alert,crit,err,warn,notice,info,debug) or numbers 0-7
  -x, --decode       prefix facility and level ("kern  :info  : ")
  -T, --ctime        wall-clock times, from VMCOREINFO's CRASHTIME minus the
                     last record's timestamp (about +-1 s)
  --show-caller      show the thread [T<pid>] or CPU [C<n>] that logged each
                     record (kernels with CONFIG_PRINTK_CALLER)
  --xen              Xen dumps: the hypervisor's console ring (what xl dmesg
                     shows) instead of dom0's log
  --xen-syms FILE    the unstripped xen-syms of the dumped Xen, for the ring's
                     symbols when they were not recorded at load time (implies --xen)
  -h, --help         show this help
"""


class DmesgOptions:
    """Parsed ``vmcore dmesg`` options (a plain class: dataclasses is slow to import)."""

    def __init__(self, path: str, levels: str | None = None, decode: bool = False,
                 ctime: bool = False, show_caller: bool = False, xen: bool = False,
                 xen_syms: str | None = None) -> None:
        self.path = path
        self.xen = xen
        self.xen_syms = xen_syms
        self.levels = levels
        self.decode = decode
        self.ctime = ctime
        self.show_caller = show_caller


def parse_dmesg_args(argv: list[str]) -> DmesgOptions | None:
    """Options of ``vmcore dmesg``; None when help was asked for."""
    opts: dict[str, object] = {}
    paths: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            paths += args
            break
        if arg in ("-h", "--help"):
            return None
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name == "--level":
                if not eq:
                    if not args:
                        raise UsageError("--level needs a value")
                    value = args.pop(0)
                opts["levels"] = value
            elif name in ("--decode", "--ctime", "--show-caller", "--xen") and not eq:
                opts[name[2:].replace("-", "_")] = True
            elif name == "--xen-syms":
                if not eq:
                    if not args:
                        raise UsageError("--xen-syms needs a file")
                    value = args.pop(0)
                if not value:
                    raise UsageError("--xen-syms needs a file")
                opts["xen_syms"] = value
                opts["xen"] = True
            else:
                raise UsageError(f"unknown option {arg}")
        elif arg.startswith("-") and arg != "-":
            flags = arg[1:]
            while flags:
                c, flags = flags[0], flags[1:]
                if c == "x":
                    opts["decode"] = True
                elif c == "T":
                    opts["ctime"] = True
                elif c == "h":
                    return None
                elif c == "l":
                    if not flags:
                        if not args:
                            raise UsageError("-l needs a value")
                        flags = args.pop(0)
                    opts["levels"], flags = flags, ""
                else:
                    raise UsageError(f"unknown option -{c}")
        else:
            paths.append(arg)
    if len(paths) != 1:
        raise UsageError("expected exactly one dump file (PATH)")
    if opts.get("xen"):
        clash = [o for o, k in (("-l/--level", "levels"), ("-x/--decode", "decode"), ("-T/--ctime", "ctime"),
                                ("--show-caller", "show_caller")) if k in opts]
        if clash:
            raise UsageError(f"{clash[0]} applies to a Linux log, not to Xen's console ring (--xen)")
    return DmesgOptions(paths[0], **opts)  # type: ignore[arg-type]


def dmesg(opts: DmesgOptions) -> bytes:
    """The text ``vmcore dmesg`` prints for ``opts``."""
    from pykexec.vmcore import open_dump
    from pykexec.vmcore.printk import boot_time, format_log, parse_levels, read_log

    levels = parse_levels(opts.levels) if opts.levels is not None else None
    with open_dump(opts.path) as core:
        if opts.xen:
            from pykexec.vmcore.xen import xen_console_ring

            return xen_console_ring(core, opts.xen_syms)
        source = core
        if any(n.name == b"Xen" for n in core.notes):
            # A dump of a Xen machine: its "physical" addresses are machine addresses,
            # so dom0's log is read through dom0's page tables and p2m.
            from pykexec.vmcore.xen import dom0_memory, is_xen_dump

            if is_xen_dump(core.notes):
                source = dom0_memory(core)  # type: ignore[assignment]
        log = read_log(source)
        boot = boot_time(log, source.require_vmcoreinfo().crashtime) if opts.ctime else None
        return format_log(log, levels=levels, decode=opts.decode, boot=boot,
                          show_caller=opts.show_caller)


def info(argv: list[str]) -> str | None:
    """The text ``vmcore info [--json] PATH`` prints; None when help was asked for."""
    from pykexec.vmcore import info as info_mod
    from pykexec.vmcore import open_dump

    if any(a in ("-h", "--help") for a in argv):
        return None
    as_json = "--json" in argv
    rest = [a for a in argv if a != "--json"]
    unknown = [a for a in rest if a.startswith("-") and a != "-"]
    if unknown:
        raise UsageError(f"unknown option {unknown[0]}")
    if len(rest) != 1:
        raise UsageError("expected exactly one dump file (PATH)")
    with open_dump(rest[0]) as core:
        description = info_mod.describe(core)
    if as_json:
        import json

        return json.dumps(description, indent=2) + "\n"
    return info_mod.render_text(description)


def main(argv: list[str] | None = None) -> int:
    """``pykexec vmcore SUBCOMMAND ...``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if not argv or argv[0] in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return 0 if argv else 2
        if argv[0] == "info":
            out = info(argv[1:])
            if out is None:
                sys.stdout.write(USAGE)
                return 0
            sys.stdout.write(out)
            return 0
        if argv[0] == "save":
            from pykexec.vmcore.save import main as save_main

            return save_main(argv[1:])
        if argv[0] != "dmesg":
            raise UsageError(f"unknown vmcore command {argv[0]!r} (expected: dmesg, info or save)")
        opts = parse_dmesg_args(argv[1:])
        if opts is None:
            sys.stdout.write(USAGE)
            return 0
        out = dmesg(opts)
    except KexecError as err:
        return report(err, "pykexec vmcore")
    try:
        sys.stdout.buffer.write(out)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (| head): not an error; point stdout at /dev/null
        # so the flush at interpreter exit does not complain either.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
