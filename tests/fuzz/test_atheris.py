"""A short bounded run of the atheris harness (coverage-guided) in CI; longer runs by
hand: ``.venv/bin/python tests/fuzz/atheris_images.py -max_total_time=600``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

SECONDS = 10 * max(1, int(os.environ.get("PYKEXEC_FUZZ_EXAMPLES", "1") or 1))


def test_atheris_images(tmp_path: Path) -> None:
    harness = Path(__file__).with_name("atheris_images.py")
    proc = subprocess.run([sys.executable, str(harness), f"-max_total_time={SECONDS}", "-rss_limit_mb=1024",
                           "-timeout=10", f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"],
                          capture_output=True, text=True, timeout=SECONDS + 60, cwd=tmp_path)
    crashes = list(tmp_path.glob("crash-*")) + list(tmp_path.glob("oom-*")) + list(tmp_path.glob("timeout-*"))
    assert proc.returncode == 0 and not crashes, proc.stderr[-3000:]
