"""Host tools the test bed runs: commands, a host Python 3.11 to precompile the guest's
bytecode, and ldd to copy the shared libraries a guest binary needs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

from support.testbed.cache import REPO_ROOT, TestbedError


def run_command(cmd: Sequence[str | os.PathLike[str]], *, cwd: Path | None = None,
                env: Mapping[str, str] | None = None) -> str:
    """Run a command, return stdout; raise with stderr included on failure."""
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise TestbedError(f"command failed ({res.returncode}): {' '.join(map(str, cmd))}\n"
                           f"{res.stdout}\n{res.stderr}")
    return res.stdout


def host_python311() -> str:
    """A host Python 3.11 (same bytecode as the guest's Debian 3.11)."""
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    venv = REPO_ROOT / ".venv" / "bin" / "python"
    for cand in (str(venv), shutil.which("python3.11")):
        if cand and Path(cand).exists():
            return cand
    raise TestbedError("need a host Python 3.11 to precompile the guest's bytecode")


def compile_tree(root: Path, *, guest_prefix: str) -> None:
    """Precompile ``root`` with unchecked-hash pycs, recording guest paths.

    Unchecked-hash pycs are never validated against the source, so cpio
    timestamps do not matter and the guest never recompiles.
    """
    code = ("import compileall, sys, py_compile\n"
            "ok = compileall.compile_dir(sys.argv[1], quiet=2, workers=0, stripdir=sys.argv[1],"
            " prependdir=sys.argv[2],"
            " invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)\n")
    # Some stdlib files are deliberately invalid (lib2to3 fixtures, etc.): ignore failures.
    run_command([host_python311(), "-c", code, root, guest_prefix])


def copy_shared_libs(elfs: Sequence[Path], dest_root: Path, extra_libdirs: Sequence[str]) -> list[Path]:
    """Copy the libraries ``ldd`` resolves for ``elfs`` into ``dest_root`` at
    their host paths.  Returns the ELF files with unresolved libraries."""
    env = dict(os.environ)
    if extra_libdirs:
        env["LD_LIBRARY_PATH"] = ":".join(extra_libdirs)
    unresolved: list[Path] = []
    for elf in elfs:
        res = subprocess.run(["ldd", str(elf)], capture_output=True, text=True, env=env,
                             stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            if "not a dynamic executable" in res.stdout + res.stderr:
                continue
            raise TestbedError(f"ldd {elf} failed: {res.stderr}")
        if "not found" in res.stdout:
            unresolved.append(elf)
            continue
        for line in res.stdout.splitlines():
            m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if not m:
                continue
            src = Path(m.group(1))
            if str(src).startswith(str(dest_root)):
                continue  # resolved inside the tree (an unpacked package): keep that one
            real = src.resolve()
            dst_real = dest_root / real.relative_to("/")
            if not dst_real.exists():
                dst_real.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(real, dst_real)
            # Keep the name ldd / the ELF interpreter field uses as a symlink.
            dst_name = dest_root / src.relative_to("/")
            if src != real and not dst_name.is_symlink() and not dst_name.exists():
                dst_name.parent.mkdir(parents=True, exist_ok=True)
                dst_name.symlink_to(real)
    return unresolved
