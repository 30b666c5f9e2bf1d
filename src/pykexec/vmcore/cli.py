"""``pykexec vmcore dmesg|info|save|reassemble``: the command line of the dump tools.

Entry point :func:`main` takes the arguments after ``vmcore``
(``["dmesg", "-x", "/var/crash/vmcore"]``); ``python -m pykexec.vmcore.cli``
does the same.  One argparse parser per command (:class:`pykexec.argv.Parser`),
built only for the command that runs; every error is one line on stderr
(:func:`pykexec.errors.report`).

``vmcore dmesg`` without options prints byte for byte what kexec-tools'
``vmcore-dmesg`` prints, except for two kinds of empty lines it prints that are
not messages (the 3.5-5.9 end-of-buffer marker, 5.10+ failed reservations; see
:func:`pykexec.vmcore.printk.format_vmcore_dmesg`).  It is meant to be as quick
as that C tool: it imports the ELF reader and the log decoder, never what
``save`` needs (its writers, compressors and page filter).
"""

from __future__ import annotations

import argparse
import sys

from pykexec.errors import KexecError, UsageError, report

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from pykexec.argv import Parser
    from pykexec.vmcore.dump_memory import DumpMemory
    from pykexec.vmcore.elfcore import ElfCore
    from pykexec.vmcore.kdump import KdumpCore

#: Each command's usage lines and what it does, for its own help and ``pykexec vmcore --help``.
COMMANDS = {
    "dmesg": ("pykexec vmcore dmesg [-l LIST] [-x] [-T] [--show-caller] PATH\n"
              "       pykexec vmcore dmesg --xen [--xen-syms FILE] PATH",
              "print the kernel log of a dump, as kexec-tools' vmcore-dmesg does"),
    "info": ("pykexec vmcore info [--json] PATH",
             "what a dump holds: notes, each CPU's registers, VMCOREINFO, Xen's crash information"),
    "save": ("pykexec vmcore save [--format kdump|elf] [--compress zstd|zlib|lzo|snappy|none] [--level N]\n"
             "                           [-d LEVEL] [--threads N] [-c|-z|-l|-p|-E] [--xen-keep-domain ID]...\n"
             "                           [--force] SRC DST\n"
             "       pykexec vmcore save -F [OPTIONS] SRC > STREAM",
             "save a dump kdump-compressed (as makedumpfile -d 31 does) or as a filtered ELF core"),
    "reassemble": ("pykexec vmcore reassemble [--force] [SRC|-] DST",
                   "rebuild a dump from a flattened stream (-F), as makedumpfile -R does"),
}

DMESG_DESCRIPTION = """\
Print the kernel log (dmesg) recorded in a crash dump such as /proc/vmcore.
Output matches kexec-tools' vmcore-dmesg unless an option changes it.  In a dump
of a Xen machine that is dom0's log (needs dom0's VMCOREINFO, saved when the crash
kernel was loaded with pykexec -p); --xen prints the hypervisor's console ring.
Of a dump flagged incomplete or cut short, every record that can be read is printed,
with one line "pykexec: DUMP INCOMPLETE: WHY (WHAT IS MISSING); HOW MANY RECORDS WERE LOST"
on stderr, and the exit status is 1."""

INFO_DESCRIPTION = """\
Describe a crash dump without debug symbols: its notes, each CPU's registers at the
crash, the VMCOREINFO keys and, for a Xen machine, the hypervisor's crash information.
A dump flagged incomplete or cut short is described as far as it can be read, with
"pykexec: DUMP INCOMPLETE: WHY (WHAT IS MISSING)" on stderr (--json: also as the key
"incomplete"), and the exit status is 1."""

SAVE_DESCRIPTION = """\
Save a crash dump (an ELF core such as /proc/vmcore) to DST in makedumpfile's
kdump-compressed format, read by crash, makedumpfile, libkdumpfile and drgn.
By default (-d 31) zero, page-cache, user and free pages are left out, as
makedumpfile -d 31 leaves them out, and also the free pages waiting on the
per-CPU lists, which makedumpfile keeps; every other page is compressed.  A dump
of a Xen machine keeps Xen's frames, leaves out its free frames (16) and other
domains' frames (8; --xen-keep-domain keeps one), and filters dom0's frames as
a Linux dump's pages.

With -F (or DST -) the dump goes to standard output in makedumpfile's flattened
format, which needs no seeking: through a pipe, e.g. | ssh HOST 'cat > vmcore.flat'.
pykexec vmcore and crash read such a stream as it is; pykexec vmcore reassemble
or makedumpfile -R rebuild the file from it."""

SAVE_EPILOG = """\
A dump that stops early (read error, full disk) is kept, flagged incomplete
in its header as makedumpfile does, and the exit status is 1."""


def _parser(command: str, description: str, epilog: str | None = None) -> Parser:
    """The parser of ``pykexec vmcore COMMAND``, with its -h/--help (as a flag: help is
    printed by :func:`main`, not by argparse exiting)."""
    from pykexec.argv import Parser

    parser = Parser(prog=f"pykexec vmcore {command}", usage=COMMANDS[command][0], description=description,
                    epilog=epilog, add_help=False, allow_abbrev=False,
                    formatter_class=argparse.RawDescriptionHelpFormatter, unknown_option="unknown option {}")
    parser.add_argument("-h", "--help", action="store_true", help="show this help")
    return parser


def overview() -> str:
    """``pykexec vmcore --help``: the commands, their usage lines and what each does."""
    from pykexec.argv import Parser

    parser = Parser(prog="pykexec vmcore", usage="\n       ".join(usage for usage, _ in COMMANDS.values()),
                    description="Read and save Linux crash dumps (an ELF core such as /proc/vmcore, "
                                "or a kdump-compressed file; either as a flattened stream).",
                    epilog="pykexec vmcore COMMAND --help shows the options of COMMAND.", add_help=False)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, (_usage, summary) in COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)
    return parser.format_help()


# -- dmesg ---------------------------------------------------------------------------------

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


def dmesg_parser() -> Parser:
    parser = _parser("dmesg", DMESG_DESCRIPTION)
    parser.add_argument("-l", "--level", dest="levels", metavar="LIST",
                        help="only these levels: comma-separated names "
                             "(emerg,alert,crit,err,warn,notice,info,debug) or numbers 0-7")
    parser.add_argument("-x", "--decode", action="store_true", help="prefix each record with its facility and level, as dmesg -x does")
    parser.add_argument("-T", "--ctime", action="store_true",
                        help="wall-clock times, from VMCOREINFO's CRASHTIME minus the last record's "
                             "timestamp (about +-1 s)")
    parser.add_argument("--show-caller", action="store_true",
                        help="show the thread [T<pid>] or CPU [C<n>] that logged each record "
                             "(kernels with CONFIG_PRINTK_CALLER)")
    parser.add_argument("--xen", action="store_true",
                        help="Xen dumps: the hypervisor's console ring (what xl dmesg shows) instead of dom0's log")
    parser.add_argument("--xen-syms", metavar="FILE",
                        help="the unstripped xen-syms of the dumped Xen, for the ring's symbols when they "
                             "were not recorded at load time (implies --xen)")
    parser.add_argument("operands", nargs="*", metavar="PATH",
                        help="the dump: /proc/vmcore, an ELF core or a kdump-compressed file, "
                             "or either as a flattened stream (-F)")
    return parser


def parse_dmesg_args(argv: Sequence[str]) -> DmesgOptions | None:
    """Options of ``vmcore dmesg``; None when help was asked for."""
    args = dmesg_parser().parse_anywhere(argv)
    if args.help:
        return None
    if len(args.operands) != 1:
        raise UsageError("expected exactly one dump file (PATH)")
    if args.xen_syms is not None:
        if not args.xen_syms:
            raise UsageError("--xen-syms needs a file")
        args.xen = True
    if args.xen:
        clash = [name for name, given in (("-l/--level", args.levels is not None), ("-x/--decode", args.decode),
                                          ("-T/--ctime", args.ctime), ("--show-caller", args.show_caller))
                 if given]
        if clash:
            raise UsageError(f"{clash[0]} applies to a Linux log, not to Xen's console ring (--xen)")
    return DmesgOptions(args.operands[0], levels=args.levels, decode=args.decode, ctime=args.ctime,
                        show_caller=args.show_caller, xen=args.xen, xen_syms=args.xen_syms)


def dmesg(opts: DmesgOptions) -> bytes:
    """The text ``vmcore dmesg`` prints for ``opts`` (of an incomplete dump, what can be read)."""
    return read_dmesg(opts)[0]


def incomplete_line(damage: str) -> str:
    """The first line ``vmcore info`` and ``vmcore dmesg`` print for a dump that is not whole."""
    return f"pykexec: DUMP INCOMPLETE: {damage}\n"


def read_dmesg(opts: DmesgOptions) -> tuple[bytes, str, str]:
    """(text, why the dump is incomplete or "", what of its log is lost or "") for ``opts``.
    A dump that is not whole and cannot be read says both in its error."""
    from pykexec.vmcore.errors import VmcoreError
    from pykexec.vmcore.open import open_dump

    with open_dump(opts.path) as core:
        damage = core.damage()
        try:
            text, lost = _read_dmesg(core, opts, damage)
        except VmcoreError as err:
            if not damage:
                raise
            raise VmcoreError(f"DUMP INCOMPLETE: {damage}: {err}") from None
        return text, damage, lost


def _read_dmesg(core: ElfCore | KdumpCore, opts: DmesgOptions, damage: str) -> tuple[bytes, str]:
    from pykexec.vmcore.printk import boot_time, format_log, parse_levels, read_log

    levels = parse_levels(opts.levels) if opts.levels is not None else None
    if opts.xen:
        from pykexec.vmcore.xen import xen_console_ring

        return xen_console_ring(core, opts.xen_syms), ""
    source: DumpMemory = core
    if any(n.name == b"Xen" for n in core.notes):
        # A dump of a Xen machine: its "physical" addresses are machine addresses,
        # so dom0's log is read through dom0's page tables and p2m.
        from pykexec.vmcore.xen import dom0_memory, is_xen_dump

        if is_xen_dump(core.notes):
            source = dom0_memory(core)
    log = read_log(source, lenient=bool(damage))
    boot = boot_time(log, source.require_vmcoreinfo().crashtime) if opts.ctime else None
    return format_log(log, levels=levels, decode=opts.decode, boot=boot, show_caller=opts.show_caller), log.lost


# -- info ----------------------------------------------------------------------------------

def info_parser() -> Parser:
    parser = _parser("info", INFO_DESCRIPTION)
    parser.add_argument("--json", action="store_true", help="the description as JSON")
    parser.add_argument("operands", nargs="*", metavar="PATH",
                        help="the dump: /proc/vmcore, an ELF core or a kdump-compressed file, "
                             "or either as a flattened stream (-F)")
    return parser


def info(argv: Sequence[str]) -> tuple[str, str] | None:
    """What ``vmcore info [--json] PATH`` prints, and "" or why the dump is not whole and
    what is missing (:func:`incomplete_line`); None when help was asked for."""
    from pykexec.vmcore import info as info_mod
    from pykexec.vmcore.open import open_dump

    args = info_parser().parse_anywhere(argv)
    if args.help:
        return None
    if len(args.operands) != 1:
        raise UsageError("expected exactly one dump file (PATH)")
    with open_dump(args.operands[0]) as core:
        description = info_mod.describe(core)
        damage = core.damage()
    if args.json:
        import json

        if damage:
            description["incomplete"] = damage
        return json.dumps(description, indent=2) + "\n", damage
    return info_mod.render_text(description), damage


# -- save ----------------------------------------------------------------------------------

class _Number(argparse.Action):
    """An integer option whose error names the spelling given (``-d`` or ``--dump-level``).
    ``base`` 0 takes 0x1f as well; ``positive`` wants plain digits, 1 or more."""

    def __init__(self, *args: Any, base: int = 10, positive: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.base = base
        self.positive = positive

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        text = str(values)
        if self.positive:
            if not text.isdigit() or int(text) < 1:
                raise UsageError(f"{option_string} needs a positive number, not {text!r}")
        try:
            setattr(namespace, self.dest, int(text, self.base))
        except ValueError:
            raise UsageError(f"{option_string} needs a number, not {text!r}") from None


class _DomainIds(argparse.Action):
    """A repeatable Xen domain id (0 to 0x7fef, decimal or 0x-hex)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        text = str(values)
        try:
            value = int(text, 0)
        except ValueError:
            value = -1
        if not 0 <= value < 0x7FF0:
            raise UsageError(f"{option_string} needs a domain id (0 to 32751), not {text!r}")
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), value])


def save_parser() -> Parser:
    parser = _parser("save", SAVE_DESCRIPTION, SAVE_EPILOG)
    unset = argparse.SUPPRESS  # options not given stay out: save()'s defaults apply
    parser.add_argument("--format", dest="fmt", metavar="FORMAT", default=unset,
                        help="kdump (default) or elf: an uncompressed ELF core with the same pages, as "
                             "makedumpfile -E writes (read by vmcore-dmesg, crash, gdb); left-out pages read as zeros")
    parser.add_argument("--compress", metavar="KIND", default=unset,
                        help="zstd (default), zlib (readable by older makedumpfile/crash builds without zstd), "
                             "lzo, snappy (makedumpfile -l, -p) or none")
    parser.add_argument("--level", action=_Number, metavar="N", default=unset,
                        help="compression level: zstd -50 to 19 (default 1, as makedumpfile -z; negative levels "
                             "are faster and larger), zlib 1 to 9 (default 1, as makedumpfile -c)")
    parser.add_argument("-d", "--dump-level", action=_Number, base=0, metavar="N", default=unset,
                        help="makedumpfile's dump level, the sum of what to leave out: 1 zero pages, 2 page cache, "
                             "4 page cache with private data, 8 user data, 16 free pages (the per-CPU lists' "
                             "too); default 31, 0 keeps "
                             "every page")
    parser.add_argument("--threads", action=_Number, positive=True, metavar="N", default=unset,
                        help="compression threads (default: one per CPU)")
    parser.add_argument("-c", dest="compress", action="store_const", const="zlib", default=unset,
                        help="makedumpfile's spelling of --compress zlib")
    parser.add_argument("-z", dest="compress", action="store_const", const="zstd", default=unset,
                        help="makedumpfile's spelling of --compress zstd")
    parser.add_argument("-E", dest="fmt", action="store_const", const="elf", default=unset,
                        help="makedumpfile's spelling of --format elf")
    parser.add_argument("-F", "--flatten", action="store_true", default=unset,
                        help="write to standard output, in makedumpfile's flattened format (as makedumpfile -F)")
    parser.add_argument("-l", dest="compress", action="store_const", const="lzo", default=unset,
                        help="makedumpfile's spelling of --compress lzo")
    parser.add_argument("-p", dest="compress", action="store_const", const="snappy", default=unset,
                        help="makedumpfile's spelling of --compress snappy")
    parser.add_argument("--xen-keep-domain", dest="xen_keep_domains", action=_DomainIds, metavar="ID", default=unset,
                        help="a Xen dump: keep this domain's pages too (repeatable); by default Xen's and dom0's "
                             "are kept, other domains' left out (dump level bit 8)")
    parser.add_argument("-f", "--force", action="store_true", default=unset, help="overwrite DST if it exists")
    parser.add_argument("operands", nargs="*", metavar="SRC DST",
                        help="the dump to read (/proc/vmcore, an ELF core) and the file to write "
                             "(-: standard output, as -F)")
    return parser


def parse_save_args(argv: Sequence[str]) -> dict[str, object] | None:
    """Options of ``vmcore save`` as keyword arguments of
    :func:`pykexec.vmcore.save.save`; None for --help."""
    from pykexec.vmcore.output import STDOUT

    opts = vars(save_parser().parse_anywhere(argv))
    if opts.pop("help"):
        return None
    paths = opts.pop("operands")
    if opts.pop("flatten", False):
        if paths[1:] == [STDOUT]:
            paths = paths[:1]
        if len(paths) != 1:
            raise UsageError("-F writes to standard output: expected SRC alone (redirect the output)")
        paths.append(STDOUT)
    if len(paths) != 2:
        raise UsageError("expected SRC and DST")
    opts["src"], opts["dst"] = paths
    return opts


def save_command(argv: Sequence[str]) -> int:
    """``pykexec vmcore save ...``; returns the exit status (one line on stderr on failure)."""
    from pykexec.vmcore import save as save_mod
    from pykexec.vmcore.output import STDOUT

    try:
        opts = parse_save_args(argv)
        if opts is None:
            sys.stdout.write(save_parser().format_help())
            return 0
        if opts["dst"] == STDOUT and sys.stdout.isatty():
            raise UsageError("standard output is a terminal: redirect the dump (> FILE, | ssh HOST 'cat > FILE')")
        result = save_mod.save(**opts)  # type: ignore[arg-type]  # the keywords parse_save_args made
    except KexecError as err:
        return report(err, "pykexec vmcore save")
    except KeyboardInterrupt:
        sys.stderr.write("pykexec: interrupted; the dump is flagged incomplete\n")
        return 130
    dst = "standard output" if opts["dst"] == STDOUT else str(opts["dst"])
    if result.filter_note:
        sys.stderr.write(f"pykexec: {result.filter_note}\n")
    if result.incomplete:
        sys.stderr.write(f"pykexec: {dst} is INCOMPLETE ({result.saved_pages} of "
                         f"{result.ram_pages - sum(result.excluded.values())} pages saved): "
                         f"{result.incomplete}\n")
        return 1
    if sys.stderr.isatty():
        sys.stderr.write(save_mod.summary(result, dst))
    return 0


# -- the command ---------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """``pykexec vmcore COMMAND ...``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if not argv or argv[0] in ("-h", "--help"):
            sys.stdout.write(overview())
            return 0 if argv else 2
        command, args = argv[0], argv[1:]
        if command == "save":
            return save_command(args)
        if command == "reassemble":
            from pykexec.vmcore import reassemble

            return reassemble.command(args, _parser("reassemble", reassemble.DESCRIPTION, reassemble.EPILOG))
        if command == "info":
            shown = info(args)
            if shown is None:
                sys.stdout.write(info_parser().format_help())
                return 0
            text, damage = shown
            if damage:  # on stderr, where scripts look for errors (--json: the JSON says it too)
                sys.stderr.write(incomplete_line(damage))
                sys.stderr.flush()
            sys.stdout.write(text)
            return 1 if damage else 0
        if command != "dmesg":
            raise UsageError(f"unknown vmcore command {command!r} (expected: dmesg, info, save or reassemble)")
        opts = parse_dmesg_args(args)
        if opts is None:
            sys.stdout.write(dmesg_parser().format_help())
            return 0
        out, damage, lost = read_dmesg(opts)
    except KexecError as err:
        return report(err, "pykexec vmcore")
    # One line on stderr, before the log: why the dump is not whole, what of its log is lost.
    if damage:
        sys.stderr.write(incomplete_line(f"{damage}; {lost}" if lost else damage))
    elif lost:
        sys.stderr.write(f"pykexec: {lost}\n")
    sys.stderr.flush()
    try:
        sys.stdout.buffer.write(out)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (| head): not an error; point stdout at /dev/null
        # so the flush at interpreter exit does not complain either.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1 if damage or lost else 0
    return 1 if damage or lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
