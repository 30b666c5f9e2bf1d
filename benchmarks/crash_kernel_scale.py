"""How a capture grows with the machine's memory: the crash-kernel benchmark
(benchmarks/crash_kernel_save.py) at several guest sizes, each after
benchmarks/first_kernel_workload.py has filled the guest's memory as a busy machine's
(40% page cache, 25% anonymous memory, 25,000 files per GiB of slab), always with
``crashkernel=256M`` and one CPU in the crash kernel.

For each size: ``cat /proc/vmcore``, ``makedumpfile -l`` and ``-c`` at ``-d 31`` and
pykexec's default save, best of ``--runs``; pages in the RAM bitmap and pages saved
(the same for every tool: they filter alike), each command's peak resident set
(wait4), and the ratios.  Then a least-squares fit of each tool's time against pages
saved and pages of RAM, which says what the time follows.

    .venv/bin/python benchmarks/crash_kernel_scale.py [--sizes 1G,2G,4G,8G] [--runs 2] [--kernel 6.1]
"""

from __future__ import annotations

import argparse
import json

from crash_kernel_save import CAT, COMMANDS, HELP, PYKEXEC_DEFAULT, Row, run_in_crash_kernel

MDF_L = "makedumpfile -l -d 31 (lzo)"
MDF_C = "makedumpfile -c -d 31 (zlib)"
TOOLS = (PYKEXEC_DEFAULT, MDF_L, MDF_C, CAT)


def fit(points: list[tuple[int, int, float]]) -> tuple[float, float, float]:
    """Least squares t = a + b * saved + c * ram over (saved, ram, t) points: (a s,
    b µs per saved page, c µs per page of RAM)."""
    # Normal equations of a 3-parameter linear model, solved by Cramer's rule.
    rows = [(1.0, float(s), float(r)) for s, r, _t in points]
    ata = [[sum(x[i] * x[j] for x in rows) for j in range(3)] for i in range(3)]
    atb = [sum(x[i] * p[2] for x, p in zip(rows, points)) for i in range(3)]

    def det(m: list[list[float]]) -> float:
        return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
                + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))

    d = det(ata)
    coef = []
    for k in range(3):
        m = [[atb[i] if j == k else ata[i][j] for j in range(3)] for i in range(3)]
        coef.append(det(m) / d)
    return coef[0], coef[1] * 1e6, coef[2] * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1G,2G,4G,8G", help="guest memory sizes, QEMU's spelling")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--kernel", default="6.1", choices=("6.1", "6.12"))
    ap.add_argument("--timeout", type=float, default=3600.0)
    args = ap.parse_args()
    commands = [c for c in COMMANDS if c[0] in (HELP, *TOOLS)]
    results: list[tuple[str, dict, dict[str, Row]]] = []
    for size in args.sizes.split(","):
        info, rows = run_in_crash_kernel(args.kernel, 1, args.runs, args.timeout, commands, memory=size,
                                         workload=True)
        print(f"{size}: workload {json.dumps(info['workload'])}", flush=True)
        results.append((size, info, rows))

    print(f"\ncrash kernel {results[0][1]['release']}, crashkernel=256M, 1 CPU; best of {args.runs}; under TCG")
    print(f"{'guest':>5s} {'RAM pages':>9s} {'saved':>7s} {'cache MiB':>9s} {'anon MiB':>8s} {'slab MiB':>8s} | "
          + " | ".join(f"{n.split(' (')[0][:24]:>24s} s  MB  peak" for n in TOOLS[:3]) + f" | {'cat s':>6s}")
    points: dict[str, list[tuple[int, int, float]]] = {n: [] for n in TOOLS}
    for size, info, rows in results:
        ram, saved = rows[PYKEXEC_DEFAULT].pages or (0, 0)
        for other in (MDF_L, MDF_C):
            if rows[other].pages and rows[other].pages[1] != saved:
                print(f"  note: {other} saved {rows[other].pages[1]} pages, pykexec {saved}")
        w = info["workload"]
        cells = " | ".join(f"{rows[n].best:26.2f} {rows[n].size / 1e6:4.0f} {max(rows[n].maxrss) / 2**20:5.1f}"
                           for n in TOOLS[:3])
        print(f"{size:>5s} {ram:9d} {saved:7d} {w['Buffers'] / 2**20:9.0f} {w['AnonPages'] / 2**20:8.0f} "
              f"{w['Slab'] / 2**20:8.0f} | {cells} | {rows[CAT].best:6.2f}")
        for n in TOOLS:
            points[n].append((saved, ram, rows[n].best))
    print("\nratios, pykexec / makedumpfile (time, size, peak RSS):")
    for size, _info, rows in results:
        ours = rows[PYKEXEC_DEFAULT]
        print(f"  {size:>3s}: " + "; ".join(
            f"vs {n.split(' -d')[0]}: {ours.best / rows[n].best:.2f}x time, {ours.size / rows[n].size:.2f}x size, "
            f"{max(ours.maxrss) / max(rows[n].maxrss):.2f}x peak" for n in (MDF_L, MDF_C)))
    if len(results) >= 3:
        print("\nleast squares, time = a + b * saved pages + c * RAM pages:")
        for n in TOOLS:
            a, b, c = fit(points[n])
            print(f"  {n:38s} a {a:6.2f} s, b {b:6.2f} µs per saved page, c {c:5.3f} µs per RAM page")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
