"""Test-bed steps for the two kdump services on the Debian test bed, and the readers of
what they print: shared by the service's VM tests (tests/vm/test_kdump_service_vm.py) and
benchmarks/kdump_service.py, which runs kdump-tools' capture beside pykexec's.

Steps are shell run by the step runner (support/testbed/debian_step.py: ``report``,
``crash``, ``drain_console`` ...).  A crash step is made of a *ready* part (the system is up,
the service's unit has loaded the crash kernel: its figures are reported) and the crash.

For kdump-tools, whose crash kernel runs the image's own systemd, :func:`install_memory_probe`
adds a unit that its crash kernel starts beside ``kdump-tools-dump.service`` and that
measures what pykexec's capture prints as its peak memory (see :data:`PROBE_MARKER`).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from support.testbed.debian_boot import PANIC_LINE, DebianBoot
from support.testbed.debian_step import CRASH_MARKER
from support.testbed.ext4 import Ext4Image

SYSRQ_PANIC = f"{PANIC_LINE}: sysrq triggered crash"
#: Where steps leave what the host reads back once QEMU has exited.
OUT = "/var/lib/testbed/out"
#: pykexec kdump's state directory (its crash initramfs is ``initramfs.img`` there).
STATE = "/var/lib/pykexec/kdump"


def unit_seconds_report(unit: str) -> str:
    """Shell reporting ``unit_seconds`` as the unit's ExecStart start and exit (systemd's
    monotonic clock, microseconds): see :func:`unit_run_seconds`."""
    return (f'report unit_seconds "$(systemctl show -P ExecMainStartTimestampMonotonic,'
            f"ExecMainExitTimestampMonotonic {unit} | tr '\\n' ' ')\"\n")


def unit_run_seconds(reports: dict[str, str]) -> float | None:
    """How long the unit's ExecStart ran, from the ``unit_seconds`` report (None: unknown)."""
    words = reports.get("unit_seconds", "").split()
    if len(words) != 2 or not all(w.isdigit() for w in words) or int(words[1]) < int(words[0]):
        return None
    return (int(words[1]) - int(words[0])) / 1e6


# -- pykexec kdump ------------------------------------------------------------------------

PYKEXEC_ENABLE_STEP = f"""
mkdir -p {OUT}
pykexec kdump enable
report enable_rc $?
report enable_again "$(pykexec kdump enable)"
report enabled "$(systemctl is-enabled pykexec-kdump.service)"
"""

# The unit loads the crash kernel at boot (building the crash initramfs on this first
# start); the step waits for the boot to be over.
PYKEXEC_READY = f"""
report state "$(systemctl is-system-running --wait)"
report unit "$(systemctl is-active pykexec-kdump.service)"
{unit_seconds_report("pykexec-kdump.service")}report initramfs_bytes "$(stat -c %s {STATE}/initramfs.img)"
"""

# `kdump test --crash --yes` panics the machine: the marker, sync and drain of the step
# library's `crash`, then pykexec's command instead of its sysrq.
CRASH_WITH_PYKEXEC = f"""
mark "{CRASH_MARKER} boot=$TESTBED_BOOT"
sync
drain_console
pykexec kdump test --crash --yes
report crash_rc $?
"""

PYKEXEC_LIST_STEP = f"""
pykexec kdump list --json > {OUT}/list.json
report list_rc $?
"""


@dataclass(frozen=True)
class PeakMemory:
    """A capture's peak memory in the crash kernel (MiB): its process's peak resident set
    (VmHWM), and MemTotal - MemAvailable of the crash kernel out of MemTotal."""

    capture_mib: float | None
    in_use_mib: float | None
    total_mib: float | None


def capture_end(crashed: DebianBoot) -> str:
    """pykexec's capture's last line: complete or FAILED, in how long, peak memory, the action taken."""
    m = re.search(r"pykexec-kdump: (capture (?:complete|FAILED) in .*)", crashed.log)
    assert m, crashed.describe()
    return m.group(1)


def peak_memory(end_line: str) -> str:
    """The peak memory part of :func:`capture_end`'s line, as printed."""
    m = re.search(r"peak memory: (.*?);", end_line)
    return m.group(1) if m else "not printed"


def parse_peak_memory(end_line: str) -> PeakMemory:
    """``... peak memory: capture 36.1 MiB, 56.2 of 215.5 MiB in use; ...`` as numbers (a
    figure the capture could not read, ``capture unknown`` or a missing part, is None)."""
    text = peak_memory(end_line)
    capture = re.search(r"capture ([\d.]+) MiB", text)
    use = re.search(r"([\d.]+) of ([\d.]+) MiB in use", text)
    return PeakMemory(float(capture.group(1)) if capture else None,
                      float(use.group(1)) if use else None, float(use.group(2)) if use else None)


def capture_seconds(end_line: str) -> float | None:
    """The whole capture's time, from ``capture complete in 3.8 s``."""
    m = re.search(r"capture (?:complete|FAILED) in ([\d.]+) s", end_line)
    return float(m.group(1)) if m else None


def dump_write_seconds(log: str) -> float | None:
    """The dump's writing time, from pykexec's ``dump saved: N bytes, P pages in 3.1 s``."""
    m = re.search(r"pykexec-kdump: dump saved: \d+ bytes, \d+ pages in ([\d.]+) s", log)
    return float(m.group(1)) if m else None


# -- Debian's kdump-tools -----------------------------------------------------------------

KDUMP_TOOLS_ENABLE_STEP = """
sed -i s/USE_KDUMP=0/USE_KDUMP=1/ /etc/default/kdump-tools
systemctl enable kdump-tools.service
report enabled "$(systemctl is-enabled kdump-tools.service)"
"""

# kdump-tools' first start builds its crash initrd (about a minute under TCG) before the
# system reaches multi-user.target and the step runs.
KDUMP_TOOLS_READY = f"""
report state "$(systemctl is-system-running --wait)"
report status "$(kdump-config status | grep 'current state')"
report crash_loaded "$(cat /sys/kernel/kexec_crash_loaded)"
{unit_seconds_report("kdump-tools.service")}report initrd_bytes "$(stat -c %s /var/lib/kdump/initrd.img-$(uname -r))"
"""

KDUMP_TOOLS_LIST_STEP = """
report crashes "$(ls /var/crash | grep '^2' | tr '\\n' ' ')"
"""

#: kdump-tools' console lines around its dump: makedumpfile starts, the dump is saved.
KDUMP_TOOLS_DUMP_START = "running makedumpfile -F"
KDUMP_TOOLS_SAVED = "kdump-tools: saved vmcore in /var/crash/"

#: The probe's one console line in kdump-tools' crash kernel, once makedumpfile's dump has
#: ended: ``KDUMP-PROBE-MEMORY hwm_kib=.. in_use_kib=.. peak_in_use_kib=.. total_kib=.. samples=..``.
PROBE_MARKER = "KDUMP-PROBE-MEMORY"
_PROBE_PATH = "/usr/local/sbin/kdump-probe-memory"
_PROBE_UNIT = "kdump-probe-memory.service"

# bash with builtins only between samples (read -t on a FIFO no one writes is the sleep):
# no fork every 0.1 s to slow the crash kernel down.  The makedumpfile that writes the dump
# is the one with -F (kdump-tools runs another before it, --dump-dmesg, for the log).
# hwm is its VmHWM at the last sample (VmHWM only grows: at most 0.1 s of growth is
# missed); in_use is MemTotal - MemAvailable at that sample, as pykexec's capture reads it
# at its end; peak_in_use the highest of the samples while makedumpfile ran.
_PROBE = f"""#!/bin/bash
# Benchmark probe (tests/support/kdump_steps.py): makedumpfile's memory in kdump-tools' crash kernel.
mkfifo /run/kdump-probe.fifo
exec 3<>/run/kdump-probe.fifo
pid= hwm= used= peak=0 total=0 avail=0 samples=0
find_dump() {{
    local d c
    for d in /proc/[0-9]*; do
        read -r c 2>/dev/null < "$d/comm" || continue
        [ "$c" = makedumpfile ] || continue
        mapfile -d '' args 2>/dev/null < "$d/cmdline"
        case " ${{args[*]}} " in *" -F "*) pid=${{d#/proc/}}; return 0;; esac
    done
    return 1
}}
while :; do
    if [ -z "$pid" ]; then
        find_dump || {{ read -r -t 0.1 -u 3; continue; }}
    fi
    [ -d "/proc/$pid" ] || break
    while read -r k v _; do
        [ "$k" = VmHWM: ] && {{ hwm=$v; break; }}
    done 2>/dev/null < "/proc/$pid/status"
    while read -r k v _; do
        case $k in MemTotal:) total=$v;; MemAvailable:) avail=$v; break;; esac
    done < /proc/meminfo
    used=$((total - avail))
    [ "$used" -gt "$peak" ] && peak=$used
    samples=$((samples + 1))
    read -r -t 0.1 -u 3
done
printf '<2>%s\\n' "{PROBE_MARKER} hwm_kib=$hwm in_use_kib=$used peak_in_use_kib=$peak total_kib=$total samples=$samples" > /dev/kmsg
"""

_PROBE_UNIT_TEXT = f"""[Unit]
Description=benchmark probe: makedumpfile's memory in kdump-tools' crash kernel
DefaultDependencies=no
Before=kdump-tools-dump.service

[Service]
Type=simple
ExecStart={_PROBE_PATH}
"""


def install_memory_probe(disk: Ext4Image) -> None:
    """Write the probe and its unit to ``disk``, with the ``.wants`` link that makes
    kdump-tools' dump service pull it in: kdump-tools' crash kernel boots the disk's systemd
    with ``systemd.unit=kdump-tools-dump.service``; a normal boot never starts it."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for path, text, mode in ((_PROBE_PATH, _PROBE, 0o755), (f"/etc/systemd/system/{_PROBE_UNIT}", _PROBE_UNIT_TEXT, 0o644)):
            dest = root / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
            dest.chmod(mode)
        wants = root / "etc/systemd/system/kdump-tools-dump.service.wants"
        wants.mkdir()
        (wants / _PROBE_UNIT).symlink_to(f"/etc/systemd/system/{_PROBE_UNIT}")
        disk.add_tree(root, "/")


@dataclass(frozen=True)
class ProbedMemory:
    """The probe's figures (MiB): makedumpfile's VmHWM, MemTotal - MemAvailable at its last
    sample and the highest of all samples, MemTotal; how many samples were taken."""

    makedumpfile_mib: float | None
    in_use_mib: float | None
    peak_in_use_mib: float | None
    total_mib: float | None
    samples: int


def parse_probe(log: str) -> ProbedMemory | None:
    """The probe's line in a console log, as numbers; None when it printed none."""
    m = re.search(rf"{PROBE_MARKER} (.*)", log)
    if not m:
        return None
    fields = dict(re.findall(r"(\w+)=(\d*)", m.group(1)))

    def mib(key: str) -> float | None:
        value = fields.get(key, "")
        return int(value) / 1024 if value else None

    samples = fields.get("samples", "")
    return ProbedMemory(mib("hwm_kib"), mib("in_use_kib"), mib("peak_in_use_kib"), mib("total_kib"),
                        int(samples) if samples else 0)
