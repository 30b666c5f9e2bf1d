"""dmesg from a dump: `pykexec vmcore dmesg` against kexec-tools' `vmcore-dmesg` on the
same real dumps (made by the QEMU test bed and cached in .cache/testbed/vmcores), side
by side in one run. Reports medians of whole-process times, the ratio, and how much of
pykexec's time is the log itself (in-process) versus starting Python.

    .venv/bin/python benchmarks/vmcore_dmesg.py [--runs 30]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pykexec.vmcore.elfcore import ElfCore
from pykexec.vmcore.printk import format_vmcore_dmesg, read_log

from support.testbed.assets import Assets
from support.vmcore_fixture import real_vmcore


def wall(cmd: list[str], runs: int) -> float:
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def in_process(path: Path, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        with ElfCore(str(path)) as core:
            format_vmcore_dmesg(read_log(core))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=30)
    a = p.parse_args()
    assets = Assets()
    # As installed: bytecode compiled (this environment may set PYTHONDONTWRITEBYTECODE).
    import compileall
    import pykexec

    compileall.compile_dir(str(Path(pykexec.__file__).parent), quiet=1)
    # The installed command, as users run it (``python -m`` would add runpy's imports).
    script = Path(sys.executable).parent / "pykexec"
    python = [str(script)] if script.exists() else [sys.executable, "-m", "pykexec"]
    bare = wall([sys.executable, "-c", "pass"], a.runs)
    floor = wall([sys.executable, "-I", "-S", "-c", "pass"], a.runs)
    print(f"python -c pass: {bare * 1e3:.1f} ms; python -I -S -c pass (no site, the least any "
          f"CPython command costs): {floor * 1e3:.1f} ms")
    for kernel in ("6.1", "6.12"):
        dump = real_vmcore(assets, kernel)
        ours = wall(python + ["vmcore", "dmesg", str(dump)], a.runs)
        theirs = wall(["vmcore-dmesg", str(dump)], a.runs)
        inner = in_process(dump, a.runs)
        print(f"{kernel}: vmcore-dmesg {theirs * 1e3:.1f} ms, pykexec vmcore dmesg {ours * 1e3:.1f} ms "
              f"(ratio {ours / theirs:.1f}x); pykexec in-process {inner * 1e3:.1f} ms "
              f"(ratio {inner / theirs:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
