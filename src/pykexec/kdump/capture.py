"""The capture: PID 1 of the crash kernel, started by the crash initramfs's ``/init``
(:mod:`pykexec.kdump.initramfs`).

In order: mount /proc, /sys and /dev; load the modules the initramfs carries; find
the target's device (by its file system's UUID, else its name) and mount it
read-write; read the crashed kernel's release, crash time and log from
/proc/vmcore; make the crash directory (:mod:`pykexec.kdump.records`), write
``dmesg.txt`` first (the log survives a failed dump), a record saying the capture
has not finished, then the dump (:func:`pykexec.vmcore.save.save`), then the final
record (complete only if the saver says so); sync, unmount, and the final action
(reboot, halt, poweroff) -- or, if anything failed, the failure action (``shell``:
/bin/sh if the initramfs has one, else reboot).

Every step is wrapped: a failure is one console line, and the capture goes on
with what can still be done.  Progress lines on the console start with
``pykexec-kdump:``.  ssh targets: see :mod:`pykexec.kdump.capture_ssh`.
"""

from __future__ import annotations

import os
import time

from pykexec.kdump import capture_plan as CP

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any, TypeVar

    from pykexec.kdump.config import KdumpConfig
    from pykexec.kdump.pid1 import System
    from pykexec.kdump.records import CrashRecord

    T = TypeVar("T")

PREFIX = "pykexec-kdump: "
VMCORE = "/proc/vmcore"
CONFIG = "/etc/pykexec/kdump.toml"
SHELL = "/bin/sh"


class Console:
    """Progress lines on the console (PID 1's stdout is /dev/console)."""

    def __init__(self, fd: int = 1) -> None:
        self.fd = fd

    def say(self, text: str) -> None:
        try:
            os.write(self.fd, (PREFIX + text + "\n").encode("utf-8", "replace"))
        except OSError:
            pass  # no console: nothing to tell it


class CrashDump:
    """What the capture learnt from /proc/vmcore before writing anything."""

    def __init__(self, release: str, crash_time: float, log: bytes, xen_log: bytes | None) -> None:
        self.release, self.crash_time, self.log, self.xen_log = release, crash_time, log, xen_log


class Capture:
    """One capture.  ``root`` prefixes every path (tests run it in a temporary
    directory with a fake :class:`~pykexec.kdump.pid1.System`)."""

    def __init__(self, plan: CP.CapturePlan, config: KdumpConfig, system: System, console: Console,
                 root: str = "/", vmcore: str = VMCORE) -> None:
        self.plan, self.config, self.system, self.console = plan, config, system, console
        self.root = root
        self.vmcore = vmcore
        self.errors: list[str] = []
        self.started = time.monotonic()
        self.mounted: str | None = None

    def path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def step(self, what: str, action: Callable[..., T], *args: Any) -> T | None:
        """``action(*args)``; on failure one line naming ``what``, remembered, and None."""
        try:
            return action(*args)
        except Exception as err:  # noqa: BLE001 -- every failure must end in a line and the next step
            text = f"{what}: {type(err).__name__}: {err}"
            self.errors.append(text)
            self.console.say("FAILED " + text)
            return None

    # -- the steps -------------------------------------------------------------------------

    def mount_kernel_filesystems(self) -> None:
        import errno

        for source, where, fstype in (("proc", "/proc", "proc"), ("sysfs", "/sys", "sysfs"),
                                      ("devtmpfs", "/dev", "devtmpfs")):
            try:
                self.system.mount(source, self.path(where), fstype)
            except OSError as err:
                if err.errno != errno.EBUSY:  # mounted already (devtmpfs.mount=1)
                    raise

    def load_modules(self) -> None:
        """Each module in order; one that fails is told but is no failure of the capture
        (a driver for hardware that is not there, a CPU-specific one): if the target
        cannot be reached without it, that step fails."""
        loaded = 0
        for name in self.plan.modules:
            try:
                loaded += self.system.load_module(self.path(f"{CP.MODULE_DIR}/{name}.ko"))
            except OSError as err:
                self.console.say(f"module {name} not loaded: {err.strerror or err}")
        self.console.say(f"loaded {loaded} of {len(self.plan.modules)} modules")

    def find_device(self, device: CP.Device) -> str:
        """The ``/dev`` node of ``device``, waiting for its driver to find it: the one
        whose file system has the recorded UUID, else the one of the same name."""
        from pykexec.kdump.fsuuid import read_uuid

        deadline = time.monotonic() + self.plan.wait_seconds
        while True:
            names = sorted(os.listdir(self.path("/sys/class/block"))) \
                if os.path.isdir(self.path("/sys/class/block")) else []
            if device.uuid:
                for name in names:
                    if read_uuid(self.path(f"/dev/{name}"), device.fstype) == device.uuid:
                        return f"/dev/{name}"
            if device.name in names and (not device.uuid or time.monotonic() > deadline):
                return f"/dev/{device.name}"
            if time.monotonic() > deadline:
                raise FileNotFoundError(f"no block device {device.name}"
                                        + (f" nor one with UUID {device.uuid}" if device.uuid else "")
                                        + f" after {self.plan.wait_seconds:.0f} s (found: {' '.join(names)})")
            time.sleep(0.2)

    def mount_target(self) -> str:
        """Mount the target's file system; returns the target directory."""
        device = self.plan.device
        assert device is not None, "a local target's plan names its device"
        node = self.find_device(device)
        self.system.mount(self.path(node), self.path(CP.MOUNT_POINT), device.fstype, device.options)
        self.mounted = CP.MOUNT_POINT
        self.console.say(f"target {node} ({device.fstype}) mounted on {CP.MOUNT_POINT}")
        return self.path(os.path.join(CP.MOUNT_POINT, device.path.lstrip("/")))

    def read_dump(self) -> CrashDump:
        """The crashed kernel's release, crash time and log (dom0's and Xen's for a Xen machine)."""
        from pykexec.vmcore.cli import DmesgOptions, dmesg
        from pykexec.vmcore.open import open_dump

        with open_dump(self.vmcore) as core:
            info = core.vmcoreinfo
            release = (info.osrelease if info is not None else None) or "unknown"
            crash_time = (info.crashtime if info is not None else None) or time.time()
            xen = any(n.name == b"Xen" for n in core.notes)
        log = self.step("read the kernel log", dmesg, DmesgOptions(self.vmcore)) or b""
        xen_log = self.step("read Xen's console ring", dmesg, DmesgOptions(self.vmcore, xen=True)) if xen else None
        return CrashDump(release, crash_time, log, xen_log)

    def save_log(self, directory: Path, name: str, text: bytes) -> str:
        with open(directory / name, "wb") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        self.console.say(f"log saved: {directory / name} ({len(text)} bytes)")
        return name

    def save_dump(self, destination: str | int, *, force: bool = False,
                  name: str | None = None) -> tuple[bool, int | None]:
        """The dump at ``destination`` (a file descriptor: a flattened stream to it, shown
        as ``name``): (complete, bytes written)."""
        from pykexec.vmcore.save import save

        c = self.config
        self.console.say(f"saving the dump to {name or destination} (dump level {c.dump_level}, {c.compression})")
        result = save(self.vmcore, destination, compress=c.compression, dump_level=c.dump_level,
                      force=force, progress=False)
        if result.incomplete:
            self.errors.append(f"the dump is incomplete: {result.incomplete}")
            self.console.say(f"dump INCOMPLETE ({result.saved_pages} pages saved): {result.incomplete}")
            return False, result.out_bytes
        self.console.say(f"dump saved: {result.out_bytes} bytes, {result.saved_pages} pages "
                         f"in {result.seconds:.1f} s")
        return True, result.out_bytes

    # -- the whole capture -----------------------------------------------------------------

    def run(self) -> str:
        """Capture; returns the action to end with (the final or the failure action)."""
        self.console.say(f"capture started, target {self.config.target}")
        self.step("mount /proc, /sys and /dev", self.mount_kernel_filesystems)
        self.step("load modules", self.load_modules)
        dump = self.step("read /proc/vmcore", self.read_dump)
        if dump is not None:
            from pykexec.kdump.records import panic_line

            panic = panic_line(dump.log.decode("utf-8", "replace"))
            self.console.say(f"crash of {dump.release}: {panic or 'no panic line in the log'}")
        kind = self.plan.target_kind
        if kind == "local":
            target_dir = self.step("mount the target", self.mount_target)
            if target_dir is not None and dump is not None:
                self.step("save the crash", self.save_crash, target_dir, dump)
        elif kind == "raw":
            self.step("save the dump", self.save_raw)
        elif kind == "ssh" and dump is not None:
            from pykexec.kdump.capture_ssh import save_over_ssh

            self.step("save the crash over ssh", save_over_ssh, self, dump)
        self.step("sync", self.system.sync)
        if self.mounted:
            self.step("unmount the target", self.system.umount, self.path(self.mounted))
        ok = not self.errors
        action = self.config.final_action if ok else self.config.failure_action
        self.console.say(f"capture {'complete' if ok else 'FAILED'} in {time.monotonic() - self.started:.1f} s; "
                         f"peak memory: {self.peak_memory()}; {'final' if ok else 'failure'} action: {action}")
        return action

    def peak_memory(self) -> str:
        """The capture's peak resident memory (VmHWM), and the crash kernel's memory in use
        now against its total, as /proc says: what ``crashkernel=`` must hold."""
        def kib(path: str, key: str) -> int | None:
            try:
                with open(self.path(path)) as f:
                    line = next((ln for ln in f if ln.startswith(key + ":")), "")
            except OSError:
                return None
            words = line.split()
            return int(words[1]) if len(words) > 1 and words[1].isdigit() else None

        hwm = kib("/proc/self/status", "VmHWM")
        total, available = kib("/proc/meminfo", "MemTotal"), kib("/proc/meminfo", "MemAvailable")
        parts = [f"capture {hwm / 1024:.1f} MiB" if hwm is not None else "capture unknown"]
        if total is not None and available is not None:
            parts.append(f"{(total - available) / 1024:.1f} of {total / 1024:.1f} MiB in use")
        return ", ".join(parts)

    def save_raw(self) -> None:
        """The dump as a flattened stream from the device's first byte (see
        :mod:`pykexec.kdump.raw_target`: the next boot collects it)."""
        device = self.plan.device
        assert device is not None, "a raw target's plan names its device"
        node = self.find_device(device)
        fd = os.open(self.path(node), os.O_WRONLY | os.O_CLOEXEC)
        try:
            saved = self.save_dump(fd, name=node)
            os.fsync(fd)
        finally:
            os.close(fd)
        if saved is None or not saved[0]:
            raise OSError(f"the dump on {node} is incomplete")

    def save_crash(self, target_dir: str, dump: CrashDump) -> None:
        """The crash directory: log, provisional record, dump, final record."""
        from dataclasses import replace
        from datetime import datetime, timezone

        from pykexec.kdump import records as R

        directory = R.new_crash_dir(target_dir, dump.release, datetime.fromtimestamp(dump.crash_time, timezone.utc))
        self.console.say(f"crash directory {directory}")
        removed = self.step("prune old crashes", R.prune, target_dir, self.config.keep)
        if removed:
            self.console.say(f"removed {len(removed)} old crash(es) (keep = {self.config.keep})")
        log = self.step("save the log", self.save_log, directory, R.LOG_FILE, dump.log)
        xen_log = self.step("save Xen's log", self.save_log, directory, R.XEN_LOG_FILE, dump.xen_log) \
            if dump.xen_log is not None else None
        record = self.record(dump, directory.name, log=log, xen_log=xen_log, error=R.NOT_FINISHED)
        self.step("write the provisional record", R.write_record, directory, record)
        saved = self.step("save the dump", self.save_dump, str(directory / R.DUMP_FILE))
        complete, size = saved if saved is not None else (False, None)
        if size is None and (directory / R.DUMP_FILE).exists():
            size = (directory / R.DUMP_FILE).stat().st_size
        final = replace(record, complete=complete,
                          dump=R.DUMP_FILE if (directory / R.DUMP_FILE).exists() else None, dump_bytes=size,
                          capture_seconds=round(time.monotonic() - self.started, 3),
                          error="; ".join(self.errors) or None)
        try:
            R.write_record(directory, final)
        except OSError:
            # A full file system has no block for a new file: overwrite the provisional
            # record's in place.
            self._rewrite(directory / R.RECORD_FILE, final)
        self.console.say(f"record written: {directory / R.RECORD_FILE} (complete: {str(final.complete).lower()})")

    def record(self, dump: CrashDump, crash_id: str, **fields: Any) -> CrashRecord:
        """The record of this crash, incomplete and without a dump unless ``fields`` say otherwise."""
        from datetime import datetime, timezone

        from pykexec.kdump.records import CrashRecord, panic_line

        values: dict[str, Any] = dict(
            id=crash_id, kernel_release=dump.release,
            crash_time=datetime.fromtimestamp(dump.crash_time, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            panic=panic_line(dump.log.decode("utf-8", "replace")), complete=False, dump=None,
            dump_level=self.config.dump_level, compression=self.config.compression)
        values.update(fields)
        return CrashRecord(**values)

    @staticmethod
    def _rewrite(path: Path, record: CrashRecord) -> None:
        with open(path, "r+b") as f:
            f.write(record.to_json().encode())
            f.truncate()
            f.flush()
            os.fsync(f.fileno())


# -- PID 1 --------------------------------------------------------------------------------------

def finish(system: System, action: str, console: Console) -> None:
    """End as ``action`` says: exec a shell, or reboot(2); never returns if that works."""
    if action == "shell":
        if os.path.exists(SHELL):
            console.say(f"starting {SHELL}")
            os.execv(SHELL, [SHELL])
        console.say(f"no {SHELL} in the crash initramfs: rebooting")
        action = "reboot"
    try:
        system.reboot(action)
    except OSError as err:
        console.say(f"FAILED {action}: {err}")


def load_plan(console: Console) -> tuple[CP.CapturePlan, KdumpConfig]:
    from pykexec.kdump.config import KdumpConfig, load_config

    with open(CP.PLAN_PATH) as f:
        plan = CP.CapturePlan.from_json(f.read())
    try:
        config = load_config(CONFIG)
    except Exception as err:  # noqa: BLE001 -- a capture with the defaults beats none
        console.say(f"FAILED read {CONFIG}: {err}; using the defaults")
        config = KdumpConfig()
    return plan, config


def main() -> None:
    """PID 1: capture, then the final (or failure) action."""
    from pykexec.kdump.pid1 import System

    console = Console()
    system = System()
    try:
        plan, config = load_plan(console)
        action = Capture(plan, config, system, console).run()
    except Exception as err:  # noqa: BLE001 -- PID 1 must reach its last action
        console.say(f"FAILED the capture: {type(err).__name__}: {err}")
        action = "reboot"
    system.sync()
    finish(system, action, console)
