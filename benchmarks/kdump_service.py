"""kdump as a service: pykexec's kdump service against Debian's kdump-tools, side by side in
one run on the same Debian 12 test-bed image (tests/support/testbed/debian.py), each capturing
a sysrq crash on a fresh disk (issue 13).

Each capture is three boots of a new disk: the service is turned on (``pykexec kdump enable``;
kdump-tools: ``USE_KDUMP=1`` and its unit enabled), the next boot's unit builds the crash
initramfs and loads the crash kernel, the step waits for the boot to end, reports, settles
for 3 s and panics through sysrq ``c``; the crash kernel captures to /var/crash and reboots;
the third boot lists the crash.  The steps are the VM tests' (tests/support/kdump_steps.py).
Rounds are interleaved (pykexec, kdump-tools, pykexec, ...) so that the host's drift hits
both alike; the table gives medians and ratios pykexec / kdump-tools (below 1: pykexec is
faster or smaller).  Figures:

* panic -> back up: from the panic line to the rebooted system's step-runner marker (crash
  kernel boot, capture, reboot, next boot; the host's pause between two QEMU runs is not
  counted: ``seconds_from_panic_to_boot``);
* crash kernel's life: from the panic line to QEMU's exit on the crash kernel's reboot;
* capture: pykexec's ``capture complete in X s`` (its whole capture in the crash kernel,
  once Python runs: modules, target, log, dump, record, sync, unmount); kdump-tools: from
  its crash kernel's ``Starting kdump-tools:`` console line to ``saved vmcore`` (the log by
  makedumpfile --dump-dmesg, then the dump);
* dump write: pykexec's ``dump saved ... in X s`` (its vmcore save alone); kdump-tools: from
  ``running makedumpfile -F`` to ``saved vmcore`` (makedumpfile -F -c -d 31 piped to the file);
* dump size: the file's size on the disk; pages in the dump: as pykexec's reader counts them
  on the host (both formats, makedumpfile's flattened one too), and size / pages;
* crash initramfs: pykexec's
  /var/lib/pykexec/kdump/initramfs.img, kdump-tools' /var/lib/kdump/initrd.img-$(uname -r);
* first start: the unit's ExecStart run time on the first boot with the service on
  (systemd's ExecMainStart/ExitTimestampMonotonic): building the crash initramfs, then loading;
* peak memory in the crash kernel: the capture process's peak RSS (pykexec: its own VmHWM;
  kdump-tools: makedumpfile's VmHWM, read by a probe unit every 0.1 s while it runs, the last
  reading) and MemTotal - MemAvailable at the capture's end (pykexec: when it prints its last
  line, itself still running; kdump-tools: the probe's last reading while makedumpfile ran;
  the probe's highest reading is in the JSON), see tests/support/kdump_steps.py.

Under TCG the absolute times are emulation times; the ratios are the point.  Run it alone:

    flock /tmp/qemu.lock .venv/bin/python benchmarks/kdump_service.py [--rounds 2] [--kernel 6.1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from pykexec.vmcore.open import open_dump

from support.kdump_steps import (KDUMP_TOOLS_DUMP_START, KDUMP_TOOLS_ENABLE_STEP, KDUMP_TOOLS_LIST_STEP,
                                 KDUMP_TOOLS_READY, KDUMP_TOOLS_SAVED, OUT, PYKEXEC_ENABLE_STEP,
                                 PYKEXEC_LIST_STEP, PYKEXEC_READY, SYSRQ_PANIC, capture_end, capture_seconds,
                                 dump_write_seconds, install_memory_probe, parse_peak_memory,
                                 parse_probe, unit_run_seconds)
from support.testbed.cache import TestbedError
from support.testbed.debian import DebianDisk, DebianTestbed
from support.testbed.debian_boot import PANIC_LINE, DebianBoot, boot, seconds_from_panic_to_boot

PAGE_SIZE = 4096
#: kdump-tools' init script's first line in its crash kernel (its capture starts).
KDUMP_TOOLS_START = "Starting kdump-tools:"

# The same for both: let the last commands' freed pages leave the per-CPU lists (a dump
# keeps them), then the step library's sysrq crash.  The first kernel's slab just before: at
# -d 31 a dump keeps slab pages, so it tells how much the service left behind in the kernel.
SETTLE_AND_CRASH = """sleep 3
report slab_kib "$(awk '/^Slab:/ {print $2}' /proc/meminfo)"
crash
"""

#: (key, label, unit) of the table's rows, in order.
ROWS = [
    ("panic_to_boot_s", "panic -> back up (boot marker)", "s"),
    ("crash_kernel_s", "panic -> crash kernel's reboot", "s"),
    ("capture_s", "capture in the crash kernel", "s"),
    ("dump_write_s", "dump write", "s"),
    ("dump_bytes", "dump size", "B"),
    ("dump_pages", "pages in the dump", "pages"),
    ("bytes_per_page", "dump bytes per page", "B/page"),
    ("slab_mib", "first kernel's slab at the crash", "MiB"),
    ("initramfs_bytes", "crash initramfs size", "B"),
    ("first_start_s", "first start: build + load", "s"),
    ("capture_peak_rss_mib", "capture peak RSS (VmHWM)", "MiB"),
    ("in_use_mib", "crash kernel memory in use at end", "MiB"),
    ("total_mib", "crash kernel MemTotal", "MiB"),
]


class BenchError(Exception):
    pass


def check(ok: bool, what: str, run: DebianBoot) -> None:
    if not ok:
        raise BenchError(f"{what}\n{run.describe()}")


def crash_kernel_seconds(crashed: DebianBoot) -> float:
    return crashed.duration - crashed.time_of(PANIC_LINE)


def time_after_panic(crashed: DebianBoot, text: str) -> float:
    """When the first console line holding ``text`` after the panic appeared (the crash
    kernel's; the first kernel may print the same words)."""
    panic = crashed.time_of(PANIC_LINE)
    for seconds, line in crashed.line_times:
        if seconds >= panic and text in line:
            return seconds
    raise BenchError(f"{text!r} not on the console after the panic\n{crashed.describe()}")


def dump_figures(disk: DebianDisk, guest_path: str, work: Path) -> dict[str, Any]:
    """The dump's size on the disk and the pages it holds (read on the host by pykexec's
    reader, which takes makedumpfile's flattened files too)."""
    copy = disk.copy_file_out(guest_path, work / "dump")
    try:
        dump = open_dump(copy)
        pages = dump.memory_bytes // PAGE_SIZE
        size = copy.stat().st_size
    finally:
        copy.unlink()
    return {"dump_bytes": size, "dump_pages": pages, "bytes_per_page": size / pages if pages else None}


def capture_pykexec(disk: DebianDisk, kernel: str, work: Path) -> dict[str, Any]:
    enable = boot(disk, step=PYKEXEC_ENABLE_STEP, kernel=kernel, timeout=300)
    check(enable.step_rc == 0 and enable.reports().get("enabled") == "enabled", "pykexec kdump enable failed", enable)
    crashed = boot(disk, step=PYKEXEC_READY + SETTLE_AND_CRASH, kernel=kernel, timeout=600)
    found = crashed.reports()
    check(found.get("unit") == "active" and SYSRQ_PANIC in crashed.log, "no crash with the unit active", crashed)
    end = capture_end(crashed)
    check(end.startswith("capture complete"), f"capture failed: {end}", crashed)
    listed = boot(disk, step=PYKEXEC_LIST_STEP, kernel=kernel, timeout=300)
    check(listed.step_rc == 0, "pykexec kdump list failed", listed)
    crashes = json.loads(disk.read_text(f"{OUT}/list.json"))
    check(len(crashes) == 1 and crashes[0]["complete"] is True, f"not one complete crash: {crashes}", listed)
    memory = parse_peak_memory(end)
    return {"panic_to_boot_s": seconds_from_panic_to_boot(crashed, listed),
            "crash_kernel_s": crash_kernel_seconds(crashed),
            "capture_s": capture_seconds(end), "dump_write_s": dump_write_seconds(crashed.log),
            **dump_figures(disk, f"{crashes[0]['directory']}/vmcore", work),
            "initramfs_bytes": int(found["initramfs_bytes"]), "slab_mib": int(found["slab_kib"]) / 1024,
            "first_start_s": unit_run_seconds(found),
            "capture_peak_rss_mib": memory.capture_mib, "in_use_mib": memory.in_use_mib,
            "total_mib": memory.total_mib, "capture_line": end}


def capture_kdump_tools(disk: DebianDisk, kernel: str, work: Path) -> dict[str, Any]:
    install_memory_probe(disk)
    enable = boot(disk, step=KDUMP_TOOLS_ENABLE_STEP, kernel=kernel, timeout=300)
    check(enable.step_rc == 0 and enable.reports().get("enabled") == "enabled", "kdump-tools not enabled", enable)
    crashed = boot(disk, step=KDUMP_TOOLS_READY + SETTLE_AND_CRASH, kernel=kernel, timeout=600)
    found = crashed.reports()
    check(found.get("status") == "current state   : ready to kdump" and SYSRQ_PANIC in crashed.log,
          "kdump-tools not ready, or no crash", crashed)
    check(KDUMP_TOOLS_SAVED in crashed.log, "kdump-tools saved no vmcore", crashed)
    listed = boot(disk, step=KDUMP_TOOLS_LIST_STEP, kernel=kernel, timeout=300)
    check(listed.step_rc == 0, "listing /var/crash failed", listed)
    stamps = listed.reports().get("crashes", "").split()
    check(len(stamps) == 1, f"not one crash directory: {stamps}", listed)
    (stamp,) = stamps
    probe = parse_probe(crashed.log)
    check(probe is not None, "the memory probe printed nothing", crashed)
    assert probe is not None
    saved = time_after_panic(crashed, KDUMP_TOOLS_SAVED)
    return {"panic_to_boot_s": seconds_from_panic_to_boot(crashed, listed),
            "crash_kernel_s": crash_kernel_seconds(crashed),
            "capture_s": saved - time_after_panic(crashed, KDUMP_TOOLS_START),
            "dump_write_s": saved - time_after_panic(crashed, KDUMP_TOOLS_DUMP_START),
            **dump_figures(disk, f"/var/crash/{stamp}/dump.{stamp}", work),
            "initramfs_bytes": int(found["initrd_bytes"]), "slab_mib": int(found["slab_kib"]) / 1024,
            "first_start_s": unit_run_seconds(found),
            "capture_peak_rss_mib": probe.makedumpfile_mib, "in_use_mib": probe.in_use_mib,
            "total_mib": probe.total_mib, "peak_in_use_mib": probe.peak_in_use_mib, "probe_samples": probe.samples}


SERVICES: dict[str, Callable[[DebianDisk, str, Path], dict[str, Any]]] = {
    "pykexec": capture_pykexec, "kdump-tools": capture_kdump_tools}


def median(values: list[Any]) -> float | None:
    numbers = [v for v in values if v is not None]
    return statistics.median(numbers) if numbers else None


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "B":
        return f"{value / 1e6:.1f} MB"
    if unit == "pages":
        return f"{value:.0f}"
    if unit == "B/page":
        return f"{value:.0f} B"
    return f"{value:.1f} {unit}"


def table(runs: dict[str, list[dict[str, Any]]]) -> tuple[str, dict[str, dict[str, float | None]]]:
    """The side-by-side table (medians, ratio, each run) and the medians."""
    medians: dict[str, dict[str, float | None]] = {}
    lines = [f"{'figure':36s} {'pykexec':>11s} {'kdump-tools':>12s} {'ratio':>6s}   runs (pykexec | kdump-tools)"]
    for key, label, unit in ROWS:
        ours = median([r[key] for r in runs["pykexec"]])
        theirs = median([r[key] for r in runs["kdump-tools"]])
        medians[key] = {"pykexec": ours, "kdump-tools": theirs,
                        "ratio": ours / theirs if ours is not None and theirs else None}
        ratio = medians[key]["ratio"]
        each = " | ".join(", ".join(fmt(r[key], unit) for r in runs[name]) for name in SERVICES)
        lines.append(f"{label:36s} {fmt(ours, unit):>11s} {fmt(theirs, unit):>12s} "
                     f"{(f'{ratio:.2f}x' if ratio is not None else '-'):>6s}   {each}")
    return "\n".join(lines), medians


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2, help="captures of each service (default 2)")
    ap.add_argument("--kernel", default="6.1", choices=["6.1", "6.12"])
    ap.add_argument("--json", type=Path, metavar="FILE", help="write the runs and medians to FILE")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="keep the disks and console logs in DIR")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    try:
        bed = DebianTestbed()
        base = bed.base()
    except TestbedError as err:
        print(f"kdump_service: the Debian test bed is unavailable: {err}", file=sys.stderr)
        return 1
    work = Path(args.keep or tempfile.mkdtemp(prefix="kdump-bench-", dir=bed.root))
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SERVICES}
    t0 = time.monotonic()
    try:
        for round_no in range(1, args.rounds + 1):
            for name, capture in SERVICES.items():
                disk = bed.new_disk(work / f"{name}-r{round_no}.img")
                started = time.monotonic()
                try:
                    figures = capture(disk, args.kernel, work)
                except (BenchError, TestbedError, KeyError, ValueError, AssertionError) as err:
                    print(f"kdump_service: {name}, round {round_no}: {err}", file=sys.stderr)
                    return 1
                figures["wall_s"] = time.monotonic() - started
                runs[name].append(figures)
                print(f"[round {round_no}] {name}: panic -> back up {figures['panic_to_boot_s']:.1f} s, "
                      f"dump {figures['dump_bytes']} bytes ({figures['wall_s']:.0f} s wall)", flush=True)
                if not args.keep:
                    disk.path.unlink()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text, medians = table(runs)
    print(f"\nkdump service vs kdump-tools: kernel {args.kernel} ({base.releases[args.kernel]}), "
          f"{args.rounds} round(s), medians; ratio = pykexec / kdump-tools; {time.monotonic() - t0:.0f} s in all")
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"kernel": args.kernel, "release": base.releases[args.kernel],
                                         "rounds": args.rounds, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                         "medians": medians, "runs": runs}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
