"""One pykexec at a time: loads, unloads and jumps take an exclusive lock, so that two
invocations (a fleet tool and an operator) cannot interleave and leave a mix."""

from __future__ import annotations

import fcntl
import os
import sys
import time

from pykexec.errors import KexecError

RUN_DIR = "/run/pykexec"
WAIT_SECONDS = 60.0


class Lock:
    """``with Lock(): ...`` holds ``RUN_DIR/lock`` (flock), waiting up to ``wait`` seconds
    for another holder, whose pid it names."""

    def __init__(self, run_dir: str | None = None, wait: float = WAIT_SECONDS) -> None:
        self.path = os.path.join(run_dir or RUN_DIR, "lock")
        self.wait = wait
        self.fd = -1

    def __enter__(self) -> "Lock":
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise KexecError(f"cannot take the lock {self.path}: {err.strerror}") from None
        deadline = time.monotonic() + self.wait
        told = False
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = self._holder()
                if time.monotonic() >= deadline:
                    os.close(self.fd)
                    raise KexecError(f"another pykexec (pid {holder}) has held {self.path} for {self.wait:.0f} s; "
                                     "try again when it is done") from None
                if not told:
                    print(f"pykexec: waiting for pid {holder}, which is loading or unloading", file=sys.stderr)
                    told = True
                time.sleep(0.05)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def _holder(self) -> str:
        try:
            return os.pread(self.fd, 32, 0).decode().strip() or "?"
        except (OSError, UnicodeDecodeError):
            return "?"

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the flock
            self.fd = -1
