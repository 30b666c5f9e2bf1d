"""The saved crashes on a target directory: one directory per crash,
``<target>/<YYYY-MM-DD-HH:MM:SS>-<release>/`` (UTC), holding ``vmcore``
(kdump-compressed; on an ssh target ``vmcore.flat``, the same as a flattened stream,
``vmcore.flat.part`` while it is not whole), ``dmesg.txt`` and ``record.json``
(:class:`CrashRecord`).

The capture (:mod:`pykexec.kdump.capture`) makes the directory
(:func:`new_crash_dir`), writes the record (:func:`write_record`) and prunes old
crashes (:func:`prune`); ``kdump list`` and ``show`` read them
(:func:`list_records`, :func:`read_record`).  A crash is complete only when its
record says so and its dump is there with the size the record gives: a directory
without a readable record, or whose record says ``complete: false``, is listed
as incomplete, never as complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path

RECORD_FILE = "record.json"
DUMP_FILE = "vmcore"
#: The dump as a flattened stream, as an ssh target stores it (kdump/capture_ssh.py).
FLAT_DUMP_FILE = "vmcore.flat"
#: Appended to a file's name until it is whole.
PART_SUFFIX = ".part"
#: The error of the record written before the dump, until the final one replaces it.
NOT_FINISHED = "the capture did not finish (the crash kernel stopped while saving)"
LOG_FILE = "dmesg.txt"
#: Xen's console ring, beside dom0's log, for the crash of a Xen machine.
XEN_LOG_FILE = "xen-dmesg.txt"
#: ``YYYY-MM-DD-HH:MM:SS``: sorts as the times do.
TIME_FORMAT = "%Y-%m-%d-%H:%M:%S"
_CRASH_DIR = re.compile(r"^(\d{4}-\d\d-\d\d-\d\d:\d\d:\d\d)-([^#]+)(?:#(\d+))?$")
#: Between a crash directory's name and its number when the name was taken.
SUFFIX = "#"
_LOG_TIME = re.compile(r"^(?:<\d+>)?\[\s*\d+\.\d+\]\s?")
#: Lines that say why a kernel died, most telling first.
_PANIC_MARKERS = ("Kernel panic - not syncing", "BUG:", "Oops:", "general protection fault", "Panic on ")


@dataclass(frozen=True)
class CrashRecord:
    """One crash, as ``record.json`` holds it (``directory`` is where it was read
    from, not part of the JSON).  ``crash_time`` is ISO 8601 UTC
    (``2026-12-06T04:30:12Z``); ``dump`` and ``log`` are file names in the crash
    directory (None: not written); ``error`` says what failed (None if nothing did);
    ``xen_log``: Xen's console ring, for the crash of a Xen machine."""

    id: str
    kernel_release: str
    crash_time: str
    panic: str = ""
    complete: bool = False
    dump: str | None = DUMP_FILE
    dump_bytes: int | None = None
    log: str | None = LOG_FILE
    capture_seconds: float | None = None
    dump_level: int | None = None
    compression: str | None = None
    error: str | None = None
    xen_log: str | None = None
    directory: Path | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, object]:
        """The record as ``record.json`` holds it."""
        data = asdict(self)
        del data["directory"]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: object, directory: Path | None = None) -> CrashRecord:
        """The record in ``data`` (parsed JSON); ValueError naming the first bad field."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        values: dict[str, object] = {}
        for f in fields(cls):
            if f.name == "directory" or f.name not in data:
                continue
            values[f.name] = _checked(f.name, data[f.name])
        for name in ("id", "kernel_release", "crash_time"):
            if name not in values:
                raise ValueError(f"no {name!r}")
        return cls(directory=directory, **values)  # type: ignore[arg-type]  # each value checked by _checked


_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,), "kernel_release": (str,), "crash_time": (str,), "panic": (str,), "complete": (bool,),
    "dump": (str, type(None)), "dump_bytes": (int, type(None)), "log": (str, type(None)),
    "capture_seconds": (float, int, type(None)), "dump_level": (int, type(None)),
    "compression": (str, type(None)), "error": (str, type(None)), "xen_log": (str, type(None)),
}


def _checked(name: str, value: object) -> object:
    wanted = _TYPES[name]
    if isinstance(value, bool) and bool not in wanted or not isinstance(value, wanted):
        raise ValueError(f"{name!r} is {type(value).__name__}")
    if name in ("dump", "log", "xen_log") and isinstance(value, str) and "/" in value:
        raise ValueError(f"{name!r} is not a file name in the crash directory")
    return value


def crash_dir_name(release: str, when: datetime) -> str:
    """``YYYY-MM-DD-HH:MM:SS-<release>``, in UTC (a naive ``when`` is taken as UTC)."""
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc)
    return f"{when.strftime(TIME_FORMAT)}-{re.sub(r'[/#]', '_', release) or 'unknown'}"


def new_crash_dir(target_dir: str | os.PathLike[str], release: str, when: datetime) -> Path:
    """Create and return the directory of a new crash (with its parents); a name
    already taken (two crashes in one second) gets ``#1``, ``#2``... appended."""
    target = Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    base = crash_dir_name(release, when)
    for n in range(1000):
        path = target / (base if n == 0 else f"{base}{SUFFIX}{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{target / base}: 1000 crash directories of that name")


def write_record(directory: str | os.PathLike[str], record: CrashRecord) -> Path:
    """Write ``record.json`` in ``directory`` whole or not at all (a temporary file,
    flushed to disk, then renamed), and return its path."""
    path = Path(directory) / RECORD_FILE
    tmp = path.with_name(RECORD_FILE + ".tmp")
    with open(tmp, "w") as f:
        f.write(record.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (9p, vfat) refuse to sync a directory
    finally:
        os.close(fd)


def read_record(directory: str | os.PathLike[str]) -> CrashRecord:
    """The crash in ``directory``, never passed off as complete unless it is.

    Without a readable ``record.json`` the record is made from the directory's name,
    incomplete, with ``error`` saying why (and the panic line of ``dmesg.txt`` if
    there is one).  A record that says complete is downgraded if its dump is missing
    or its size is not the one recorded."""
    path = Path(directory)
    try:
        record = CrashRecord.from_dict(json.loads((path / RECORD_FILE).read_text()), path)
    except FileNotFoundError:
        return _unrecorded(path, f"no {RECORD_FILE}: the capture did not finish")
    except (OSError, UnicodeDecodeError, ValueError) as err:  # json.JSONDecodeError is a ValueError
        return _unrecorded(path, f"{RECORD_FILE} is unreadable: {err}")
    if record.complete:
        problem = _dump_problem(path, record)
        if problem:
            return replace(record, complete=False, error=problem)
    return record


def _dump_problem(path: Path, record: CrashRecord) -> str:
    if record.dump is None:
        return "the record says complete but names no dump"
    try:
        size = (path / record.dump).stat().st_size
    except OSError:
        return f"the dump {record.dump} is missing"
    if record.dump_bytes is not None and size != record.dump_bytes:
        return f"the dump {record.dump} has {size} bytes, the record says {record.dump_bytes}"
    return ""


def _unrecorded(path: Path, error: str) -> CrashRecord:
    m = _CRASH_DIR.match(path.name)
    stamp, release = (m.group(1), m.group(2)) if m else ("", "")
    crash_time = ""
    if stamp:
        crash_time = datetime.strptime(stamp, TIME_FORMAT).strftime("%Y-%m-%dT%H:%M:%SZ")
    dump = next((path / name for name in (DUMP_FILE, FLAT_DUMP_FILE, FLAT_DUMP_FILE + PART_SUFFIX)
                 if (path / name).exists()), path / DUMP_FILE)
    log = path / LOG_FILE
    panic = ""
    try:
        panic = panic_line(log.read_text(errors="replace"))
    except OSError:
        pass
    return CrashRecord(id=path.name, kernel_release=release,
                       crash_time=crash_time, panic=panic, complete=False,
                       dump=dump.name if dump.exists() else None,
                       dump_bytes=dump.stat().st_size if dump.exists() else None,
                       log=LOG_FILE if log.exists() else None, error=error, directory=path)


def panic_line(log_text: str) -> str:
    """The line that says why the kernel died, without its timestamp: the last
    ``Kernel panic - not syncing`` line, else the first BUG/Oops/GPF line; "" if none."""
    lines = [_LOG_TIME.sub("", line).strip() for line in log_text.splitlines()]
    for marker in _PANIC_MARKERS:
        found = [line for line in lines if marker in line]
        if found:
            return found[-1] if marker == _PANIC_MARKERS[0] else found[0]
    return ""


def crash_dirs(target_dir: str | os.PathLike[str]) -> list[Path]:
    """The crash directories under ``target_dir`` (names as :func:`new_crash_dir`
    makes them; anything else there is left alone), newest first."""
    try:
        entries = list(os.scandir(target_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [Path(e.path) for e in entries if _CRASH_DIR.match(e.name) and e.is_dir(follow_symlinks=False)]
    return sorted(found, key=_newest_first_key, reverse=True)


def _newest_first_key(path: Path) -> tuple[str, int]:
    m = _CRASH_DIR.match(path.name)
    assert m is not None  # crash_dirs lists only names that match
    return m.group(1), int(m.group(3) or 0)


def list_records(target_dir: str | os.PathLike[str]) -> list[CrashRecord]:
    """Every crash saved under ``target_dir``, newest first (see :func:`read_record`)."""
    return [read_record(path) for path in crash_dirs(target_dir)]


def prune(target_dir: str | os.PathLike[str], keep: int) -> list[Path]:
    """Remove all but the ``keep`` newest crash directories (``keep`` 0: remove none);
    returns the ones removed.  The capture calls it once its new directory exists, so
    that the new crash counts among the ``keep``."""
    if keep <= 0:
        return []
    removed = crash_dirs(target_dir)[keep:]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
