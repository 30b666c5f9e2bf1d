"""Saving a dump: `pykexec vmcore save` against makedumpfile on the same real dumps (made by
the QEMU test bed, cached in .cache/testbed/vmcores), side by side in one run, and against
simply reading the dump (`cat SRC > /dev/null`).

For each command: median wall time of N runs (page cache warm), input rate (dump size /
time), output size and ratio to the dump, pages saved (from the output's 2nd bitmap), and
peak RSS (`/usr/bin/time -v` "Maximum resident set size").  Run it niced:

    nice -n 10 .venv/bin/python benchmarks/vmcore_save.py [--runs 3] [--kernel 6.1 --kernel 6.12]

Rows at dump level 31 (zero, cache, user and free pages left out: what distributions'
kdump configurations use) and 17 (zero and free pages) compare the same page selection
(the "pages" column says so).  Debian's
makedumpfile 1.7.2 has no zstd: `-z` would silently write uncompressed pages, so it
is listed only when `makedumpfile -h` says zstd is enabled.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pykexec.vmcore.kdump import KdumpFile

from support.testbed.assets import Assets
from support.vmcore_fixture import real_vmcore

PYKEXEC = [sys.executable, "-m", "pykexec.vmcore.cli", "save"]


def commands(src: Path, dst: Path) -> list[tuple[str, list[str]]]:
    rows: list[tuple[str, list[str]]] = [("cat SRC > /dev/null", ["sh", "-c", f"cat '{src}' > /dev/null"])]
    mdf = shutil.which("makedumpfile")
    if mdf:
        help_text = subprocess.run([mdf, "-h"], capture_output=True, text=True).stdout
        rows += [("makedumpfile -l -d 31 (lzo)", [mdf, "-l", "-d", "31", str(src), str(dst)]),
                 ("makedumpfile -c -d 31 (zlib)", [mdf, "-c", "-d", "31", str(src), str(dst)]),
                 ("makedumpfile -l -d 17 (lzo)", [mdf, "-l", "-d", "17", str(src), str(dst)]),
                 ("makedumpfile -c -d 17 (zlib)", [mdf, "-c", "-d", "17", str(src), str(dst)])]
        if re.search(r"zstd\s+enabled", help_text):
            rows.append(("makedumpfile -z -d 31 (zstd)", [mdf, "-z", "-d", "31", str(src), str(dst)]))
    rows += [("pykexec vmcore save -d 31 (zstd 1)", PYKEXEC + ["-f", "-d", "31", str(src), str(dst)]),
             ("pykexec vmcore save -d 31 --level -3", PYKEXEC + ["-f", "-d", "31", "--level", "-3", str(src), str(dst)]),
             ("pykexec vmcore save -d 31 (zlib 1)", PYKEXEC + ["-f", "-d", "31", "--compress", "zlib", str(src), str(dst)]),
             ("pykexec vmcore save -d 31 --threads 1", PYKEXEC + ["-f", "-d", "31", "--threads", "1", str(src), str(dst)]),
             ("pykexec vmcore save -d 17 (zstd 1)", PYKEXEC + ["-f", "-d", "17", str(src), str(dst)]),
             ("pykexec vmcore save -d 17 --level -3", PYKEXEC + ["-f", "-d", "17", "--level", "-3", str(src), str(dst)])]
    return rows


def peak_rss_kib(cmd: list[str]) -> int | None:
    if not os.path.exists("/usr/bin/time"):
        return None
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr)
    return int(m.group(1)) if m else None


def run(cmd: list[str], dst: Path) -> float:
    dst.unlink(missing_ok=True)
    t = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def bench(src: Path, runs: int) -> None:
    size = src.stat().st_size
    print(f"\n{src.name}: {size / 1e6:.0f} MB ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")
    print(f"{'command':38s} {'time s':>7s} {'MB/s':>7s} {'out MB':>7s} {'ratio':>7s} {'pages':>7s} {'RSS MB':>7s}")
    with tempfile.TemporaryDirectory(dir=src.parent) as tmp:
        dst = Path(tmp) / "out"
        results: dict[str, tuple[float, int]] = {}
        for name, cmd in commands(src, dst):
            run(cmd, dst)  # warm-up (page cache)
            t = statistics.median(run(cmd, dst) for _ in range(runs))
            out = dst.stat().st_size if dst.exists() else 0
            results[name] = (t, out)
            pages = ""
            if out:
                with KdumpFile(dst) as k:
                    pages = str(k.num_saved)
            rss = peak_rss_kib(cmd)
            print(f"{name:38s} {t:7.2f} {size / t / 1e6:7.0f} {out / 1e6:7.1f} "
                  f"{(out / size if out else 0):7.3f} {pages:>7s} {(rss or 0) / 1024:7.1f}")
    # Ratios, pykexec / other (time, size): below 1 is better for pykexec.
    cat = results["cat SRC > /dev/null"][0]
    print("ratios (pykexec / other; time, size):")
    for ours in [n for n in results if n.startswith("pykexec")]:
        t, out = results[ours]
        level = " -d 31 " if " -d 31 " in ours else " -d 17 "
        parts = [f"{t / cat:.2f}x cat"]
        for other in [n for n in results if n.startswith("makedumpfile") and level in n]:
            ot, oout = results[other]
            parts.append(f"{other.split(' ', 1)[1]}: {t / ot:.2f}x time, {out / oout:.2f}x size")
        print(f"  {ours}: " + "; ".join(parts))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kernel", action="append")
    args = ap.parse_args()
    assets = Assets()
    for kernel in args.kernel or ["6.1", "6.12"]:
        bench(real_vmcore(assets, kernel), args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
