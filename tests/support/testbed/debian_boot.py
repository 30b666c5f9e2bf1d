"""Booting a Debian test-bed disk (:class:`~support.testbed.debian.DebianDisk`) once under
QEMU, with the time each console line appeared.

One QEMU run is one boot of the system (plus, after a panic, the crash kernel's boot):
``-no-reboot`` turns the step runner's poweroff, a reboot or a panic into QEMU's exit.  A
test scripts boot 1, boot 2, ... by writing a step and calling :func:`boot` again on the
same disk; files are read back from the disk with its :class:`~support.testbed.ext4.Ext4Image`
methods once QEMU has exited.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from support.testbed.debian import DebianDisk
from support.testbed.debian_step import BOOT_MARKER, CRASH_MARKER, REPORT_MARKER, STEP_END_MARKER
from support.testbed.qemu import GuestRun, run_qemu
from support.xen import XEN_CPU

#: The kernel command line of every boot (``append_extra`` is added after it).
BOOT_APPEND = "root=/dev/vda rw console=ttyS0 crashkernel=256M panic=-1"
#: Xen's command line in :func:`boot_xen`: its console on the serial port, dom0's memory, and
#: the crash area (Xen reserves it: dom0's own crashkernel= would mean nothing).
XEN_APPEND = "console=com1 dom0_mem=768M crashkernel=256M@1G"
#: dom0's: its console is Xen's (hvc0).
DOM0_APPEND = "root=/dev/vda rw console=hvc0 panic=-1"
#: The image's kernel that can be a PV dom0 (Debian's cloud kernels have no XEN_DOM0).
XEN_DOM0_KERNEL = "6.1-xen"
#: The first line the kernel prints on a panic.
PANIC_LINE = "Kernel panic - not syncing"


@dataclass
class DebianBoot:
    """One QEMU run of a Debian disk: the console and when each line of it appeared."""

    run: GuestRun
    line_times: list[tuple[float, str]]   # (seconds since QEMU started, console line)

    @property
    def log(self) -> str:
        return self.run.log

    @property
    def duration(self) -> float:
        return self.run.duration

    def expect(self, text: str) -> str:
        """The first console line containing ``text``; fails with the log's tail otherwise."""
        return self.run.expect(text)

    def time_of(self, text: str) -> float:
        """Seconds from QEMU's start to the first console line containing ``text``."""
        for seconds, line in self.line_times:
            if text in line:
                return seconds
        raise AssertionError(f"{text!r} not in guest console\n{self.run.describe()}")

    def _marker_field(self, marker: str, name: str) -> str | None:
        m = re.search(rf"{marker} .*?\b{name}=(\S+)", self.log)
        return m.group(1) if m else None

    @property
    def boot_number(self) -> int | None:
        """The disk's boot count as the step runner printed it (None: it never ran)."""
        value = self._marker_field(BOOT_MARKER, "boot")
        return int(value) if value else None

    @property
    def step_rc(self) -> int | None:
        """The step's exit status; None if it did not return (a crash) or never ran."""
        value = self._marker_field(STEP_END_MARKER, "rc")
        return int(value) if value and value.isdigit() else None

    def reports(self) -> dict[str, str]:
        """``report KEY VALUE`` lines of the step, as {KEY: VALUE} (the first of each key)."""
        found: dict[str, str] = {}
        for m in re.finditer(rf"{REPORT_MARKER} ([^=\s]+)=(.*)", self.log):
            found.setdefault(m.group(1), m.group(2).rstrip("\r "))
        return found

    def assert_step_ok(self) -> None:
        """The step ran, returned 0, and QEMU ended by itself without a panic."""
        if self.run.timed_out:
            raise AssertionError(f"QEMU timed out\n{self.run.describe()}")
        self.run.expect_not(PANIC_LINE)
        if self.step_rc != 0:
            raise AssertionError(f"step rc={self.step_rc}\n{self.run.describe()}")

    def describe(self) -> str:
        return self.run.describe()


def boot(disk: DebianDisk, *, step: str | None = None, kernel: str = "6.1", append_extra: str = "",
         memory_mib: int = 1024, smp: int = 1, timeout: float = 300.0, log_path: Path | None = None,
         extra_qemu_args: Sequence[str] = ()) -> DebianBoot:
    """Boot ``disk`` with the image's own kernel ``kernel`` (a flavour of
    :data:`~support.testbed.debian.KERNELS`) and its initrd; return when QEMU exits.

    ``step`` (shell, see :mod:`.debian_step`) is written to the disk first as the step of
    this boot.  The serial console streams to ``log_path`` (default: beside the disk,
    ``<disk>-boot<n>.log``).  ``extra_qemu_args`` adds devices (a network, a second disk).
    """
    cmdline = f"{BOOT_APPEND} {append_extra}".strip()
    return _boot(disk, step, disk.base.vmlinuz(kernel), str(disk.base.initrd(kernel)), cmdline, cpu="qemu64",
                 memory_mib=memory_mib, smp=smp, timeout=timeout, log_path=log_path,
                 extra_qemu_args=extra_qemu_args)


def boot_xen(disk: DebianDisk, *, step: str | None = None, xen_append: str = XEN_APPEND,
             dom0_append_extra: str = "", memory_mib: int = 2048, smp: int = 1, timeout: float = 300.0,
             log_path: Path | None = None, extra_qemu_args: Sequence[str] = ()) -> DebianBoot:
    """Boot ``disk`` as a Xen host: the image's Xen 4.17 (QEMU's Multiboot loader) with
    the image's ``6.1-xen`` kernel and its initrd as the PV dom0 (:data:`DOM0_APPEND`, its
    console hvc0: Xen prints it on the serial port, step markers included).  As :func:`boot`
    otherwise; a panic of dom0 with a crash kernel loaded goes on in that kernel, on the bare
    machine."""
    base = disk.base
    dom0 = f"{DOM0_APPEND} {dom0_append_extra}".strip()
    if "," in dom0 + str(base.vmlinuz(XEN_DOM0_KERNEL)) + str(base.initrd(XEN_DOM0_KERNEL)):
        raise ValueError("QEMU's Multiboot modules are comma-separated: no comma in dom0's command line or paths")
    modules = f"{base.vmlinuz(XEN_DOM0_KERNEL)} {dom0},{base.initrd(XEN_DOM0_KERNEL)}"
    return _boot(disk, step, base.xen(), modules, xen_append, cpu=XEN_CPU, memory_mib=memory_mib, smp=smp,
                 timeout=timeout, log_path=log_path, extra_qemu_args=extra_qemu_args)


def _boot(disk: DebianDisk, step: str | None, kernel: Path, initrd: str, cmdline: str, *, cpu: str,
          memory_mib: int, smp: int, timeout: float, log_path: Path | None,
          extra_qemu_args: Sequence[str]) -> DebianBoot:
    if step is not None:
        disk.write_step(step)
    # A killed QEMU or a crash can leave the journal dirty: replay it before QEMU opens the
    # disk, as mount would, so the next debugfs access does not replay under a running guest.
    disk.replay_journal()
    if log_path is None:
        log_path = disk.path.with_name(f"{disk.path.stem}-boot{disk.boot_count() + 1}.log")
    log_path.unlink(missing_ok=True)
    clock = _ConsoleClock(log_path)
    clock.start()
    try:
        run = run_qemu(kernel, initrd, cmdline, memory=f"{memory_mib}M", cpu=cpu, smp=smp, timeout=timeout,
                       log_path=log_path,
                       extra_args=["-drive", f"file={disk.path},if=virtio,format=raw", *extra_qemu_args])
    finally:
        clock.stop()
    return DebianBoot(run=run, line_times=clock.lines)


def seconds_from_panic_to_boot(crashed: DebianBoot, rebooted: DebianBoot) -> float:
    """From the panic in ``crashed`` to the step runner's first marker in ``rebooted``: the
    crash kernel's boot, its capture and reboot, QEMU's restart and the next boot.  The
    host's time between the two QEMU runs is not counted."""
    return (crashed.duration - crashed.time_of(PANIC_LINE)) + rebooted.time_of(BOOT_MARKER)


def seconds_from_crash_marker_to_panic(crashed: DebianBoot) -> float:
    """From the step's ``crash`` marker to the kernel's panic line (sync and console drain)."""
    return crashed.time_of(PANIC_LINE) - crashed.time_of(CRASH_MARKER)


class _ConsoleClock:
    """Timestamps the lines of a console log while :func:`run_qemu` writes it.

    Time zero is when the log file appears, which run_qemu creates right before it starts
    QEMU (after waiting for its lock).  Lines are stamped when first read: polling every
    20 ms bounds the error.
    """

    _POLL = 0.02

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _follow(self) -> None:
        while not self.path.exists():
            if self._stop.wait(self._POLL / 4):
                if not self.path.exists():
                    return
                break
        start = time.monotonic()
        pending = b""
        with open(self.path, "rb") as log:
            while True:
                stopping = self._stop.is_set()
                chunk = log.read()
                if chunk:
                    now = time.monotonic() - start
                    *complete, pending = (pending + chunk).split(b"\n")
                    for raw in complete:
                        self.lines.append((now, raw.decode("utf-8", errors="replace").rstrip("\r")))
                if stopping:
                    break
                self._stop.wait(self._POLL)
        if pending:
            self.lines.append((time.monotonic() - start, pending.decode("utf-8", errors="replace")))
