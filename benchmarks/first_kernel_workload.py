"""Runs in the first kernel before it panics (crash_kernel_save.py --workload): leaves
memory as a busy machine's, in proportion to its size, so that a dump's kept pages
(kernel, slab, page tables, struct pages) grow with memory while most pages are ones
-d 31 drops (page cache, user data, free):

* page cache: 40% of MemAvailable written through the block device /dev/vda (buffered
  writes, fsync: clean cache pages with buffer heads, which -d 4 drops);
* anonymous memory: 25% of MemAvailable held by a child process (user data, -d 8), which
  also holds /dev/vda open (its last close would drop the device's cache);
* slab: ``FILES_PER_GIB`` empty files per GiB of RAM in /tmp (an inode and a dentry each).

Prints one ``PYKEXEC-WORKLOAD {json}`` line: what it did, how long, and /proc/meminfo's
view after it.  The child holding the anonymous memory lives on until the panic.
"""

import json
import os
import signal
import subprocess
import sys
import time

FILES_PER_GIB = 25_000
MIB = 1 << 20


def meminfo() -> dict[str, int]:
    with open("/proc/meminfo") as f:
        return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}


def main() -> None:
    modules = sys.argv[1:]  # virtio block modules to insmod, dependencies first
    for path in modules:
        subprocess.run(["insmod", path], check=False)
    for _ in range(100):
        if os.path.exists("/dev/vda"):
            break
        time.sleep(0.1)
    before = meminfo()
    avail, total = before["MemAvailable"], before["MemTotal"]
    block = os.urandom(MIB)
    done: dict[str, float] = {}

    t = time.perf_counter()
    cache = int(avail * 0.40) // MIB
    fd = os.open("/dev/vda", os.O_WRONLY)
    for _ in range(cache):
        os.write(fd, block)
    os.fsync(fd)
    done["cache_s"] = time.perf_counter() - t

    t = time.perf_counter()
    anon = int(avail * 0.25) // MIB
    ready_r, ready_w = os.pipe()
    if os.fork() == 0:
        held = bytearray(block) * anon  # noqa: F841 (held until the panic)
        os.write(ready_w, b"x")
        while True:
            signal.pause()
    os.read(ready_r, 1)
    # The child keeps /dev/vda open: the last close of a block device drops its page cache.
    os.close(fd)
    done["anon_s"] = time.perf_counter() - t

    t = time.perf_counter()
    files = FILES_PER_GIB * total // (1 << 30)
    os.makedirs("/tmp/slab", exist_ok=True)
    for i in range(files):
        os.close(os.open(f"/tmp/slab/{i}", os.O_CREAT | os.O_WRONLY, 0o600))
    done["slab_s"] = time.perf_counter() - t

    after = meminfo()
    keys = ("MemTotal", "MemFree", "Buffers", "Cached", "AnonPages", "Slab", "PageTables")
    print("PYKEXEC-WORKLOAD", json.dumps({"cache_mib": cache, "anon_mib": anon, "files": files,
                                          **{k: round(v, 1) for k, v in done.items()},
                                          **{k: after[k] for k in keys}}), flush=True)


if __name__ == "__main__":
    main()
