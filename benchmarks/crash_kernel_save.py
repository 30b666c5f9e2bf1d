"""Saving a dump where it really happens: in a crash kernel reading /proc/vmcore.

A QEMU guest (1 GiB, ``crashkernel=256M``, Debian's 6.1 or 6.12 cloud kernel) loads a
crash kernel with ``pykexec -p`` and panics through sysrq ``c``, as
tests/support/vmcore_fixture.py does to make its dumps.  The crash kernel (``maxcpus=1``, as
kdump runs it, ~256 MiB of RAM, rootfs in RAM) has Python, pykexec and the host's
makedumpfile with its libraries, and times, one after another (each ``--runs`` times,
rounds interleaved):

* ``cat /proc/vmcore > /dev/null``: simply reading the dump, every page of it (the savers
  read less: free, cache and user pages are found in the struct page array and skipped);
* ``makedumpfile -l -d 31`` (lzo) and ``-c -d 31`` (zlib, Debian kdump-tools' default);
* ``pykexec vmcore save`` with its defaults (zstd 1, -d 31), ``--level -3`` and
  ``--compress zlib``;
* ``pykexec vmcore save --help``: Python's start-up, to tell it apart from the saving;
* ``--memory SIZE --workload``: a larger first kernel whose memory
  benchmarks/first_kernel_workload.py fills first; the outputs then go to an ext4 disk
  (a large guest's dump does not fit in the crash kernel's RAM);
* ``--variant OPTIONS`` (repeatable): more save options to time, e.g. ``--level -1`` or
  ``PYKEXEC_VMCORE_READ=pread`` (pages read with pread instead of from the map).

Each row also gives the command's CPU time (user + system, its threads summed) and each
CPU's busy time from /proc/stat over the run: the proof of how many CPUs a save used.
``--crash-cpus 2`` gives the crash kernel two CPUs (``nr_cpus=2``, the guest ``-smp 2``)
and adds ``makedumpfile --num-threads 2`` rows.

Then it saves once through the map of /proc/vmcore and once through pread and checks that
the two files are the same bytes.  ``--profile`` adds ``python3 -X importtime`` and a
cProfile of the default save; ``--codecs`` times every codec and zstd level on the same
kept pages (benchmarks/crash_kernel_codecs.py); ``--runs 0`` skips the table.

benchmarks/vmcore_save.py compares the same tools on the host, reading a page-cache-warm
copy of a dump.  Here the baseline is /proc/vmcore itself: every read copies the old
kernel's memory through the crash kernel's ioremap path, with no page cache, on one CPU.
Outputs go to a tmpfs and each is deleted as soon as its size is taken (the crash kernel
has room for only one).

Under TCG (the only accelerator the test machines have) the absolute times are emulation
times, many times those of real hardware and skewed towards CPU-heavy work; the ratios
between rows of one run are the point.  The first run of each program also pays for
QEMU's code translation, so the table reports the best of the runs.

    .venv/bin/python benchmarks/crash_kernel_save.py [--kernel 6.1] [--smp 1] [--crash-cpus 1] [--memory 1G] [--workload] \
        [--runs 3] [--variant OPTIONS]... [--profile] [--codecs]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.testbed.assets import Assets, build_initramfs
from support.testbed.guest import run_guest_script
from support.testbed.host import copy_shared_libs

GUEST_MEMORY = "1G"  # run_guest_script's default too; the crash region is a quarter of it
RESULT = "PYKEXEC-CKBENCH-RESULT"
INFO = "PYKEXEC-CKBENCH-INFO"
FAIL = "PYKEXEC-CKBENCH-FAIL"
DONE = "PYKEXEC-CKBENCH-DONE"
PROFILE = "PYKEXEC-CKBENCH-PROFILE"
SAME = "PYKEXEC-CKBENCH-SAME"
OUT = "/tmp/out"
HELP = "pykexec vmcore save --help"
CAT = "cat /proc/vmcore > /dev/null"

# (row name, argv in the crash kernel).  makedumpfile is put at /usr/bin in the guest.
COMMANDS: list[tuple[str, list[str]]] = [
    (HELP, ["pykexec", "vmcore", "save", "--help"]),
    (CAT, ["sh", "-c", "cat /proc/vmcore > /dev/null"]),
    ("makedumpfile -l -d 31 (lzo)", ["makedumpfile", "-l", "-d", "31", "/proc/vmcore", OUT]),
    ("makedumpfile -c -d 31 (zlib)", ["makedumpfile", "-c", "-d", "31", "/proc/vmcore", OUT]),
    ("pykexec vmcore save (zstd 1, -d 31)", ["pykexec", "vmcore", "save", "/proc/vmcore", OUT]),
    ("pykexec vmcore save --level -3", ["pykexec", "vmcore", "save", "--level", "-3", "/proc/vmcore", OUT]),
    ("pykexec vmcore save --compress zlib", ["pykexec", "vmcore", "save", "--compress", "zlib",
                                             "/proc/vmcore", OUT]),
]
PYKEXEC_DEFAULT = "pykexec vmcore save (zstd 1, -d 31)"
# makedumpfile 1.7.2 --num-threads 2 aborts in some runs in the 2-CPU crash kernel
# ("libgcc_s.so.1 must be installed for pthread_exit to work", though the initramfs has it):
# a failed run of such a row is reported and left out instead of ending the benchmark.
FLAKY = "--num-threads"

# Runs in the crash kernel.  busybox has no usable `time`, so Python times each command;
# one JSON line per run keeps the console parseable even with kernel messages around it.
GUEST_TIMER = """\
import hashlib, json, os, platform, subprocess, sys, time

with open("/testbed/ckbench.json") as f:
    COMMANDS = json.load(f)
RUNS = int(sys.argv[1])
OUT = sys.argv[2]


def emit(tag, obj):
    print(tag, json.dumps(obj), flush=True)


def cpu_busy():  # seconds each CPU spent busy (user, nice, system, irq, softirq) since boot
    hz = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        return [sum(map(int, line.split()[1:4] + line.split()[6:8])) / hz
                for line in f if line.startswith("cpu") and line[3].isdigit()]


def kdump_pages(path):  # (pages in the dump's RAM bitmap, pages saved) of a kdump-compressed file
    from pykexec.vmcore.kdump import KdumpFile

    with open(path, "rb") as f:
        if f.read(8) != b"KDUMP   ":
            return None
    with KdumpFile(path) as k:
        return int.from_bytes(k.bitmap1, "little").bit_count(), k.num_saved


def meminfo(key):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


with open("/sys/devices/system/cpu/online") as f:
    online = f.read().strip()
emit("%(info)s", {"release": platform.release(), "cpus": len(os.sched_getaffinity(0)), "online": online,
                   "vmcore": os.stat("/proc/vmcore").st_size, "memtotal": meminfo("MemTotal"),
                   "memavailable": meminfo("MemAvailable")})
for run in range(1, RUNS + 1):
    for name, argv in COMMANDS:
        if os.path.exists(OUT):
            os.unlink(OUT)
        busy = cpu_busy()
        t = time.perf_counter()
        with open("/tmp/cmd.out", "w+b") as out, open("/tmp/cmd.err", "w+b") as err:
            child = subprocess.Popen(argv, stdout=out, stderr=err)
            # wait4: this command's own CPU time (its threads summed) and peak RSS.
            _pid, status, use = os.wait4(child.pid, 0)
            seconds = time.perf_counter() - t
            rc = os.waitstatus_to_exitcode(status)
            out.seek(0), err.seek(0)
            stdout, stderr = out.read(), err.read()
        cpu = use.ru_utime + use.ru_stime
        busy = [round(b - a, 2) for a, b in zip(busy, cpu_busy())]
        if rc != 0:
            emit("%(fail)s", {"name": name, "rc": rc,
                              "stdout": stdout.decode(errors="replace")[-2000:],
                              "stderr": stderr.decode(errors="replace")[-4000:]})
            if "--num-threads" in argv:  # see FLAKY: that run is left out, the others go on
                continue
            sys.exit(1)
        size = os.stat(OUT).st_size if os.path.exists(OUT) else 0
        pages = kdump_pages(OUT) if size else None
        if os.path.exists(OUT):
            os.unlink(OUT)  # RAM is short: only one output at a time
        emit("%(result)s", {"name": name, "run": run, "seconds": seconds, "bytes": size, "cpu": cpu,
                            "busy": busy, "maxrss": use.ru_maxrss * 1024, "pages": pages})
# The map of /proc/vmcore and pread(2) must save the same bytes (vmcore/elfcore.py).
if RUNS:
    outs = {}
    for how in ("map", "pread"):
        subprocess.run(["pykexec", "vmcore", "save", "--force", "/proc/vmcore", OUT],
                       env=dict(os.environ, PYKEXEC_VMCORE_READ=how), check=True)
        digest = hashlib.sha256()
        with open(OUT, "rb") as f:  # in pieces: the crash kernel has no room for a copy
            for piece in iter(lambda: f.read(1 << 20), b""):
                digest.update(piece)
        outs[how] = digest.hexdigest()
        os.unlink(OUT)
    emit("%(same)s", {"map_equals_pread": outs["map"] == outs["pread"], "sha256": outs})
if os.path.exists("/testbed/ckprofile.json"):  # --profile: where the default save's time goes
    with open("/testbed/ckprofile.json") as f:
        argv = json.load(f)
    print("%(profile)s begin", flush=True)
    subprocess.run(["python3", "-X", "importtime", "-c", "import pykexec.vmcore.cli"])
    if os.path.exists(OUT):
        os.unlink(OUT)
    res = subprocess.run(["python3", "-m", "cProfile", "-s", "tottime", *argv], stdout=subprocess.PIPE,
                         text=True)
    print("\\n".join(res.stdout.splitlines()[:45]), flush=True)
    print("%(profile)s end", flush=True)
if os.path.exists("/testbed/ckcodecs.py"):  # --codecs: each codec on the same kept pages
    subprocess.run(["python3", "/testbed/ckcodecs.py"])
""" % {"info": INFO, "fail": FAIL, "result": RESULT, "profile": PROFILE, "same": SAME}

CRASH_INIT = f"""echo "crash kernel up: $(uname -r) $(cat /proc/cmdline)"
# With --workload the outputs go to an ext4 disk (the second virtio disk) mounted on /tmp:
# a dump of a large guest does not fit in the crash kernel's RAM.
if [ -n "$OUT_DISK" ]; then
    for m in $MODULES; do insmod "$m"; done
    n=0
    while [ ! -b "$OUT_DISK" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
    mount -t ext4 "$OUT_DISK" /tmp || OUT_DISK=missing
fi
if [ "$OUT_DISK" = missing ]; then
    echo "{DONE} rc=97 (the output disk did not mount)"
else
    python3 /testbed/ckbench.py "$RUNS" {OUT}
    echo "{DONE} rc=$?"
fi
"""



def _bytes(size: str) -> int:
    """QEMU's memory size spelling (``1G``, ``512M``, a bare number of MiB) in bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    unit = units.get(size[-1:].upper())
    digits = size[:-1] if unit else size
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"not a memory size: {size!r} (e.g. 1G, 512M)")
    return int(digits) * (unit or 1 << 20)


def memory_size(size: str) -> str:
    """argparse type: ``size`` checked, kept in QEMU's spelling."""
    _bytes(size)
    return size


def first_kernel(crash_cpus: int, workload: list[str] | None = None) -> str:
    """The crashing guest's script: one CPU in the crash kernel as kdump runs it
    (``maxcpus=1``), or ``nr_cpus=N`` to give it N; ``workload``: the virtio block
    modules for benchmarks/first_kernel_workload.py, run first."""
    cpus = "maxcpus=1" if crash_cpus == 1 else f"nr_cpus={crash_cpus}"
    fill = f"python3 /testbed/workload.py {' '.join(workload)}\n" if workload is not None else ""
    return (fill + "pykexec -p /boot/vmlinuz --initrd /testbed/crash.cpio.gz "
            f"--append 'console=ttyS0 panic=-1 {cpus} reset_devices' && "
            "echo c > /proc/sysrq-trigger\n"
            "echo 'crash kernel load failed'\n")


@dataclass
class Row:
    times: list[float]
    size: int
    cpu: list[float]
    busy: list[list[float]]
    maxrss: list[int]
    #: (pages in the output's RAM bitmap, pages saved) for a kdump-compressed output
    pages: tuple[int, int] | None = None

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def best_run(self) -> int:
        return self.times.index(self.best)


def native_files(stage: Path) -> dict[str, Path]:
    """The host's makedumpfile and its shared libraries, staged under ``stage``, as guest
    files (pykexec's own extension libraries come with the test bed's pykexec layer)."""
    mdf = shutil.which("makedumpfile") or shutil.which("makedumpfile", path="/usr/sbin:/sbin")
    if not mdf:
        raise SystemExit("makedumpfile not found on the host (apt-get install makedumpfile)")
    missing = copy_shared_libs([Path(mdf)], stage, [])
    if missing:
        raise SystemExit(f"ldd could not resolve every library of {missing}")
    (stage / "usr" / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(mdf, stage / "usr" / "bin" / "makedumpfile")
    return {child.name: child for child in stage.iterdir()}


def run_in_crash_kernel(kernel: str, smp: int, runs: int, timeout: float, commands: list[tuple[str, list[str]]],
                        profile: bool = False, codecs: bool = False, crash_cpus: int = 1,
                        memory: str = GUEST_MEMORY, workload: bool = False) -> tuple[dict[str, Any], dict[str, Row]]:
    """Boot the first kernel (``memory``, after benchmarks/first_kernel_workload.py if
    ``workload``), panic it, time ``commands`` in the crash kernel: (info, rows by name).
    With ``workload``, ``info["workload"]`` is what the workload reported."""
    assets = Assets()
    with tempfile.TemporaryDirectory(prefix="ckbench-") as tmp:
        first_files: dict[str, Path | str | bytes] = {"testbed/crash.cpio.gz": Path(tmp) / "crash.cpio.gz"}
        extra_args: list[str] = []
        modules: list[str] | None = None
        mods: dict[str, bytes] = {}
        if workload:
            from support.vmcore_fixture import virtio_blk_module_files

            first_files["testbed/workload.py"] = Path(__file__).parent / "first_kernel_workload.py"
            mods = virtio_blk_module_files(assets, kernel)
            first_files.update({f"testbed/{name}": data for name, data in mods.items()})
            modules = [f"/testbed/{name}" for name in mods]
            disk = Path(tmp) / "cache.img"
            with open(disk, "wb") as f:
                f.truncate(_bytes(memory))  # sparse; the workload writes 40% of the guest's memory into it
            extra_args = ["-drive", f"file={disk},format=raw,if=virtio,cache=unsafe"]
        files: dict[str, Path | str | bytes] = dict(native_files(Path(tmp) / "stage"))
        files["testbed/ckbench.py"] = GUEST_TIMER.encode()
        files["testbed/ckbench.json"] = json.dumps(commands).encode()
        if codecs:
            files["testbed/ckcodecs.py"] = (Path(__file__).parent / "crash_kernel_codecs.py").read_bytes()
        if profile:
            files["testbed/ckprofile.json"] = json.dumps(["-m", "pykexec.vmcore.cli", "save", "/proc/vmcore",
                                                          OUT]).encode()
        settings = f"RUNS={runs}\n"
        if workload:
            # The first disk is the workload's page cache; the second the crash kernel's output.
            from support.testbed.ext4 import make_image

            (Path(tmp) / "empty").mkdir()
            make_image(Path(tmp) / "out.img", Path(tmp) / "empty", size_bytes=_bytes(memory) // 2 + (1 << 30),
                       label="ckbench-out")
            extra_args += ["-drive", f"file={Path(tmp) / 'out.img'},format=raw,if=virtio,cache=unsafe"]
            files.update(mods)
            settings += f"OUT_DISK=/dev/vdb\nMODULES='{' '.join('/' + name for name in mods)}'\n"
        build_initramfs(Path(tmp) / "crash.cpio.gz", settings + CRASH_INIT, files, with_python=True,
                        with_pykexec=True, assets=assets, kernels=(), compress=True)
        run = run_guest_script(
            first_kernel(crash_cpus, modules), assets, kernel=kernel, smp=max(smp, crash_cpus), memory=memory,
            append_extra="crashkernel=256M", extra_files=first_files, extra_args=extra_args,
            guest_kernels=(kernel,), with_kexec_tools=False, timeout=timeout, until=DONE)
    print(f"serial log: {run.log_path} ({run.duration:.0f} s)")
    for m in re.finditer(rf"{FAIL} (\{{.*\}})", run.log):
        fail = json.loads(m.group(1))
        print(f"FAILED in the crash kernel: {fail['name']} exited {fail['rc']}\n"
              f"--- stdout ---\n{fail['stdout']}\n--- stderr ---\n{fail['stderr']}", file=sys.stderr)
    done = re.search(rf"{DONE} rc=(\d+)", run.log)
    info = re.search(rf"{INFO} (\{{.*\}})", run.log)
    if not done or done.group(1) != "0" or not info:
        raise SystemExit(f"the crash-kernel benchmark did not complete\n{run.describe()}")
    facts = json.loads(info.group(1))
    if workload:
        filled = re.search(r"PYKEXEC-WORKLOAD (\{.*\})", run.log)
        if not filled:
            raise SystemExit(f"the first kernel's workload did not report\n{run.describe()}")
        facts["workload"] = json.loads(filled.group(1))
    rows: dict[str, Row] = {}
    for m in re.finditer(rf"{RESULT} (\{{.*\}})", run.log):
        r = json.loads(m.group(1))
        row = rows.setdefault(r["name"], Row([], r["bytes"], [], [], [], r["pages"] and tuple(r["pages"])))
        row.times.append(r["seconds"])
        row.cpu.append(r["cpu"])
        row.busy.append(r["busy"])
        row.maxrss.append(r["maxrss"])
    missing = {name for name, argv in commands if FLAKY not in argv} - set(rows)
    if runs and missing:
        raise SystemExit(f"results missing for {sorted(missing)}")
    same = re.search(rf"{SAME} (\{{.*\}})", run.log)
    if runs:
        if not same or not json.loads(same.group(1))["map_equals_pread"]:
            raise SystemExit(f"the saves through the map and through pread differ: {same and same.group(1)}")
        print("the save through the map of /proc/vmcore and through pread: same bytes")
    if codecs:
        print("codecs on the same kept pages (crash_kernel_codecs.py):")
        for m in re.finditer(r"PYKEXEC-CKCODEC (\{.*\})", run.log):
            print("  ", m.group(1))
    if profile:
        m = re.search(rf"{PROFILE} begin\n(.*?){PROFILE} end", run.log, re.S)
        print(m.group(1) if m else "no profile in the log")
    return facts, rows


def report(kernel: str, smp: int, info: dict[str, Any], rows: dict[str, Row]) -> None:
    size = info["vmcore"]
    print(f"\ncrash kernel {info['release']} (guest {kernel}, smp {smp}; crash kernel {info['cpus']} CPU (online {info.get('online')}), "
          f"MemTotal {info['memtotal'] / 2**20:.0f} MiB, MemAvailable {info['memavailable'] / 2**20:.0f} MiB); "
          f"/proc/vmcore {size / 1e6:.0f} MB; times under TCG")
    runs = len(next(iter(rows.values())).times)
    heads = " ".join(f"{f'run {i + 1} s':>8s}" for i in range(runs))
    # CPU s: the command's user+system time in the best run (its threads summed: above the
    # wall time, more than one CPU worked); busy: each CPU's busy seconds in that run.
    # peak MiB: the command's maximum resident set (wait4); saved: pages in the output.
    print(f"{'command':38s} {heads} {'best s':>8s} {'MB/s':>7s} {'out MB':>7s} {'saved':>8s} {'CPU s':>6s} "
          f"{'peak MiB':>8s}  busy s per CPU")
    for name, row in rows.items():
        times = " ".join(f"{t:8.2f}" for t in row.times)
        rate = f"{size / row.best / 1e6:7.1f}" if name != HELP else f"{'-':>7s}"
        out = f"{row.size / 1e6:7.1f}" if row.size else f"{'-':>7s}"
        saved = f"{row.pages[1]:8d}" if row.pages else f"{'-':>8s}"
        busy = " ".join(f"{b:.2f}" for b in row.busy[row.best_run])
        print(f"{name:38s} {times} {row.best:8.2f} {rate} {out} {saved} {row.cpu[row.best_run]:6.2f} "
              f"{max(row.maxrss) / 2**20:8.1f}  {busy}")
    cat, start = rows[CAT].best, rows[HELP].best
    # MB/s is the dump's size over the time, whatever part of it a command reads.
    print("ratios (best times; start-up ~ the --help row):")
    for name in (n for n in rows if n.startswith("pykexec") and n != HELP):
        t = rows[name].best
        print(f"  {name}: {t / cat:.2f}x cat; without start-up: {(t - start) / cat:.2f}x cat")
    ours = rows[PYKEXEC_DEFAULT]
    for name in (n for n in rows if n.startswith("makedumpfile")):
        other = rows[name]
        print(f"  {PYKEXEC_DEFAULT} vs {name}: {ours.best / other.best:.2f}x time, "
              f"{ours.size / other.size:.2f}x size")


def variant(options: str) -> list[str]:
    """The crash kernel's argv for ``--variant``: save options, after any NAME=VALUE
    environment settings (e.g. ``PYKEXEC_VMCORE_READ=pread --level -1``)."""
    words = options.split()
    env = [w for w in words if "=" in w and not w.startswith("-")]
    argv = ["pykexec", "vmcore", "save", *(w for w in words if w not in env), "/proc/vmcore", OUT]
    return ["env", *env, *argv] if env else argv


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", default="6.1", choices=("6.1", "6.12"))
    ap.add_argument("--smp", type=int, default=1, help="CPUs of the crashing guest (at least --crash-cpus)")
    ap.add_argument("--crash-cpus", type=int, default=1,
                    help="CPUs of the crash kernel: 1 is maxcpus=1, as kdump runs it; N is nr_cpus=N "
                         "(and makedumpfile --num-threads N rows)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each command in the crash kernel")
    ap.add_argument("--memory", type=memory_size, default=GUEST_MEMORY, help="the first kernel's RAM (QEMU -m), e.g. 8G")
    ap.add_argument("--workload", action="store_true",
                    help="fill the first kernel's memory first (benchmarks/first_kernel_workload.py)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds before QEMU is killed")
    ap.add_argument("--variant", action="append", default=[],
                    help="extra `pykexec vmcore save` options to time too (repeatable), e.g. '--compress lzo'")
    ap.add_argument("--profile", action="store_true",
                    help="also print `-X importtime` and a cProfile of the default save in the crash kernel")
    ap.add_argument("--codecs", action="store_true",
                    help="also time every codec on the same kept pages (benchmarks/crash_kernel_codecs.py)")
    args = ap.parse_args()
    if args.crash_cpus < 1:
        raise SystemExit("--crash-cpus must be at least 1")
    commands = COMMANDS + [(f"pykexec vmcore save {v}", variant(v)) for v in args.variant]
    if args.crash_cpus > 1:
        n = str(args.crash_cpus)
        commands += [(f"makedumpfile -c --num-threads {n} -d 31",
                      ["makedumpfile", "-c", "--num-threads", n, "-d", "31", "/proc/vmcore", OUT]),
                     (f"makedumpfile -l --num-threads {n} -d 31",
                      ["makedumpfile", "-l", "--num-threads", n, "-d", "31", "/proc/vmcore", OUT])]
    info, rows = run_in_crash_kernel(args.kernel, args.smp, args.runs, args.timeout, commands, args.profile,
                                     args.codecs, args.crash_cpus, args.memory, args.workload)
    if "workload" in info:
        print("first kernel's workload:", json.dumps(info["workload"]))
    if not rows:
        return 0
    report(args.kernel, max(args.smp, args.crash_cpus), info, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
