"""The README's first command runs scripts/demo.sh, i.e. setup then scripts/demo.py:
keep the demo itself working (setup is what .ci/run runs anyway)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support.testbed.assets import Assets

DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"


def test_demo_kexecs_and_reads_the_crash_dump(pykexec_assets: Assets) -> None:
    run = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "second kernel up with the exact command line: yes" in run.stdout
    assert "crash kernel read the dump and found the panic: yes" in run.stdout
    assert "crash kernel saved the dump and read it back: yes" in run.stdout
    assert "Kernel panic - not syncing: sysrq triggered crash" in run.stdout
