"""The readers of the kdump services' console figures (tests/support/kdump_steps.py), used by
the service's VM tests and benchmarks/kdump_service.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from support.kdump_steps import (_PROBE, PROBE_MARKER, PeakMemory, ProbedMemory, capture_seconds, dump_write_seconds,
                                 parse_peak_memory, parse_probe, unit_run_seconds)

END = ("capture complete in 3.8 s; peak memory: capture 36.1 MiB, 56.2 of 215.5 MiB in use; "
       "final action: reboot")


def test_peak_memory_and_capture_time_of_the_last_line() -> None:
    assert parse_peak_memory(END) == PeakMemory(36.1, 56.2, 215.5)
    assert capture_seconds(END) == 3.8
    failed = "capture FAILED in 12.0 s; peak memory: capture unknown; failure action: poweroff"
    assert parse_peak_memory(failed) == PeakMemory(None, None, None)
    assert capture_seconds(failed) == 12.0
    assert parse_peak_memory("capture complete in 1 s; final action: reboot") == PeakMemory(None, None, None)


def test_dump_write_time() -> None:
    log = "x\r\npykexec-kdump: dump saved: 38686423 bytes, 31362 pages in 3.1 s\npykexec-kdump: record written"
    assert dump_write_seconds(log) == 3.1
    assert dump_write_seconds("pykexec-kdump: dump saved: partly") is None


def test_unit_run_seconds() -> None:
    assert unit_run_seconds({"unit_seconds": "12225991 27878878 "}) == pytest.approx(15.652887)
    # Not started, not exited (0), garbled or backwards: unknown.
    for value in ("", "12225991", "12225991 0", "a b", "5 4"):
        assert unit_run_seconds({"unit_seconds": value}) is None
    assert unit_run_seconds({}) is None


def test_probe_line() -> None:
    log = (f"[   9.1] kdump-tools: running makedumpfile\n[  14.2] {PROBE_MARKER} hwm_kib=20480 in_use_kib=61440 "
           "peak_in_use_kib=65536 total_kib=220672 samples=48\r\n")
    assert parse_probe(log) == ProbedMemory(20.0, 60.0, 64.0, 215.5, 48)
    # makedumpfile gone before the first reading of its status: no VmHWM.
    assert parse_probe(f"{PROBE_MARKER} hwm_kib= in_use_kib=1024 peak_in_use_kib=1024 total_kib=2048 samples=1") \
        == ProbedMemory(None, 1.0, 1.0, 2.0, 1)
    assert parse_probe("no probe here") is None


def test_probe_follows_the_dump_makedumpfile_only(tmp_path: Path) -> None:
    """The probe script, run in its own PID namespace against a stand-in makedumpfile: it
    skips the --dump-dmesg run, samples the -F one and prints its line once that has ended."""
    out, fifo = tmp_path / "kmsg", tmp_path / "probe.fifo"
    probe = tmp_path / "probe.sh"
    probe.write_text(_PROBE.replace("/dev/kmsg", str(out)).replace("/run/kdump-probe.fifo", str(fifo)))
    fake = tmp_path / "makedumpfile"
    # About 24 MB held by bash only in the dump's run: the reading must come from that run.
    # Built with builtins: a $(...) subshell is a second process named makedumpfile with the
    # same -F command line, which the probe could pick (and see exit) instead.
    fake.write_text('#!/bin/bash\ncase " $* " in *" -F "*) printf -v x "%8000000s" ""; y=$x$x;; esac\n'
                    "sleep 0.6\n")
    fake.chmod(0o755)
    script = f"bash {probe} & sleep 0.3; {fake} --dump-dmesg; {fake} -F -c -d 31 /proc/vmcore; wait"
    res = subprocess.run(["unshare", "-pf", "--mount-proc", "bash", "-c", script],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    found = parse_probe(out.read_text())
    assert found is not None and found.samples >= 2, out.read_text()
    assert found.makedumpfile_mib is not None and found.makedumpfile_mib > 15, found  # the string, twice
    assert found.in_use_mib is not None and found.peak_in_use_mib is not None
    assert 0 < found.in_use_mib <= found.peak_in_use_mib < (found.total_mib or 0), found
