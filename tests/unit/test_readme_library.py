"""The README's library example, run as written: it plans a load of ./vmlinuz for a
machine described in code and prints the plan."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support.synth_images import make_bzimage

README = Path(__file__).resolve().parents[2] / "README.md"
REAL_KERNELS = sorted(glob.glob(str(README.parent / ".cache/testbed/pkgs/linux-image-*/boot/vmlinuz-*")))


def library_example() -> str:
    text = README.read_text()
    heading = re.search(r"^## .*\blibrary\b.*$", text, re.M | re.I)
    assert heading, "the README has no section whose title says 'library'"
    block = re.search(r"```python\n(.*?)```", text[heading.end():], re.S)
    assert block, "the library section has no ```python example"
    return block.group(1)


def run_example(tmp_path: Path, kernel: bytes) -> str:
    (tmp_path / "vmlinuz").write_bytes(kernel)
    (tmp_path / "example.py").write_text(library_example())
    env = dict(os.environ, PYTHONPATH=str(README.parent / "src"))
    proc = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_readme_example_plans_a_kernel_in_the_current_directory(tmp_path):
    out = run_example(tmp_path, make_bzimage())
    assert out.startswith("image type: bzImage64    backend: kexec_load")
    # --reuse-cmdline's rule (BOOT_IMAGE= and crashkernel= dropped), then the appended words.
    assert "command line: 'root=/dev/vda1 ro console=ttyS0'" in out
    assert "memory map of a machine described in code:" in out
    roles = [line.split()[0] for line in out.splitlines() if re.match(r"^\w+ 0x[0-9a-f]+ \d+ [0-9a-f]{16}$", line)]
    assert sorted(roles) == ["boot_params", "cmdline", "kernel", "purgatory"]


def test_the_readme_example_plans_a_real_debian_kernel(tmp_path):
    if not REAL_KERNELS:
        why = "no Debian kernel in .cache/testbed (scripts/setup.sh fetches them)"
        pytest.fail(why) if os.environ.get("CI") else pytest.skip(why)
    out = run_example(tmp_path, Path(REAL_KERNELS[0]).read_bytes())
    assert "image type: bzImage64" in out and "kernel       0x" in out
