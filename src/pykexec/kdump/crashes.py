"""The saved crashes as ``kdump list`` and ``kdump show`` present them, as
``coredumpctl list`` and ``info`` present core dumps: one line per crash (time, kernel
release, dump size, complete or not, the panic line); one crash's record, the end of
its log, and the registers of the CPU that panicked, read from its dump.
"""

from __future__ import annotations

import re

from pykexec.errors import KexecError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pykexec.kdump.config import KdumpConfig
    from pykexec.kdump.paths import Paths
    from pykexec.kdump.records import CrashRecord

MiB = 1 << 20
#: "CPU: 1 PID: 812 Comm: bash" (6.12 and later: "CPU: 1 UID: 0 PID: 812 Comm: bash"), in an oops or panic.
_CPU_LINE = re.compile(r"\bCPU: (\d+) (?:UID: \d+ )?PID: (\d+) Comm:")
#: Registers shown first, then the rest in pr_reg order.
_FIRST_REGISTERS = ("rip", "rsp", "rbp", "eflags")


def local_records(config: KdumpConfig, paths: Paths) -> list[CrashRecord]:
    """The crashes on the configured target, newest first; a target that is not a
    local directory cannot be listed here (one line saying where they are)."""
    from pykexec.kdump import records

    target = config.parsed_target
    if target.kind == "ssh":
        raise KexecError(f"the crashes are saved on {target.host} ({config.target}): list them there")
    if target.kind == "raw":
        from pykexec.kdump.raw_target import collect_dir

        return records.list_records(collect_dir(paths))
    return records.list_records(paths.under(target.path))


def record_json(record: CrashRecord) -> dict[str, object]:
    """A crash as ``list --json`` prints it: its record, and where it is."""
    return {**record.to_dict(), "directory": str(record.directory) if record.directory else None}


def _time(crash_time: str) -> str:
    return crash_time.replace("T", " ").rstrip("Z") or "?"


def crash_line(crash: dict[str, object]) -> str:
    """One crash (a record's dict) in one line, for ``list`` and ``status``."""
    size = crash.get("dump_bytes")
    size_text = f"{int(size) / MiB:.1f} MiB" if isinstance(size, int) else "-"
    complete = "complete" if crash.get("complete") else "INCOMPLETE"
    return f"{_time(str(crash.get('crash_time', ''))):19}  {str(crash.get('kernel_release')):26}  " \
           f"{size_text:>10}  {complete:10}  {crash.get('panic') or '-'}"


def render_list(crashes: list[CrashRecord]) -> str:
    if not crashes:
        return "No crashes saved.\n"
    head = f"{'TIME':19}  {'KERNEL':26}  {'DUMP':>10}  {'STATE':10}  PANIC\n"
    return head + "".join(crash_line(r.to_dict()) + "\n" for r in crashes)


def find(crashes: list[CrashRecord], wanted: str | None) -> CrashRecord:
    """The crash named by ``wanted``: its ID, its time (``2026-12-06 04:30:12`` or as
    in the ID), or the start of either, matching one crash; the newest without."""
    if not crashes:
        raise KexecError("no crashes are saved")
    if wanted is None:
        return crashes[0]
    key = wanted.strip().replace(" ", "-").replace("T", "-").rstrip("Z")
    exact = [r for r in crashes if r.id == wanted]
    matches = exact or [r for r in crashes if r.id.startswith(key)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UsageError(f"no saved crash is {wanted!r} (pykexec kdump list shows them)")
    raise UsageError(f"{wanted!r} matches {len(matches)} crashes: give more of the ID")


def _tail(record: CrashRecord, name: str | None, lines: int) -> list[str]:
    if name is None or record.directory is None:
        return []
    try:
        text = (record.directory / name).read_text(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:] if lines > 0 else []


def panicking_cpu(record: CrashRecord) -> tuple[dict[str, object] | None, str]:
    """The registers of the CPU that panicked, from the dump's notes, and "" or why
    there are none.  That CPU is the one of the log's last "CPU: N PID: P" line
    (the oops or panic report), found by its pid, else by its number; a dump of one
    CPU needs no log."""
    from pykexec.vmcore.info import cpu_states
    from pykexec.vmcore.open import open_dump

    if record.directory is None or record.dump is None:
        return None, "no dump"
    try:
        with open_dump(record.directory / record.dump) as core:
            states = cpu_states(core)
    except KexecError as err:
        return None, f"cannot read the dump: {err}"
    if not states:
        return None, "the dump holds no CPU state"
    log = "\n".join(_tail(record, record.log, 1 << 30))
    found = _CPU_LINE.findall(log)
    if found:
        cpu, pid = int(found[-1][0]), int(found[-1][1])
        by_pid = [s for s in states if s.get("pid") == pid]
        if len(by_pid) == 1:
            return by_pid[0], ""
        if cpu < len(states):
            return states[cpu], ""
    if len(states) == 1:
        return states[0], ""
    return None, f"the log does not say which of the {len(states)} CPUs panicked"


def describe(record: CrashRecord, lines: int) -> dict[str, object]:
    """What ``show`` prints: the record, the end of the log (and of Xen's console
    ring), the panicking CPU's registers."""
    cpu, why = panicking_cpu(record)
    out: dict[str, object] = {"record": record_json(record), "log_tail": _tail(record, record.log, lines)}
    if record.xen_log:
        out["xen_log_tail"] = _tail(record, record.xen_log, lines)
    out["panicking_cpu"] = cpu
    if cpu is None:
        out["panicking_cpu_unknown"] = why
    return out


def render_show(report: dict[str, object]) -> str:
    rec = report["record"]
    assert isinstance(rec, dict)
    state = "complete" if rec.get("complete") else "INCOMPLETE"
    lines = [f"crash {rec['id']} ({state})", f"  kernel:  {rec['kernel_release']}",
             f"  time:    {_time(str(rec['crash_time']))} UTC", f"  panic:   {rec.get('panic') or '-'}"]
    if rec.get("dump"):
        size = rec.get("dump_bytes")
        took = rec.get("capture_seconds")
        lines.append(f"  dump:    {rec['directory']}/{rec['dump']}, "
                     + (f"{int(size)} bytes" if isinstance(size, int) else "size unknown")
                     + (f", {rec['compression']}" if rec.get("compression") else "")
                     + (f", dump level {rec['dump_level']}" if rec.get("dump_level") is not None else "")
                     + (f", saved in {took:.1f} s" if isinstance(took, (int, float)) else ""))
    if rec.get("error"):
        lines.append(f"  error:   {rec['error']}")
    for key, title in (("log_tail", rec.get("log")), ("xen_log_tail", rec.get("xen_log"))):
        tail = report.get(key)
        if isinstance(tail, list) and tail:
            lines.append(f"{title} (last {len(tail)} lines):")
            lines += [f"  {line}" for line in tail]
    cpu = report.get("panicking_cpu")
    if isinstance(cpu, dict):
        regs = cpu.get("registers")
        lines.append(f"CPU {cpu['cpu']} (pid {cpu.get('pid', '?')}), the one that panicked:")
        if isinstance(regs, dict):
            names = [*_FIRST_REGISTERS, *(n for n in regs if n not in _FIRST_REGISTERS)]
            cells = [f"{n:>8} {regs[n]:>18}" for n in names if n in regs]
            lines += ["  " + "".join(cells[i:i + 3]) for i in range(0, len(cells), 3)]
    else:
        lines.append(f"registers: {report.get('panicking_cpu_unknown')}")
    return "\n".join(lines) + "\n"
