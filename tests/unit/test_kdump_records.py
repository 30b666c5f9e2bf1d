"""The saved crashes on a target: crash directories, record.json, listing and retention."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pykexec.kdump import records as R

WHEN = datetime(2026, 12, 6, 4, 30, 12, tzinfo=timezone.utc)
RELEASE = "6.1.0-57-cloud-amd64"


def saved_crash(target: Path, when: datetime = WHEN, *, complete: bool = True, dump: bytes = b"D" * 100,
                **changes: object) -> R.CrashRecord:
    """A crash directory as the capture leaves it: vmcore, dmesg.txt, record.json."""
    directory = R.new_crash_dir(target, RELEASE, when)
    (directory / R.DUMP_FILE).write_bytes(dump)
    (directory / R.LOG_FILE).write_text("[    1.000000] booted\n[   12.345678] Kernel panic - not syncing: "
                                        "sysrq triggered crash\n")
    values: dict[str, object] = dict(id=directory.name, kernel_release=RELEASE,
                                     crash_time=when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                     panic="Kernel panic - not syncing: sysrq triggered crash", complete=complete,
                                     dump_bytes=len(dump), capture_seconds=12.3, dump_level=31, compression="zstd")
    values.update(changes)
    record = R.CrashRecord(**values)
    R.write_record(directory, record)
    return record


def test_crash_directory_is_named_by_utc_time_and_release(tmp_path: Path) -> None:
    local = WHEN.astimezone(timezone(timedelta(hours=2)))
    directory = R.new_crash_dir(tmp_path / "crash", RELEASE, local)
    assert directory == tmp_path / "crash" / "2026-12-06-04:30:12-6.1.0-57-cloud-amd64"
    assert directory.is_dir()
    again = R.new_crash_dir(tmp_path / "crash", RELEASE, WHEN)
    assert again.name == "2026-12-06-04:30:12-6.1.0-57-cloud-amd64#1"


def test_record_round_trips_through_json(tmp_path: Path) -> None:
    record = saved_crash(tmp_path)
    path = tmp_path / record.id / R.RECORD_FILE
    data = json.loads(path.read_text())
    assert data["panic"] == "Kernel panic - not syncing: sysrq triggered crash"
    assert "directory" not in data
    assert set(data) == {"id", "kernel_release", "crash_time", "panic", "complete", "dump", "dump_bytes", "log",
                         "capture_seconds", "dump_level", "compression", "error", "xen_log"}
    back = R.read_record(tmp_path / record.id)
    assert back == record
    assert back.directory == tmp_path / record.id
    assert not list(tmp_path.glob(f"*/{R.RECORD_FILE}.tmp"))


def test_list_is_newest_first_and_ignores_other_directories(tmp_path: Path) -> None:
    old = saved_crash(tmp_path, WHEN - timedelta(days=1))
    new = saved_crash(tmp_path, WHEN)
    (tmp_path / "202401011230").mkdir()  # a kdump-tools crash directory: not ours
    (tmp_path / "notes.txt").write_text("x")
    assert [r.id for r in R.list_records(tmp_path)] == [new.id, old.id]
    assert R.list_records(tmp_path / "absent") == []


def test_directory_without_record_is_incomplete_with_its_panic_line(tmp_path: Path) -> None:
    directory = R.new_crash_dir(tmp_path, RELEASE, WHEN)
    (directory / R.LOG_FILE).write_text("<0>[   12.345678] Kernel panic - not syncing: Fatal exception\n")
    (records,) = R.list_records(tmp_path)
    assert records.complete is False
    assert records.kernel_release == RELEASE
    assert records.crash_time == "2026-12-06T04:30:12Z"
    assert records.panic == "Kernel panic - not syncing: Fatal exception"
    assert records.dump is None and records.log == R.LOG_FILE
    assert records.error == "no record.json: the capture did not finish"


@pytest.mark.parametrize("text, why", [
    ("{", "record.json is unreadable"),
    ('{"id": "x", "crash_time": "t"}', "no 'kernel_release'"),
    ('{"id": "x", "kernel_release": "r", "crash_time": "t", "complete": "yes"}', "'complete' is str"),
    ('{"id": "x", "kernel_release": "r", "crash_time": "t", "dump_bytes": true}', "'dump_bytes' is bool"),
    ('{"id": "x", "kernel_release": "r", "crash_time": "t", "dump": "../etc/passwd"}', "'dump' is not a file"),
])
def test_bad_record_is_incomplete(tmp_path: Path, text: str, why: str) -> None:
    directory = R.new_crash_dir(tmp_path, RELEASE, WHEN)
    (directory / R.RECORD_FILE).write_text(text)
    record = R.read_record(directory)
    assert record.complete is False
    assert record.error is not None and why in record.error


def test_complete_record_with_a_short_or_missing_dump_is_not_complete(tmp_path: Path) -> None:
    record = saved_crash(tmp_path)
    directory = tmp_path / record.id
    with open(directory / R.DUMP_FILE, "r+b") as f:
        f.truncate(10)
    back = R.read_record(directory)
    assert back.complete is False and back.error == "the dump vmcore has 10 bytes, the record says 100"
    (directory / R.DUMP_FILE).unlink()
    assert R.read_record(directory).error == "the dump vmcore is missing"


def test_incomplete_record_stays_incomplete(tmp_path: Path) -> None:
    saved_crash(tmp_path, complete=False, error="No space left on device")
    (record,) = R.list_records(tmp_path)
    assert record.complete is False and record.error == "No space left on device"


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    made = [saved_crash(tmp_path, WHEN + timedelta(minutes=i)) for i in range(4)]
    (tmp_path / "keep-me").mkdir()
    removed = R.prune(tmp_path, 2)
    assert sorted(p.name for p in removed) == sorted(r.id for r in made[:2])
    assert [r.id for r in R.list_records(tmp_path)] == [made[3].id, made[2].id]
    assert (tmp_path / "keep-me").is_dir()
    assert R.prune(tmp_path, 0) == [] and len(R.list_records(tmp_path)) == 2


def test_same_second_crashes_sort_by_their_number(tmp_path: Path) -> None:
    first = saved_crash(tmp_path)
    second = saved_crash(tmp_path)
    assert [r.id for r in R.list_records(tmp_path)] == [second.id, first.id]


@pytest.mark.parametrize("log, line", [
    ("[ 1.0] a\n[ 2.0] Kernel panic - not syncing: first\n[ 3.0] Kernel panic - not syncing: last\n",
     "Kernel panic - not syncing: last"),
    ("[ 1.0] BUG: kernel NULL pointer dereference, address: 0000\n[ 2.0] Oops: 0002 [#1] SMP\n",
     "BUG: kernel NULL pointer dereference, address: 0000"),
    ("nothing here\n", ""),
])
def test_panic_line(log: str, line: str) -> None:
    assert R.panic_line(log) == line
