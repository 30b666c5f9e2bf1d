"""The test bed's cache directory and the small tools every part of it uses: content
hashes for cache keys, atomic writes, an exclusive file lock, pruning of old files."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from pathlib import Path
from typing import Iterator

REPO_ROOT = Path(__file__).resolve().parents[3]


class TestbedError(RuntimeError):
    """The test bed could not fetch, build or boot something."""

    __test__ = False  # not a pytest test class


def default_cache_dir() -> Path:
    env = os.environ.get("PYKEXEC_TESTBED_CACHE")
    return Path(env) if env else REPO_ROOT / ".cache" / "testbed"


def content_hash(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:20]


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@contextlib.contextmanager
def flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def flock_slot(path: Path, slots: int, poll: float = 0.2) -> Iterator[int]:
    """One of ``slots`` exclusive locks: ``path`` itself (slot 0, so a process with
    one slot shares it with everything using :func:`flock` on ``path``) or
    ``path.1`` ... ``path.<slots-1>``; waits until one is free and yields its number."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [path] + [path.with_name(f"{path.name}.{i}") for i in range(1, slots)]
    fds = [os.open(name, os.O_RDWR | os.O_CREAT, 0o644) for name in names]
    held = -1
    try:
        if slots == 1:
            fcntl.flock(fds[0], fcntl.LOCK_EX)
            held = 0
        while held < 0:
            for i, fd in enumerate(fds):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                held = i
                break
            else:
                time.sleep(poll)
        yield held
    finally:
        for fd in fds:
            os.close(fd)


def prune(directory: Path, *, max_age: float) -> None:
    """Delete plain files in ``directory`` older than ``max_age`` seconds."""
    now = time.time()
    for p in directory.iterdir():
        with contextlib.suppress(OSError):
            if p.is_file() and now - p.stat().st_mtime > max_age:
                p.unlink()
