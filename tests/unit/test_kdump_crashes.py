"""kdump list and show: the saved crashes on a temporary root, one line each (and one
JSON object each), and one crash's record, log tail and panicking CPU's registers."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pykexec.errors import KexecError, UsageError
from pykexec.kdump import crashes, records
from pykexec.kdump.config import KdumpConfig
from pykexec.kdump.paths import Paths
from pykexec.layouts import elf as E
from pykexec.main import main

from support.vmcore_synth import Memory, write_core

WHEN = datetime(2026, 12, 6, 4, 30, 12, tzinfo=timezone.utc)
RELEASE = "6.1.0-57-cloud-amd64"
PANIC = "Kernel panic - not syncing: sysrq triggered crash"
LOG = ("[    1.000000] Linux version 6.1.0-57-cloud-amd64\n"
       "[   12.000000] sysrq: Trigger a crash\n"
       "[   12.000100] CPU: 1 PID: 812 Comm: bash Not tainted 6.1.0-57-cloud-amd64 #1 Debian 6.1.192-3\n"
       f"[   12.000200] {PANIC}\n")


def prstatus(pid: int, rip: int) -> bytes:
    st = E.Elf64_Prstatus_x86_64()
    st.pr_pid = pid
    st.pr_reg[E.X86_64_REGISTERS.index("rip")] = rip
    st.pr_reg[E.X86_64_REGISTERS.index("rsp")] = 0xFFFFC90000123F00
    return bytes(st)


def save_crash(target: Path, when: datetime, *, complete: bool = True, log: str = LOG) -> records.CrashRecord:
    """A crash directory: a two-CPU ELF dump (CPU 1 ran pid 812), its log, its record."""
    directory = records.new_crash_dir(target, RELEASE, when)
    dump = write_core(directory / records.DUMP_FILE, Memory.standard(4096), "OSRELEASE=6.1.0\nPAGESIZE=4096\n",
                      extra_notes=E.pack_note(b"CORE", E.NT_PRSTATUS, prstatus(812, 0xFFFFFFFF81234567)))
    (directory / records.LOG_FILE).write_text(log)
    record = records.CrashRecord(id=directory.name, kernel_release=RELEASE,
                                 crash_time=when.strftime("%Y-%m-%dT%H:%M:%SZ"), panic=PANIC, complete=complete,
                                 dump_bytes=dump.stat().st_size, capture_seconds=2.5, dump_level=31,
                                 compression="zstd", error=None if complete else "No space left on device")
    records.write_record(directory, record)
    return records.read_record(directory)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Paths, list[records.CrashRecord]]:
    paths = Paths(tmp_path)
    target = paths.under("/var/crash")
    old = save_crash(target, WHEN - timedelta(days=1), complete=False)
    new = save_crash(target, WHEN)
    return paths, [new, old]


def test_list_text(saved: tuple[Paths, list[records.CrashRecord]], capsys: pytest.CaptureFixture[str]) -> None:
    paths, _ = saved
    assert main(["kdump", "list", "--root", str(paths.root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["TIME", "KERNEL", "DUMP", "STATE", "PANIC"]
    assert lines[1].startswith(f"2026-12-06 04:30:12  {RELEASE}  ") and lines[1].endswith(f"  complete    {PANIC}")
    assert lines[2].startswith("2026-12-05 04:30:12") and f"  INCOMPLETE  {PANIC}" in lines[2]
    assert " MiB  " in lines[1]


def test_list_json(saved: tuple[Paths, list[records.CrashRecord]], capsys: pytest.CaptureFixture[str]) -> None:
    paths, made = saved
    assert main(["kdump", "list", "--json", "--root", str(paths.root)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [c["id"] for c in listed] == [r.id for r in made]
    assert [c["panic"] for c in listed] == [PANIC, PANIC]
    assert [c["complete"] for c in listed] == [True, False]
    assert listed[0]["directory"] == str(paths.under("/var/crash") / made[0].id)


def test_list_nothing_and_other_targets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kdump", "list", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "No crashes saved.\n"
    with pytest.raises(KexecError, match=r"^the crashes are saved on host \(ssh://u@host/crash\): list them there$"):
        crashes.local_records(KdumpConfig(target="ssh://u@host/crash"), Paths(tmp_path))


def test_find(saved: tuple[Paths, list[records.CrashRecord]]) -> None:
    _, made = saved
    assert crashes.find(made, None) == made[0]
    assert crashes.find(made, made[1].id) == made[1]
    assert crashes.find(made, "2026-12-05") == made[1]
    assert crashes.find(made, "2026-12-06 04:30:12") == made[0]
    assert crashes.find(made, "2026-12-06T04:30:12Z") == made[0]
    with pytest.raises(UsageError, match="'2026-12' matches 2 crashes: give more of the ID"):
        crashes.find(made, "2026-12")
    with pytest.raises(UsageError, match="no saved crash is '1999'"):
        crashes.find(made, "1999")
    with pytest.raises(KexecError, match="no crashes are saved"):
        crashes.find([], None)


def test_show_registers_of_the_cpu_that_panicked(saved: tuple[Paths, list[records.CrashRecord]],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    paths, made = saved
    assert main(["kdump", "show", "-n", "2", "--root", str(paths.root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"crash {made[0].id} (complete)\n  kernel:  {RELEASE}\n  time:    2026-12-06 04:30:12 UTC\n"
                          f"  panic:   {PANIC}\n  dump:    ")
    assert ", zstd, dump level 31, saved in 2.5 s\n" in out
    assert ("dmesg.txt (last 2 lines):\n"
            "  [   12.000100] CPU: 1 PID: 812 Comm: bash Not tainted 6.1.0-57-cloud-amd64 #1 Debian 6.1.192-3\n"
            f"  [   12.000200] {PANIC}\n"
            "CPU 1 (pid 812), the one that panicked:\n"
            "       rip 0xffffffff81234567     rsp 0xffffc90000123f00     rbp                0x0\n") in out
    assert main(["kdump", "show", "--json", "2026-12-05", "--root", str(paths.root)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["record"]["complete"] is False and shown["record"]["error"] == "No space left on device"
    assert shown["panicking_cpu"]["cpu"] == 1 and shown["panicking_cpu"]["pid"] == 812
    assert len(shown["log_tail"]) == 4


@pytest.mark.parametrize("log, cpu, why", [
    ("CPU: 0 UID: 0 PID: 0 Comm: swapper/0\n", 0, ""),  # 6.12's wording, pid 0 on both: by number
    ("no oops report\n", None, "the log does not say which of the 2 CPUs panicked"),
])
def test_panicking_cpu_from_the_log(tmp_path: Path, log: str, cpu: int | None, why: str) -> None:
    record = save_crash(tmp_path, WHEN, log=log)
    state, reason = crashes.panicking_cpu(record)
    assert (state["cpu"] if state else None, reason) == (cpu, why)


def test_show_without_a_readable_dump(tmp_path: Path) -> None:
    record = save_crash(tmp_path, WHEN)
    assert record.directory is not None
    (record.directory / records.DUMP_FILE).write_bytes(b"garbage")
    report = crashes.describe(record, 5)
    assert report["panicking_cpu"] is None
    assert str(report["panicking_cpu_unknown"]).startswith("cannot read the dump: ")
    assert "registers: cannot read the dump: " in crashes.render_show(report)
