"""Load time: pykexec -l against kexec-tools' kexec -l, same kernel, initrd and command
line, in the same QEMU guest (TCG), both warmed up first. Prints medians and ratios for
each syscall and for each tool's default (Debian's kexec-tools 2.0.25 defaults to
kexec_load; pykexec to kexec_file_load, falling back to kexec_load).

    .venv/bin/python benchmarks/load_time.py [--runs 7] [--kernel 6.1]
"""

from __future__ import annotations

import argparse
import re

from support.testbed.assets import Assets
from support.testbed.guest import run_guest_script

ARGS = "-l /boot/vmlinuz --initrd /boot/second.cpio.gz --append 'console=ttyS0 panic=-1 bench=1'"

GUEST = r"""
python3 - <<'PYEOF'
import shlex, statistics, subprocess, time
RUNS = {runs}
cases = {{
    "kexec -c (kexec_load)": ("kexec -c {args}", "kexec -u"),
    "pykexec -c (kexec_load)": ("pykexec -c {args}", "pykexec -u"),
    "kexec -s (kexec_file_load)": ("kexec -s {args}", "kexec -s -u"),
    "pykexec -s (kexec_file_load)": ("pykexec -s {args}", "pykexec -s -u"),
    "kexec (default backend)": ("kexec {args}", "kexec -u"),
    "pykexec (default backend)": ("pykexec {args}", "pykexec -u"),
}}
def once(cmd):
    t = time.perf_counter()
    subprocess.run(shlex.split(cmd), check=True)
    return time.perf_counter() - t
for load, unload in cases.values():      # warm-up: page cache and TCG translation
    once(load); once(unload)
times = {{name: [] for name in cases}}
for _ in range(RUNS):                     # interleaved, so drift hits both tools alike
    for name, (load, unload) in cases.items():
        times[name].append(once(load)); once(unload)
for name, ts in times.items():
    print("BENCH %-30s median %.3f s  min %.3f s" % (name, statistics.median(ts), min(ts)))
PYEOF
"""


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--kernel", default="6.1")
    a = p.parse_args()
    assets = Assets()
    assets.pykexec_segment()
    run = run_guest_script(GUEST.format(runs=a.runs, args=ARGS), assets, kernel=a.kernel, timeout=900)
    med = {}
    for line in run.lines_with("BENCH "):
        print(line)
        m = re.match(r"BENCH (.+?)\s+median ([\d.]+)", line)
        if m:
            med[m.group(1)] = float(m.group(2))
    if len(med) != 6:
        print(run.describe())
        return 1
    for what in ("-c (kexec_load)", "-s (kexec_file_load)", "(default backend)"):
        ours, theirs = med[f"pykexec {what}"], med[f"kexec {what}"]
        print(f"RATIO {what}: pykexec/kexec = {ours / theirs:.2f}x ({ours:.3f} s vs {theirs:.3f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
