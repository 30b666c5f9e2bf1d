"""A raw block device as the target (``target = "/dev/vdb"``): the dump without a file
system, for machines whose crash kernel should not mount anything.

In the crash kernel the capture writes the dump to the device from its first byte as a
flattened stream (makedumpfile's ``-F`` format, :mod:`pykexec.layouts.flattened`): it is
written in one pass, says where it ends (its end marker), and a stream cut short (the
device full, the crash kernel dead) has none.  There is no room for a log or a record.

At the next boot the service's ``kdump load`` collects it (:func:`collect`), as kdump-utils'
kdumpctl saves a raw target's dump at start: the stream rebuilt into a crash directory under
:data:`COLLECT_DIR` (``vmcore``, kdump-compressed), the log read from the dump
(``dmesg.txt``, and Xen's beside it) and the record, complete only if the stream had its end
marker; then the stream's start header is zeroed so that it is collected once.  From there
``kdump list`` and ``show`` see it as any local crash.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from pykexec.layouts import flattened as F
from pykexec.vmcore.errors import VmcoreError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pykexec.kdump.config import KdumpConfig
    from pykexec.kdump.paths import Paths
    from pykexec.kdump.records import CrashRecord

#: Where a raw target's dumps are collected to (kdumpctl's default ``path``).
COLLECT_DIR = "/var/crash"
#: The rebuilt dump while it is not whole, in :data:`COLLECT_DIR`.
PARTIAL_NAME = ".raw-collect.part"


def collect_dir(paths: Paths) -> Path:
    return paths.under(COLLECT_DIR)


def holds_dump(device: str | os.PathLike[str]) -> bool:
    """The device starts with a flattened stream's start header."""
    with open(device, "rb") as f:
        return F.is_start_header(f.read(F.START_HEADER_SIZE))


def collect(config: KdumpConfig, paths: Paths) -> CrashRecord | None:
    """The dump on the raw target, rebuilt as a crash under :data:`COLLECT_DIR` and its
    start header then erased; None if the device holds none.  OSError, VmcoreError if the
    device cannot be read or the crash directory written (the device is then untouched)."""
    from pykexec.vmcore.reassemble import flag_incomplete, reassemble

    device = paths.under(config.parsed_target.path)
    if not holds_dump(device):
        return None
    target = collect_dir(paths)
    target.mkdir(parents=True, exist_ok=True)
    partial = target / PARTIAL_NAME
    src = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        limit = os.lseek(src, 0, os.SEEK_END)
        os.lseek(src, 0, os.SEEK_SET)
        dst = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        error = None
        try:
            # Past a stream cut short lies what the device held before: a record that
            # cannot be one (corrupt, or beyond twice the device) ends the stream there.
            result = reassemble(src, dst, limit=2 * limit)
            complete = result.complete
        except VmcoreError as err:
            complete, error = False, f"the stream on {config.parsed_target.path} is damaged: {err}"
        os.fsync(dst)
        os.close(dst)
    finally:
        os.close(src)
    if not complete:
        flag_incomplete(str(partial))
        error = error or (f"the stream on {config.parsed_target.path} has no end marker: the capture "
                          "did not finish (the device full, or the crash kernel stopped)")
    record = _file_crash(partial, target, complete, error, config)
    _erase_start_header(device)
    return record


def _file_crash(partial: Path, target: Path, complete: bool, error: str | None,
                config: KdumpConfig) -> CrashRecord:
    """The rebuilt dump moved into its crash directory, with the log and the record."""
    from pykexec.kdump import records as R
    from pykexec.vmcore.cli import DmesgOptions, dmesg
    from pykexec.vmcore.open import open_dump

    release, crash_time, xen = "unknown", None, False
    try:
        with open_dump(str(partial)) as core:
            info = core.vmcoreinfo
            if info is not None:
                release, crash_time = info.osrelease or release, info.crashtime
            xen = any(n.name == b"Xen" for n in core.notes)
    except (OSError, VmcoreError) as err:
        error = error or f"the dump cannot be read: {err}"
    when = datetime.fromtimestamp(crash_time, timezone.utc) if crash_time else datetime.now(timezone.utc)
    directory = R.new_crash_dir(target, release, when)
    os.replace(partial, directory / R.DUMP_FILE)
    logs: dict[str, str | None] = {"log": None, "xen_log": None}
    panic = ""
    for key, name, xen_ring in (("log", R.LOG_FILE, False), ("xen_log", R.XEN_LOG_FILE, True)):
        if xen_ring and not xen:
            continue
        try:
            text = dmesg(DmesgOptions(str(directory / R.DUMP_FILE), xen=xen_ring))
        except (OSError, VmcoreError) as err:
            error = error or f"the log cannot be read from the dump: {err}"
            continue
        (directory / name).write_bytes(text)
        logs[key] = name
        if not xen_ring:
            panic = R.panic_line(text.decode("utf-8", "replace"))
    record = R.CrashRecord(
        id=directory.name, kernel_release=release, crash_time=when.strftime("%Y-%m-%dT%H:%M:%SZ"), panic=panic,
        complete=complete and error is None, dump=R.DUMP_FILE, dump_bytes=(directory / R.DUMP_FILE).stat().st_size,
        log=logs["log"], xen_log=logs["xen_log"], dump_level=config.dump_level, compression=config.compression,
        error=error, directory=directory)
    R.write_record(directory, record)
    R.prune(target, config.keep)
    return record


def _erase_start_header(device: Path) -> None:
    fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.pwrite(fd, bytes(F.START_HEADER_SIZE), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
