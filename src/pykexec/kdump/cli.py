"""``pykexec kdump COMMAND``: the command line of the kdump service.

One argparse parser (:class:`pykexec.argv.Parser`) with a subcommand each; argv
parsing and output only, the work is the service's modules'.  Every error is one
line on stderr (:func:`pykexec.errors.report`).  ``--config FILE`` reads another
configuration; ``--root DIR`` (hidden, for tests) puts every path the service uses
under DIR (:class:`pykexec.kdump.paths.Paths`).
"""

from __future__ import annotations

import argparse
import json
import sys

from pykexec.errors import KexecError, UsageError, report

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from pykexec.argv import Parser
    from pykexec.kdump.config import KdumpConfig
    from pykexec.kdump.paths import Paths

#: Each command's usage line and what it does, for its help and ``pykexec kdump --help``.
COMMANDS = {
    "enable": ("pykexec kdump enable [--now]",
               "install and enable pykexec-kdump.service: the crash kernel is loaded at every boot"),
    "disable": ("pykexec kdump disable [--now]", "disable and remove pykexec-kdump.service"),
    "load": ("pykexec kdump load [--force]",
             "load the crash kernel (again only when its kernel, initrd or configuration changed)"),
    "unload": ("pykexec kdump unload", "unload the crash kernel"),
    "status": ("pykexec kdump status [--json]",
               "loaded or not, memory reserved and needed, target, dump level, the last crashes"),
    "estimate": ("pykexec kdump estimate [--json] [--no-dump]",
                 "the crashkernel= this machine needs, and the dump's predicted size and capture time"),
    "test": ("pykexec kdump test [--json] [--crash --yes]",
             "every check possible without crashing; --crash --yes panics this machine"),
    "list": ("pykexec kdump list [--json]", "the saved crashes: time, kernel, dump size, complete or not, panic"),
    "show": ("pykexec kdump show [--json] [-n LINES] [ID]",
             "a saved crash (default: the last): its record, the log's end, the panicking CPU's registers"),
}
EPILOG = "Configuration: /etc/pykexec/kdump.toml (docs/kdump-service.md).  pykexec kdump COMMAND --help: its options."
MiB = 1 << 20
#: The commands that ask Xen (in a dom0) what is loaded or reserved, or load: they set up
#: dom0's Xen interfaces first when missing (:mod:`pykexec.kdump.xen_dom0`).
XEN_COMMANDS = ("load", "unload", "status", "estimate", "test")


def build_parser() -> tuple[Parser, dict[str, Parser]]:
    """The ``pykexec kdump`` parser, and its parser of each command."""
    from pykexec.argv import Parser

    common = Parser(add_help=False)
    common.add_argument("-h", "--help", action="store_true", help="show this help")
    common.add_argument("--config", metavar="FILE", help="the configuration file (default: /etc/pykexec/kdump.toml)")
    common.add_argument("--root", default="/", help=argparse.SUPPRESS)  # every path under DIR: for tests
    parser = Parser(prog="pykexec kdump", usage="\n       ".join(u for u, _ in COMMANDS.values()),
                    description="kdump as a service: load a crash kernel at boot, capture a dump when the "
                                "kernel panics, list the crashes saved.", epilog=EPILOG, add_help=False,
                    unknown_option="unknown option {}")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    commands: dict[str, Parser] = {}
    for name, (usage, summary) in COMMANDS.items():
        commands[name] = p = sub.add_parser(name, usage=usage, help=summary, description=summary[0].upper() + summary[1:] + ".",
                           parents=[common], add_help=False, allow_abbrev=False,
                           unknown_option="unknown option {}")
        if name in ("status", "estimate", "test", "list", "show"):
            p.add_argument("--json", action="store_true", help="as JSON")
        if name == "status":
            p.epilog = "Exit status: 0 when the crash kernel is loaded, 1 when it is not."
        if name in ("enable", "disable"):
            p.add_argument("--now", action="store_true",
                           help="also start (load) or stop (unload) the service now")
    commands["load"].add_argument("--force", action="store_true", help="load even if nothing changed")
    commands["estimate"].add_argument("--no-dump", action="store_true",
                                         help="the crashkernel= part only: no scan of /proc/kcore")
    commands["test"].add_argument("--crash", action="store_true",
                                     help="panic this machine through sysrq, to test the capture for real")
    commands["test"].add_argument("--yes", action="store_true", help="confirm --crash")
    commands["show"].add_argument("-n", "--lines", type=int, default=30, metavar="LINES",
                                     help="lines of the log to show (default 30)")
    commands["show"].add_argument("id", nargs="?", metavar="ID",
                                     help="the crash: its ID or time, or the start of either (default: the last)")
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    """``pykexec kdump COMMAND ...``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, commands = build_parser()
    try:
        if not argv or argv[0] in ("-h", "--help"):
            sys.stdout.write(parser.format_help())
            return 0 if argv else 2
        if argv[0] not in COMMANDS:
            raise UsageError(f"unknown kdump command {argv[0]!r} (expected: {', '.join(COMMANDS)})")
        args = parser.parse_args(argv)
        if args.help:
            sys.stdout.write(commands[args.command].format_help())
            return 0
        return run(args)
    except KexecError as err:
        from pykexec.kdump.config import ConfigError

        if isinstance(err, ConfigError):  # the file is wrong, not the command line: no --help to read
            return report(err)
        return report(err, f"pykexec kdump {argv[0]}" if argv and argv[0] in COMMANDS else "pykexec kdump")


def run(args: argparse.Namespace) -> int:
    from pykexec.kdump.config import load_config
    from pykexec.kdump.paths import Paths

    paths = Paths(args.root)
    config = load_config(paths.under(args.config) if args.config else paths.config)
    command = args.command
    if command in XEN_COMMANDS:
        _prepare_xen(paths, command)
    if command in ("enable", "disable"):
        from pykexec.kdump import unit

        done = unit.enable(paths, config, now=args.now) if command == "enable" else \
            unit.disable(paths, now=args.now)
        _say(*done)
        return 0
    if command == "load":
        return _load(config, paths, args.force)
    if command == "unload":
        from pykexec.kdump import service

        _say("unloaded the crash kernel" if service.unload(paths) else "no crash kernel was loaded")
        return 0
    if command == "status":
        return _status(config, paths, args.json)
    if command == "estimate":
        return _estimate(config, paths, args.json, dump=not args.no_dump)
    if command == "test":
        return _test(config, paths, args)
    from pykexec.kdump import crashes

    if command == "list":
        listed = crashes.local_records(config, paths)
        if args.json:
            _json([crashes.record_json(r) for r in listed])
        else:
            sys.stdout.write(crashes.render_list(listed))
        return 0
    report_ = crashes.describe(crashes.find(crashes.local_records(config, paths), args.id), args.lines)
    if args.json:
        _json(report_)
    else:
        sys.stdout.write(crashes.render_show(report_))
    return 0


def _prepare_xen(paths: Paths, command: str) -> None:
    """dom0's Xen interfaces (a no-op elsewhere); failing, ``load`` stops with the reason,
    the others say it and go on (status can still tell what it can)."""
    from pykexec.kdump import xen_dom0

    try:
        done = xen_dom0.prepare(paths)
    except KexecError as err:
        if command == "load":
            raise
        sys.stderr.write(f"pykexec kdump: Xen dom0: {err}\n")
        return
    for line in done:
        sys.stderr.write(f"pykexec kdump: Xen dom0: {line}\n")


def _say(*lines: str) -> None:
    sys.stdout.write("".join(f"pykexec kdump: {line}\n" for line in lines))


def _json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _load(config: KdumpConfig, paths: Paths, force: bool) -> int:
    from pykexec.kdump import service

    outcome = service.load(config, paths, force=force)
    if outcome.collect_error:
        sys.stderr.write(f"pykexec kdump: {outcome.collect_error}\n")
    if outcome.collected is not None:
        got = outcome.collected
        _say(f"collected the dump on {config.target} into {got.directory} "
             f"({'complete' if got.complete else 'INCOMPLETE: ' + str(got.error)})")
    crash = outcome.crash_kernel
    files = f"{crash.kernel} with {crash.initrd}"
    if outcome.action == "unchanged":
        _say(f"already loaded, unchanged: {files}")
    elif outcome.action == "reloaded":
        _say(f"reloaded ({', '.join(outcome.changed)} changed): {files}")
    else:
        _say(f"loaded {files}")
    return 0


def _status(config: KdumpConfig, paths: Paths, as_json: bool) -> int:
    from pykexec.kdump import service

    st = service.status(config, paths)
    if as_json:
        _json(st)
    else:
        state = st["loaded"]
        loaded = "loaded" if state is True else "not loaded" if state is False else \
            f"unknown ({st.get('loaded_error')})"
        from pykexec.plan import BACKEND_XEN

        if state is True and st.get("loaded_through") == BACKEND_XEN:
            loaded += " through Xen"
        lines = [f"crash kernel: {loaded} ({st['kernel']}, {st['initrd']})"]
        changed = st["changed_since_load"]
        assert isinstance(changed, list)
        if changed:
            lines.append(f"  changed since it was loaded: {', '.join(changed)} (pykexec kdump load)")
        reserved = st["reserved_bytes"]
        lines.append(f"memory: {_mib(reserved) if reserved is not None else 'unknown'} reserved, "
                     f"about {_mib(st['needed_bytes'])} needed")
        lines.append(f"target: {st['target']}, dump level {st['dump_level']}, {st['compression']}")
        crashes = st["crashes"]
        assert isinstance(crashes, list)
        lines.append("last crashes: " + ("none" if not crashes else ""))
        from pykexec.kdump.crashes import crash_line

        lines += [f"  {crash_line(c)}" for c in crashes]
        sys.stdout.write("\n".join(lines) + "\n")
    return 0 if st["loaded"] else 1


def _mib(n: object) -> str:
    return f"{int(n) / MiB:.0f} MiB"  # type: ignore[call-overload]


def _estimate(config: KdumpConfig, paths: Paths, as_json: bool, *, dump: bool) -> int:
    from pykexec.kdump import dump_size, estimate, service
    from pykexec.kdump.kcore import KcoreUnavailable

    prediction = None
    why = "not asked for (--no-dump)"
    if dump:
        try:
            prediction = dump_size.predict_here(config, paths)
        except KcoreUnavailable as err:
            why = str(err)
    crash = service.crash_kernel(config, paths, build=False)
    scan = {}
    if prediction is not None:
        scan = {"max_pfn": prediction.max_pfn, "ram_pages": prediction.ram_pages,
                "exclusion_ranges": prediction.exclusion_ranges}
    need = estimate.crashkernel_size(crash.kernel, crash.initrd, crash.append, paths, measure_capture=True, **scan)
    reserved = service.reserved_bytes(paths)
    if as_json:
        _json({"crashkernel": need.to_dict(), "reserved_bytes": reserved,
               "dump": prediction.to_dict() if prediction is not None else None,
               "dump_unavailable": None if prediction is not None else why})
        return 0
    lines = [f"{need.option} (the sum, {need.sum / MiB:.1f} MiB, rounded up to 16 MiB); "
             f"{_mib(reserved) if reserved is not None else 'an unknown size'} reserved now"]
    lines += [f"  {t.bytes / MiB:7.1f} MiB  {t.name}: {t.how}" for t in need.terms]
    if prediction is None:
        lines.append(f"dump: {why}")
    else:
        p = prediction
        lines.append(f"dump at level {p.dump_level}, {p.compression}: about {p.predicted_bytes / MiB:.0f} MiB "
                     f"({p.low_bytes / MiB:.0f} to {p.high_bytes / MiB:.0f} MiB), {p.kept_pages} of "
                     f"{p.ram_pages} pages kept; capture about {p.capture_seconds:.0f} s")
        lines += [f"  {note}" for note in (p.filter_note, *p.notes) if note]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _test(config: KdumpConfig, paths: Paths, args: argparse.Namespace) -> int:
    from pykexec.kdump import selftest

    if args.crash:
        selftest.crash_now(paths, yes=args.yes)
        return 0  # not reached: the machine panics
    if args.yes:
        raise UsageError("--yes confirms --crash, which was not given")
    from pykexec.doctor import FAIL, render
    from pykexec.kdump import dump_size
    from pykexec.kdump.kcore import KcoreUnavailable

    predicted = ram = None
    try:
        p = dump_size.predict_here(config, paths, write_probe=False)
        predicted, ram = p.high_bytes, (p.max_pfn, p.ram_pages, p.exclusion_ranges)
    except KcoreUnavailable:
        pass
    findings = selftest.run_checks(config, paths, predicted=predicted, ram=ram)
    if args.json:
        _json([f._asdict() for f in findings])
    else:
        sys.stdout.write(render(findings))
    return 1 if any(f.status == FAIL for f in findings) else 0
