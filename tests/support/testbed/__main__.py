"""The test bed's command line (for humans, and scripts/setup.sh)::

    python -m support.testbed fetch [--generic]
    python -m support.testbed run 'kexec -v; python3 -c "print(1)"'
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from support.testbed.assets import Assets
from support.testbed.guest import run_guest_script
from support.testbed.packages import DEFAULT_GUEST_KERNELS, KERNEL_META


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="pykexec QEMU test bed")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download and prebuild all assets")
    f.add_argument("--generic", action="store_true", help="also the generic 6.1 kernel (for Xen)")
    r = sub.add_parser("run", help="boot a guest that runs a shell script")
    r.add_argument("script")
    r.add_argument("--kernel", default="6.1", choices=sorted(KERNEL_META))
    r.add_argument("--append-extra", default="")
    r.add_argument("--timeout", type=float, default=120)
    r.add_argument("--trace", action="store_true")
    args = ap.parse_args(argv)
    assets = Assets()
    t0 = time.monotonic()
    if args.cmd == "fetch":
        assets.fetch_all(generic=args.generic)
        t1 = time.monotonic()
        assets.python_segment()
        assets.pykexec_segment()
        assets.kexec_tools_segment()
        assets.kernels_segment(DEFAULT_GUEST_KERNELS, "6.1")
        t2 = time.monotonic()
        for fl in (*DEFAULT_GUEST_KERNELS, *(["6.1-generic"] if args.generic else [])):
            k = assets.kernel(fl)
            print(f"kernel {fl}: {k.package} -> {k.vmlinuz}")
        print(f"cache: {assets.cache}\nfetch {t1 - t0:.1f}s, build {t2 - t1:.1f}s")
        return 0
    run = run_guest_script(args.script, assets, kernel=args.kernel, append_extra=args.append_extra,
                           timeout=args.timeout, trace=args.trace)
    sys.stdout.write(run.log)
    print(f"\n[testbed] rc={run.returncode} script_rc={run.script_rc} timed_out={run.timed_out} "
          f"{run.duration:.1f}s log={run.log_path}")
    return 0 if run.script_rc == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
