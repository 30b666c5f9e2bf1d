"""Every corpus case through the real CLI, in a subprocess (``python -m pykexec``), under
a 1 GiB address-space limit and a time limit: a non-zero exit, exactly one stderr line
starting "pykexec: ", no traceback or "internal error", and the case's own message.

Nothing touches the system: kexec command lines carry --machine and --dry-run (see
support/corpus.py), the rest are read-only ``vmcore`` commands."""

from __future__ import annotations

import atexit
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.corpus import build

MEMORY_LIMIT = 1 << 30  # far above a parse's needs; far below what the bugs asked for
TIME_LIMIT = 30


# Built once, at collection (the parameters are the cases), and used by every test.
CORPUS_DIR = Path(tempfile.mkdtemp(prefix="pykexec-corpus-"))
atexit.register(shutil.rmtree, CORPUS_DIR, True)  # also when the fixture never ran (-k)
CASES = build(CORPUS_DIR)


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _run(corpus_dir: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    args = [a.replace("{dir}", str(corpus_dir)) for a in argv]
    return subprocess.run([sys.executable, "-m", "pykexec", *args], capture_output=True, text=True,
                          timeout=TIME_LIMIT, preexec_fn=_limit, cwd=corpus_dir, errors="replace")


@pytest.fixture(scope="module")
def results() -> Iterator[dict[str, subprocess.CompletedProcess[str]]]:
    """Every case run once, as many at a time as there are CPUs (each is mostly Python
    start-up), so the corpus costs seconds, not a minute."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {name: pool.submit(_run, CORPUS_DIR, argv) for name, argv, _ in CASES}
        done = {name: f.result() for name, f in futures.items()}
    yield done
    shutil.rmtree(CORPUS_DIR, ignore_errors=True)


def _safe(argv: list[str]) -> bool:
    """Dry runs, read-only vmcore commands, or refused before any action (--json alone)."""
    return "--dry-run" in argv or argv[0] == "vmcore" or ("--json" in argv and "--machine" not in argv)


@pytest.mark.parametrize("name,argv,expected", CASES, ids=[c[0] for c in CASES])
def test_corpus_case(results: dict[str, subprocess.CompletedProcess[str]], name: str, argv: list[str],
                     expected: str) -> None:
    assert _safe(argv), f"{name}: a corpus case must never reach a syscall"
    proc = results[name]
    lines = proc.stderr.splitlines()
    assert proc.returncode != 0, f"{name}: exit 0\n{proc.stdout[-500:]}"
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("pykexec: "), f"{name}: stderr {proc.stderr!r}"
    assert expected in lines[0], f"{name}: expected {expected!r} in {lines[0]!r}"
