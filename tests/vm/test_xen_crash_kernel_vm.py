"""Xen as the crash kernel (issue 16, docs/xen-crash-kernel.md), end to end.

A Debian 6.1 guest booted with ``crashkernel=512M`` fills 16 MiB of its own memory with
a per-run pattern (each page's physical address from /proc/self/pagemap), records low
memory (0-636 KiB, through /proc/kcore), loads Xen 4.17 with ``pykexec -p`` and a PV dom0
(Debian's generic 6.1 with a Python initramfs) as modules, and panics with sysrq c.
From the guest's own serial output:

* purgatory verified the segments and copied low memory aside;
* Xen booted from the Multiboot map (not the BIOS E820) and its RAM is only low memory
  and the crash region;
* dom0 came up with ``elfcorehdr=`` and ``pykexec vmcore dmesg /proc/vmcore`` prints the
  crashed kernel's panic;
* every pattern page is intact in /proc/vmcore at its physical address (Xen and dom0
  wrote nothing they were not given), and low memory reads as it was before the panic
  (through the copy: Xen wrote its trampoline over the original).

The pattern's page list and the low-memory digests travel to dom0 in a small cpio the
first kernel appends to dom0's initramfs before loading it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from support import xen
from support.testbed.assets import Assets
from support.testbed.guest import run_guest_script
from support.testbed.qemu import GuestRun

MEMORY = "2G"
CRASHKERNEL = "crashkernel=512M"
# bootscrub=0: scrubbing the crash region's free RAM costs seconds under TCG and proves nothing here.
# dom0_mem: dom0 unpacks a 69 MB Python rootfs and Linux keeps 64 MiB for xen-swiotlb; with 256M its
# initramfs unpacking failed ("write error").
XEN_ARGS = "console=com1 com1=115200,8n1 dom0_mem=384M bootscrub=0 loglvl=all guest_loglvl=all"
DOM0_ARGS = "console=hvc0 earlyprintk=xen panic=-1"
PATTERN_PAGES = 4096  # 16 MiB
DONE = "XCK-DONE"
PANIC_MARKER = "XCK-PANICKING"
XEN_BANNER = "(XEN) Xen version 4.17"
DMESG_MARKER = "XCK-PANIC-LINE="

# First kernel: the pattern, low memory's digests, the cpio for dom0, the load, the panic.
FIRST = rb'''
import ctypes, gzip, hashlib, mmap, os, struct, subprocess, sys

N, PAGE = int(sys.argv[1]), 4096
token = os.urandom(8).hex()

def page_bytes(i):
    return (f"PYKEXEC-XCK {token} {i:08d} ".encode() * 200)[:PAGE]

# Pinned where it is: no huge-page collapse, and compaction may not move locked pages.
with open("/proc/sys/vm/compact_unevictable_allowed", "w") as f:
    f.write("0")
buf = mmap.mmap(-1, N * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
buf.madvise(mmap.MADV_NOHUGEPAGE)
for i in range(N):
    buf[i * PAGE:(i + 1) * PAGE] = page_bytes(i)
base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
assert ctypes.CDLL(None, use_errno=True).mlock(ctypes.c_void_p(base), ctypes.c_size_t(N * PAGE)) == 0

def physical_pages():
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(base // PAGE * 8)
        raw = f.read(N * 8)
    out = []
    for i in range(N):
        e = struct.unpack_from("<Q", raw, 8 * i)[0]
        assert e >> 63, f"page {i} not present"
        out.append(e & ((1 << 55) - 1))
    return out

pfns = physical_pages()
print(f"XCK-PATTERN token={token} pages={N} first_pfn={pfns[0]:#x} distinct={len(set(pfns))}", flush=True)

# Low memory through /proc/kcore (its PT_LOADs carry physical addresses).
LOW_START, LOW_END = 0x1000, 0x9F000
low = []
with open("/proc/kcore", "rb") as f:
    head = f.read(64)
    phoff, phnum = struct.unpack_from("<Q", head, 32)[0], struct.unpack_from("<H", head, 56)[0]
    f.seek(phoff)
    phdrs = [struct.unpack("<IIQQQQQQ", f.read(56)) for _ in range(phnum)]
    (ph,) = [p for p in phdrs if p[0] == 1 and p[4] <= LOW_START and LOW_END <= p[4] + p[6]]
    for addr in range(LOW_START, LOW_END, PAGE):
        f.seek(ph[2] + addr - ph[4])
        low.append(hashlib.sha256(f.read(PAGE)).hexdigest()[:16])
print(f"XCK-LOWMEM pages={len(low)} nonzero={sum(h != hashlib.sha256(bytes(PAGE)).hexdigest()[:16] for h in low)}",
      flush=True)

text = f"{token}\n" + " ".join(f"{p:x}" for p in pfns) + "\n" + " ".join(low) + "\n"

def newc(name, data, mode):
    n = name.encode() + b"\0"
    hdr = b"070701" + b"".join(b"%08X" % v for v in (1, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(n), 0))
    out = hdr + n
    out += bytes(-len(out) % 4) + data
    return out + bytes(-len(out) % 4)

extra = newc("xck", b"", 0o40755) + newc("xck/first.txt", text.encode(), 0o100644) + newc("TRAILER!!!", b"", 0)
with open("/boot/dom0-crash.cpio.gz", "rb") as src, open("/tmp/dom0.cpio", "wb") as dst:
    dst.write(src.read())
    dst.write(gzip.compress(extra))  # a second gzip member: Linux unpacks each in turn

load = ["pykexec", "-d", "-p", "/boot/xen.gz", "--command-line", sys.argv[2],
        "--module", f"/boot/dom0-vmlinuz {sys.argv[3]}", "--module", "/tmp/dom0.cpio"]
res = subprocess.run(load, capture_output=True, text=True)
print(res.stdout + res.stderr)
print(f"XCK-LOAD-RC={res.returncode}", flush=True)
if res.returncode:
    sys.exit(1)
os.sched_setaffinity(0, {int(sys.argv[4])})  # the CPU that panics, and so the one Xen starts on
moved = sum(a != b for a, b in zip(pfns, physical_pages()))
intact = sum(buf[i * PAGE:(i + 1) * PAGE] == page_bytes(i) for i in range(N))
print(f"XCK-BEFORE-PANIC moved={moved} intact={intact}", flush=True)
print("XCK-PANICKING", flush=True)
subprocess.run(["drain-console"])
with open("/proc/sysrq-trigger", "w") as f:
    f.write("c")
'''

# In dom0: the pattern and low memory from /proc/vmcore.
CHECK = rb'''
import hashlib, struct

with open("/xck/first.txt") as f:
    token, pfns, low = f.read().split("\n")[:3]
pfns = [int(p, 16) for p in pfns.split()]
low = low.split()
PAGE = 4096

with open("/proc/vmcore", "rb") as f:
    head = f.read(64)
    phoff, phnum = struct.unpack_from("<Q", head, 32)[0], struct.unpack_from("<H", head, 56)[0]
    f.seek(phoff)
    loads = [p for p in (struct.unpack("<IIQQQQQQ", f.read(56)) for _ in range(phnum))
             if p[0] == 1 and p[3] < 0xffffffff80000000]

    def read_phys(addr):
        for p in loads:
            if p[4] <= addr and addr + PAGE <= p[4] + p[5]:
                f.seek(p[2] + addr - p[4])
                return f.read(PAGE)
        return None

    intact = missing = 0
    bad = []
    for i, pfn in enumerate(pfns):
        data = read_phys(pfn * PAGE)
        if data is None:
            missing += 1
        elif data == (f"PYKEXEC-XCK {token} {i:08d} ".encode() * 200)[:PAGE]:
            intact += 1
        else:
            bad.append(pfn)
    bad.sort()
    runs = []  # the bad pages as pfn ranges
    for pfn in bad:
        if runs and runs[-1][1] + 1 == pfn:
            runs[-1][1] = pfn
        else:
            runs.append([pfn, pfn])
    print(f"XCK-PATTERN-CHECK pages={len(pfns)} intact={intact} missing={missing} bad={len(bad)} "
          f"runs={[f'{a:#x}-{b:#x}' for a, b in runs][:12]}", flush=True)

    same, diff = 0, []
    for j, h in enumerate(low):
        addr = 0x1000 + j * PAGE
        data = read_phys(addr)
        if data is not None and hashlib.sha256(data).hexdigest()[:16] == h:
            same += 1
        else:
            diff.append(hex(addr))
    print(f"XCK-LOWMEM-CHECK pages={len(low)} same={same} differ={diff[:16]}", flush=True)
'''

DOM0_BODY = f"""
echo XCK-VMCORE size=$(stat -c %s /proc/vmcore 2>&1)
pykexec vmcore dmesg /proc/vmcore > /tmp/dmesg.txt; echo XCK-DMESG-RC=$?
grep -m1 'sysrq triggered crash' /tmp/dmesg.txt | sed 's/^/{DMESG_MARKER}/'
python3 /root/check.py
echo {DONE}
"""


@pytest.fixture(scope="module")
def dom0_crash_initrd(pykexec_assets: Assets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("xck") / "dom0-crash.cpio.gz"
    script = xen.DOM0_INIT + DOM0_BODY
    return xen.build_initramfs(out, script, {"/root/check.py": CHECK}, with_python=True, with_pykexec=True,
                               assets=pykexec_assets, kernels=(), compress=True)


def _crash_into_xen(assets: Assets, initrd: Path, log: Path, xen_args: str, smp: int,
                    panic_cpu: int = 0) -> GuestRun:
    script = (f"python3 /root/first.py {PATTERN_PAGES} '{xen_args}' '{DOM0_ARGS}' {panic_cpu}\n"
              "echo XCK-FIRST-RC=$?\n")
    files = {"/boot/xen.gz": xen.xen_gz(assets), "/boot/dom0-vmlinuz": xen.dom0_kernel(assets),
             "/boot/dom0-crash.cpio.gz": initrd, "/root/first.py": FIRST}
    return run_guest_script(script, assets, memory=MEMORY, cpu=xen.XEN_CPU, smp=smp, append_extra=CRASHKERNEL,
                            extra_files=files, guest_kernels=(), with_kexec_tools=False, timeout=240,
                            until=DONE, log_path=log, watch=(PANIC_MARKER, XEN_BANNER, xen.DOM0_MARKER, DMESG_MARKER))


def _crash_region(run: GuestRun) -> tuple[int, int]:
    """The first kernel's crash region, from its own boot log."""
    m = re.search(r"Reserving (\d+)MB of memory at (\d+)MB for crashkernel", run.log)
    assert m, run.describe()
    start = int(m.group(2)) << 20
    return start, start + (int(m.group(1)) << 20)


def _xen_map(run: GuestRun) -> list[tuple[int, int, str]]:
    """Xen's memory map as it printed it after the panic: (start, end exclusive, type);
    Xen prints inclusive ends."""
    tail = run.log.split(PANIC_MARKER, 1)[1]
    block = tail.split("Multiboot-e820 RAM map:", 1)
    assert len(block) == 2, run.describe()
    out = []
    for m in re.finditer(r"\[([0-9a-f]{16}), ([0-9a-f]{16})\] \((\w+)\)", block[1][:4000]):
        out.append((int(m.group(1), 16), int(m.group(2), 16) + 1, m.group(3)))
        if not block[1][m.end():].lstrip(" \n\r").startswith("(XEN)  ["):
            break
    return out


# The panic runs on CPU 0, the platform's BSP: see test_xen_4_17_entered_on_an_ap_resets_the_machine.
@pytest.mark.parametrize("smp", [1, 2], ids=["nosmp", "2cpus"])
def test_xen_crash_kernel_reads_the_crashed_linux(pykexec_assets: Assets, dom0_crash_initrd: Path,
                                                  vm_log_dir: Path, smp: int) -> None:
    xen_args = XEN_ARGS + (" nosmp" if smp == 1 else "")
    run = _crash_into_xen(pykexec_assets, dom0_crash_initrd, vm_log_dir / "console.log", xen_args, smp)
    assert "XCK-LOAD-RC=0" in run, run.describe()
    assert ("has no nosmp" in run) == (smp > 1), run.describe()  # the planner's warning
    start, end = _crash_region(run)
    pattern = run.expect("XCK-PATTERN token=")
    assert f"pages={PATTERN_PAGES} " in pattern and f"distinct={PATTERN_PAGES}" in pattern, pattern

    after = run.log.split(PANIC_MARKER, 1)[1]
    assert "sysrq: Trigger a crash" in after, run.describe()
    assert "pykexec purgatory: verified" in after and "pykexec purgatory: copied backup" in after, run.describe()
    assert re.search(r"Xen version 4\.17", after), run.describe()
    assert "no-real-mode" in after and "Xen-e820 RAM map" not in after, run.describe()

    # Xen's RAM is what purgatory copied aside (0 through dom0's span) and the crash region only.
    m = re.search(r"inside the backup 0x0-(0x[0-9a-f]+) \(copied to (0x[0-9a-f]+)\)", run.log)
    assert m, run.describe()
    saved, copy = int(m.group(1), 16) + 1, int(m.group(2), 16)
    assert start <= copy and copy + saved <= end and saved >= 0x1000000, (hex(saved), hex(copy))
    ram = [(s, e) for s, e, t in _xen_map(run) if t == "usable"]
    assert ram[:2] == [(0, 0x9FC00), (0x100000, saved)], ram
    assert ram[2:] and all(start <= s and e <= end for s, e in ram[2:]), (ram, hex(start), hex(end))

    dom0 = run.expect(xen.DOM0_MARKER)
    m = re.search(r"elfcorehdr=(0x[0-9a-f]+)", dom0)
    assert m and start <= int(m.group(1), 16) < end, dom0
    assert "XCK-DMESG-RC=0" in run, run.describe()
    assert "Kernel panic - not syncing: sysrq triggered crash" in run.expect(DMESG_MARKER), run.describe()

    check = run.expect("XCK-PATTERN-CHECK")
    assert f"XCK-BEFORE-PANIC moved=0 intact={PATTERN_PAGES}" in run, run.describe()
    assert f"pages={PATTERN_PAGES} intact={PATTERN_PAGES} missing=0 bad=0 " in check, check
    low = run.expect("XCK-LOWMEM-CHECK")
    pages = (0x9F000 - 0x1000) // 4096
    assert f"pages={pages} same={pages} differ=[]" in low, low

    t = run.marker_times
    seconds = t[DMESG_MARKER] - t[PANIC_MARKER]
    steps = (f"panic to Xen's banner {t[XEN_BANNER] - t[PANIC_MARKER]:.1f} s, to dom0's init "
             f"{t[xen.DOM0_MARKER] - t[XEN_BANNER]:.1f} s, "
             f"to the dump's panic line {t[DMESG_MARKER] - t[xen.DOM0_MARKER]:.1f} s")
    print(f"\nXen crash kernel ({smp} CPU): crash region {start:#x}-{end:#x} ({(end - start) >> 20} MiB), "
          f"backup 0-{saved:#x} copied to {copy:#x}, "
          f"Xen RAM {[(hex(s), hex(e)) for s, e in ram]}, panic to dom0's dmesg of the dump {seconds:.1f} s ({steps}), "
          f"run {run.duration:.1f} s")


def test_xen_4_17_entered_on_an_ap_resets_the_machine(pykexec_assets: Assets, dom0_crash_initrd: Path,
                                                       vm_log_dir: Path) -> None:
    """What Xen 4.17 does when the panic (and so the crash Xen) runs on an AP: it takes
    the CPU it runs on for its BSP and wakes every other CPU in the MADT with
    INIT-SIPI-SIPI (xen/arch/x86/setup.c ``__start_xen`` -> ``cpu_up`` ->
    smpboot.c ``do_boot_cpu`` -> ``wakeup_secondary_cpu``), the platform's BSP too; INIT
    sends a processor whose IA32_APIC_BASE.BSP flag is set to the reset vector, the
    firmware, and QEMU's -no-reboot ends the run. (Linux crash kernels are told
    ``disable_cpu_apicid=``; Xen 4.17 has no such option: boot it with ``nosmp``.)"""
    run = _crash_into_xen(pykexec_assets, dom0_crash_initrd, vm_log_dir / "console.log", XEN_ARGS, 2,
                          panic_cpu=1)
    assert "XCK-LOAD-RC=0" in run and not run.timed_out, run.describe()
    assert re.search(r"CPU: 1 PID: \d+ Comm: python3", run.log.split(PANIC_MARKER, 1)[1]), run.describe()
    after = run.log.split(XEN_BANNER, 1)
    assert len(after) == 2, run.describe()
    # Xen got as far as patching its alternatives (the last step before waking the APs) ...
    assert "(XEN) alt table" in after[1], run.describe()
    # ... and then the machine reset: no CPU came up, no dom0, no dump read.
    assert "Brought up" not in after[1] and xen.DOM0_MARKER not in after[1], run.describe()
    print(f"\nXen crash kernel entered on CPU 1 of 2: machine reset {run.duration:.1f} s into the run, after "
          f"'{after[1].strip().splitlines()[-1].strip()}'")
