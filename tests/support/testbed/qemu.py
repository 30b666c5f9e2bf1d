"""Booting a guest under QEMU (TCG) with its serial console on a pipe, streamed to a log,
and the result: the console text, with helpers to find the markers the guest printed."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from support.testbed.cache import TestbedError, default_cache_dir, flock_slot, prune
from support.testbed.guest_init import INIT_MARKER, SCRIPT_EXIT_MARKER, SECOND_KERNEL_MARKER

#: Default guest kernel command line.  ``panic=-1`` + QEMU's ``-no-reboot``
#: turn any panic into a prompt QEMU exit instead of a hang.
DEFAULT_APPEND = "console=ttyS0 panic=-1"


@dataclass
class GuestRun:
    """Result of one QEMU run."""

    cmd: list[str]
    log: str
    log_path: Path
    returncode: int | None
    timed_out: bool
    duration: float                       # seconds, QEMU start to exit
    marker_times: dict[str, float] = field(default_factory=dict)  # first sighting, s since start

    def __contains__(self, marker: str) -> bool:
        return marker in self.log

    def lines_with(self, marker: str) -> list[str]:
        return [line for line in self.log.splitlines() if marker in line]

    def expect(self, marker: str) -> str:
        """Return the first console line containing ``marker``, else fail with the log tail."""
        lines = self.lines_with(marker)
        if not lines:
            raise AssertionError(f"marker {marker!r} not in guest console\n{self.describe()}")
        return lines[0]

    def expect_not(self, marker: str) -> None:
        if marker in self.log:
            raise AssertionError(f"unexpected {marker!r} in guest console\n{self.describe()}")

    @property
    def script_rc(self) -> int | None:
        """Exit status of the first kernel's guest script, None if it did not
        return (e.g. after ``kexec -e``; the second kernel's init is ignored)."""
        first_stage = self.log.split(SECOND_KERNEL_MARKER, 1)[0]
        m = re.search(rf"{SCRIPT_EXIT_MARKER} rc=(\d+)", first_stage)
        return int(m.group(1)) if m else None

    def second_kernel(self) -> tuple[str, str]:
        """(release, cmdline) printed by the standard second-kernel initramfs."""
        line = self.expect(SECOND_KERNEL_MARKER)
        m = re.search(rf"{SECOND_KERNEL_MARKER} release=(\S+) cmdline=(.*)$", line)
        if not m:
            raise AssertionError(f"malformed second-kernel line {line!r}\n{self.describe()}")
        return m.group(1), m.group(2).rstrip("\r ")

    def assert_ok(self) -> None:
        """The script returned 0, QEMU exited by itself, and nothing panicked."""
        if self.timed_out:
            raise AssertionError(f"QEMU timed out\n{self.describe()}")
        self.expect_not("Kernel panic")
        if self.script_rc != 0:
            raise AssertionError(f"guest script rc={self.script_rc}\n{self.describe()}")

    def describe(self, tail: int = 60) -> str:
        lines = self.log.splitlines()
        return (f"qemu: rc={self.returncode} timed_out={self.timed_out} "
                f"duration={self.duration:.1f}s log={self.log_path}\n"
                f"--- last {min(tail, len(lines))} console lines ---\n" + "\n".join(lines[-tail:]))


def _qemu_lock_path() -> Path:
    return default_cache_dir() / ".qemu.lock"


def qemu_slots() -> int:
    """How many guests may run at once: ``$PYKEXEC_QEMU_SLOTS`` (CI sets 2, one per core,
    with two pytest workers), else 1."""
    try:
        return max(1, int(os.environ.get("PYKEXEC_QEMU_SLOTS", "1")))
    except ValueError:
        raise TestbedError("PYKEXEC_QEMU_SLOTS must be a number") from None


def run_qemu(kernel: Path | str, initrd: Path | str | None, append: str = DEFAULT_APPEND, *,
             memory: str = "1G", smp: int = 1, timeout: float = 120.0, cpu: str = "qemu64",
             extra_args: Sequence[str] = (), log_path: Path | str | None = None,
             until: str | None = None, serialize: bool = True, watch: Sequence[str] = ()) -> GuestRun:
    """Boot ``kernel`` under QEMU TCG with the serial console on a pipe.

    The console is streamed to ``log_path`` (default: a file in the cache's
    ``logs/``) as it arrives.  QEMU is killed after ``timeout`` seconds, or as
    soon as ``until`` appears on the console.  With ``serialize`` (default)
    runs from all processes using the same cache take turns: the machines
    this runs on have few cores.  No TTY or stdin is needed.  The first
    sighting of each ``watch`` marker is timed too (``marker_times``).
    """
    if log_path is None:
        logs = default_cache_dir() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        prune(logs, max_age=7 * 86400)
        log_path = logs / f"qemu-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{time.monotonic_ns()}.log"
    log_file = Path(log_path)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        raise TestbedError("qemu-system-x86_64 not found; run .ci/install-deps.sh")
    cmd = [qemu, "-accel", "tcg", "-cpu", cpu, "-m", memory, "-smp", str(smp),
           "-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none",
           "-serial", "stdio", "-kernel", str(kernel), "-append", append]
    if initrd is not None:
        cmd += ["-initrd", str(initrd)]
    cmd += list(extra_args)

    lock_cm: contextlib.AbstractContextManager[object]
    if serialize:
        lock_cm = flock_slot(_qemu_lock_path(), qemu_slots())
    else:
        lock_cm = contextlib.nullcontext()
    with lock_cm, open(log_file, "wb") as logf:
        chunks: list[bytes] = []
        marker_times: dict[str, float] = {}
        seen_until = threading.Event()
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        assert proc.stdout is not None

        def pump() -> None:
            pending = b""
            for chunk in iter(lambda: proc.stdout.read1(65536), b""):  # type: ignore[union-attr]
                chunks.append(chunk)
                logf.write(chunk)
                logf.flush()
                pending = (pending + chunk)[-4096:]
                for mk in (INIT_MARKER, SCRIPT_EXIT_MARKER, SECOND_KERNEL_MARKER, *watch):
                    if mk not in marker_times and mk.encode() in pending:
                        marker_times[mk] = time.monotonic() - start
                if until and until.encode() in pending:
                    seen_until.set()
                    # Let the rest of the line arrive before stopping QEMU.
                    if b"\n" in pending[pending.rfind(until.encode()):]:
                        _kill(proc)
        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = not seen_until.is_set()
            _kill(proc)
            proc.wait()
        finally:
            if proc.poll() is None:
                _kill(proc)
                proc.wait()
        reader.join(timeout=10)
        duration = time.monotonic() - start
        if timed_out:
            note = f"\n[testbed] QEMU killed after {timeout:.0f}s timeout\n".encode()
            logf.write(note)
            chunks.append(note)
    log = b"".join(chunks).decode("utf-8", errors="replace").replace("\r\n", "\n")
    return GuestRun(cmd=cmd, log=log, log_path=log_file, returncode=proc.returncode,
                    timed_out=timed_out, duration=duration, marker_times=marker_times)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 9)
