"""How a capture grows with the machine's memory: the crash-kernel benchmark
(benchmarks/crash_kernel_save.py) at several guest sizes, each after
benchmarks/first_kernel_workload.py has filled the guest's memory as a busy machine's
(40% page cache, 25% anonymous memory, 25,000 files per GiB of slab), always with
``crashkernel=256M`` and one CPU in the crash kernel.

For each size: ``cat /proc/vmcore``, ``makedumpfile -l`` and ``-c`` at ``-d 31`` and
pykexec's default save, best of ``--runs``; pages in the RAM bitmap and pages saved
(the same for every tool: they filter alike), each command's peak resident set
(wait4), and the ratios.  Then how each time grew from the smallest guest to the
largest, against how RAM and the saved pages grew: what the time follows.

    .venv/bin/python benchmarks/crash_kernel_scale.py [--sizes 1G,2G,4G,8G] [--runs 2] [--kernel 6.1]
"""

from __future__ import annotations

import argparse
import json

from crash_kernel_save import CAT, COMMANDS, HELP, PYKEXEC_DEFAULT, Row, memory_size, run_in_crash_kernel

MDF_L = "makedumpfile -l -d 31 (lzo)"
MDF_C = "makedumpfile -c -d 31 (zlib)"
TOOLS = (PYKEXEC_DEFAULT, MDF_L, MDF_C, CAT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=lambda v: [memory_size(s) for s in v.split(",")], default="1G,2G,4G,8G",
                    help="guest memory sizes, QEMU's spelling")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--kernel", default="6.1", choices=("6.1", "6.12"))
    ap.add_argument("--timeout", type=float, default=3600.0)
    args = ap.parse_args()
    commands = [c for c in COMMANDS if c[0] in (HELP, *TOOLS)]
    results: list[tuple[str, dict, dict[str, Row]]] = []
    for size in args.sizes:
        info, rows = run_in_crash_kernel(args.kernel, 1, args.runs, args.timeout, commands, memory=size,
                                         workload=True)
        print(f"{size}: workload {json.dumps(info['workload'])}", flush=True)
        results.append((size, info, rows))
    report(results, args.runs)
    return 0


def report(results: list[tuple[str, dict, dict[str, Row]]], runs: int) -> None:
    print(f"\ncrash kernel {results[0][1]['release']}, crashkernel=256M, 1 CPU; best of {runs}; under TCG")
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
    # Kept pages grow with memory too (struct pages, slab), so a fit cannot tell the two
    # apart; growth from the smallest to the largest guest and the cost per page can.
    if len(results) >= 2:
        (s0, r0, _), (s1, r1, _) = points[PYKEXEC_DEFAULT][0], points[PYKEXEC_DEFAULT][-1]
        print(f"\nfrom {results[0][0]} to {results[-1][0]}: RAM pages x{r1 / r0:.1f}, saved pages x{s1 / s0:.1f}; "
              "time, and microseconds per saved page at each size:")
        for n in TOOLS:
            (_, _, t0), (_, _, t1) = points[n][0], points[n][-1]
            per = ", ".join(f"{t / saved * 1e6:.0f}" for saved, _ram, t in points[n])
            print(f"  {n:38s} x{t1 / t0:.1f}; µs per saved page {per}; extra time per extra saved page "
                  f"{(t1 - t0) / (s1 - s0) * 1e6:.0f} µs, per extra RAM page {(t1 - t0) / (r1 - r0) * 1e6:.1f} µs")


if __name__ == "__main__":
    raise SystemExit(main())
