"""The kdump service's pieces on real crash dumps of the 6.1 and 6.12 guests (the
``vmcore`` fixture: made in QEMU once, cached), on the host:

* the size prediction (:mod:`pykexec.kdump.dump_size`) of a real dump read as /proc/kcore
  is, at -d 31 with zstd, within 20% (the issue's goal) of what vmcore save writes;
* a raw target (:mod:`pykexec.kdump.raw_target`): a device holding the flattened stream the
  capture writes is collected into a crash directory, complete, with the log read from the
  dump and its panic line, then its start header erased (collected once); a stream cut
  short, with what the device held before after it, is collected as incomplete, saying why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pykexec.kdump import dump_size, raw_target
from pykexec.kdump.config import KdumpConfig
from pykexec.kdump.kcore import Kcore
from pykexec.kdump.paths import Paths
from pykexec.kdump.records import list_records
from pykexec.layouts import flattened as F
from pykexec.vmcore.kdump import KdumpFile
from pykexec.vmcore.open import open_dump
from pykexec.vmcore.save import save

SYSRQ_PANIC = "Kernel panic - not syncing: sysrq triggered crash"


def test_prediction_within_the_goal(vmcore: tuple[str, Path], tmp_path: Path) -> None:
    _, source = vmcore
    with Kcore(source) as core:
        p = dump_size.predict(core, dump_level=31, compression="zstd")
    actual = save(str(source), str(tmp_path / "dump"), progress=False).out_bytes
    assert abs(p.predicted_bytes - actual) / actual < 0.20, (p.predicted_bytes, actual)
    assert p.low_bytes <= actual <= p.high_bytes
    assert p.excluded["free"] > 0 and p.exclusion_ranges > 0


def raw_setup(tmp_path: Path, source: Path, device_bytes: int, *, cut_at: int | None = None) -> tuple[
        KdumpConfig, Paths, Path]:
    """A root with /dev/vdb (a file standing for the device: old data, then the stream the
    capture writes, cut at ``cut_at`` if given) and a configuration naming it."""
    paths = Paths(tmp_path / "root")
    device = paths.under("/dev/vdb")
    device.parent.mkdir(parents=True)
    stream = tmp_path / "stream"
    fd = os.open(stream, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        save(str(source), fd, progress=False)
    finally:
        os.close(fd)
    data = stream.read_bytes()[:cut_at]
    old = os.urandom(4096) * (device_bytes // 4096)
    device.write_bytes(data + old[len(data):])
    return KdumpConfig(target="/dev/vdb", keep=2), paths, device


def test_raw_target_collected_once(vmcore: tuple[str, Path], tmp_path: Path) -> None:
    flavour, source = vmcore
    config, paths, device = raw_setup(tmp_path, source, 96 << 20)
    assert raw_target.holds_dump(device)
    record = raw_target.collect(config, paths)
    assert record is not None and record.complete and record.error is None, record
    assert record.panic == SYSRQ_PANIC
    assert record.kernel_release.startswith(flavour + ".")
    directory = paths.under("/var/crash") / record.id
    assert record.directory == directory
    assert sorted(os.listdir(directory)) == ["dmesg.txt", "record.json", "vmcore"]
    assert json.loads((directory / "record.json").read_text())["complete"] is True
    with open_dump(str(directory / "vmcore")) as core:
        assert core.vmcoreinfo is not None and core.vmcoreinfo.osrelease == record.kernel_release
    assert SYSRQ_PANIC in (directory / "dmesg.txt").read_text()
    # Erased: the next boot's load finds nothing to collect; the crash is listed.
    assert device.read_bytes()[:F.START_HEADER_SIZE] == bytes(F.START_HEADER_SIZE)
    assert not raw_target.holds_dump(device)
    assert raw_target.collect(config, paths) is None
    assert [r.id for r in list_records(paths.under("/var/crash"))] == [record.id]
    assert not (paths.under("/var/crash") / raw_target.PARTIAL_NAME).exists()


def test_raw_target_cut_short_is_incomplete(vmcore: tuple[str, Path], tmp_path: Path) -> None:
    _, source = vmcore
    config, paths, _ = raw_setup(tmp_path, source, 64 << 20, cut_at=12 << 20)
    record = raw_target.collect(config, paths)
    assert record is not None and record.complete is False, record
    assert record.error is not None and "on /dev/vdb" in record.error, record
    (listed,) = list_records(paths.under("/var/crash"))
    assert listed.complete is False and listed.id == record.id
    rebuilt = KdumpFile(paths.under("/var/crash") / record.id / "vmcore")
    assert rebuilt.incomplete, "the rebuilt dump is flagged incomplete"


def test_raw_target_without_a_dump(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "root")
    device = paths.under("/dev/vdb")
    device.parent.mkdir(parents=True)
    device.write_bytes(bytes(1 << 20))
    assert raw_target.collect(KdumpConfig(target="/dev/vdb"), paths) is None
    assert not paths.under("/var/crash").exists()
    with pytest.raises(FileNotFoundError):
        raw_target.collect(KdumpConfig(target="/dev/vdc"), paths)
