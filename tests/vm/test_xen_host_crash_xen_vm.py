"""Xen as the crash kernel of a Xen host (issue 16, docs/xen-crash-kernel.md section 6).

QEMU boots Debian's Xen 4.17 (2 GiB, ``crashkernel=512M@1G`` on Xen's line) with the
generic 6.1 kernel as a PV dom0 whose initramfs has Python and pykexec. Dom0 writes a
per-run token to its kernel log, loads Xen + a PV dom0 as the crash kernel with
``pykexec -p`` (through Xen's kexec_op, KEXEC_TYPE_CRASH), and panics with sysrq c;
Xen kexecs into the crash image. Twice: a one-CPU host, and a two-CPU host whose dom0
panics on CPU 1, so that the crash Xen starts on an AP (``nosmp mce=0``: with ``nosmp``
alone Xen 4.17 still wakes the boot CPU to park it and the machine resets; section 6 of
the doc). From the serial console:

* the load went through Xen's kexec_op and purgatory copied low memory aside;
* a second Xen 4.17 booted from the Multiboot map (``no-real-mode``, no BIOS E820) with
  RAM only in the backed-up low memory and the crash area;
* its dom0 came up with ``elfcorehdr=`` and ``pykexec vmcore dmesg /proc/vmcore`` prints
  the crashed dom0's panic and its token; ``pykexec vmcore info`` finds the crashed Xen's
  ``xen_phys_start`` as get_range gave it at load time.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from support import xen
from support.testbed.assets import Assets, build_initramfs
from support.testbed.qemu import run_qemu

# The host: Xen with a crash area; dom0 needs room for a ~100 MB initramfs holding the crash one.
HOST_XEN_ARGS = ("console=com1 com1=115200,8n1 dom0_mem=768M crashkernel=512M@1G dom0_vcpus_pin loglvl=all "
                 "guest_loglvl=all")  # dom0_vcpus_pin: dom0's vCPU 1 panics on pCPU 1
DOM0_ARGS = "console=hvc0 earlyprintk=xen panic=-1"
# The crash Xen (docs/xen-crash-kernel.md section 4): nosmp, dom0_mem below the crash area's size;
# mce=0 because Xen 4.17 on Intel parks (so first wakes) every CPU even with nosmp (section 6).
CRASH_XEN_ARGS = "console=com1 com1=115200,8n1 dom0_mem=384M bootscrub=0 nosmp mce=0 loglvl=all guest_loglvl=all"
AREA = (0x40000000, 0x60000000)
PANIC_MARKER = "XHX-PANICKING"
XEN_BANNER = "(XEN) Xen version 4.17"
COPIED = "pykexec purgatory: copied backup"
CRASH_XEN_MAP = "Multiboot-e820 RAM map"  # the host Xen, booted by QEMU, prints "Xen-e820"
PANIC_LINE = "XHX-PANIC-LINE="
DONE = "XHX-DONE"

HOST_BODY = f"""
TOKEN=XHX-KMSG-$(head -c8 /dev/urandom | od -An -tx1 | tr -d ' \\n')
echo XHX-TOKEN=$TOKEN
echo $TOKEN > /dev/kmsg
pykexec -d -p /boot/xen.gz --command-line='{CRASH_XEN_ARGS}' \\
    --module='/boot/dom0-vmlinuz {DOM0_ARGS}' --module=/boot/dom0-crash.cpio.gz > /tmp/plan 2>&1
echo XHX-LOAD-RC=$?
sed 's/^/XHX-PLAN: /' /tmp/plan
pykexec -S -p; echo XHX-CRASH-STATUS=$?
python3 -c 'from pykexec.backends.xen.kexec_op import XenKexec; x = XenKexec.open(); \\
print("XHX-LOAD-XEN-PHYS-START=%#x" % x.xen_phys_start())'
echo {PANIC_MARKER}
drain-console
taskset -c PANIC_CPU sh -c 'echo c > /proc/sysrq-trigger'
"""

CRASH_DOM0_BODY = f"""
echo XHX-VMCORE size=$(stat -c %s /proc/vmcore 2>&1)
pykexec vmcore dmesg /proc/vmcore > /tmp/dmesg.txt; echo XHX-DMESG-RC=$?
grep -m1 'sysrq triggered crash' /tmp/dmesg.txt | sed 's/^/{PANIC_LINE}/'
grep -m1 -o 'XHX-KMSG-[0-9a-f]*' /tmp/dmesg.txt | sed 's/^/XHX-DUMP-TOKEN=/'
pykexec vmcore info --json /proc/vmcore > /tmp/info.json; echo XHX-INFO-RC=$?
python3 -c 'import json; x = json.load(open("/tmp/info.json")).get("xen") or {{}}; \\
print("XHX-DUMP-XEN-PHYS-START=%s" % x.get("xen_phys_start"))'
echo {DONE}
"""


@pytest.mark.parametrize("smp", [1, 2], ids=["1cpu", "2cpus-crash-on-cpu1"])
def test_a_xen_hosts_crash_kernel_is_xen(pykexec_assets: Assets, tmp_path: Path, vm_log_dir: Path,
                                         smp: int) -> None:
    panic_cpu = smp - 1
    xen.dom0_modules(pykexec_assets)
    crash_initrd = build_initramfs(tmp_path / "dom0-crash.cpio.gz", xen.DOM0_INIT + CRASH_DOM0_BODY, {},
                                   with_python=True, with_pykexec=True, assets=pykexec_assets, kernels=(),
                                   compress=True)
    script, files = xen.dom0_python_init(HOST_BODY.replace("PANIC_CPU", str(panic_cpu)), pykexec_assets)
    files["/boot/xen.gz"] = xen.xen_gz(pykexec_assets).read_bytes()
    files["/boot/dom0-vmlinuz"] = xen.dom0_kernel(pykexec_assets).read_bytes()
    files["/boot/dom0-crash.cpio.gz"] = crash_initrd.read_bytes()
    initrd = build_initramfs(tmp_path / "dom0.cpio", script, files, with_python=True, with_pykexec=True,
                             assets=pykexec_assets, kernels=(), compress=False)
    modules = f"{xen.dom0_kernel(pykexec_assets)} {DOM0_ARGS},{initrd}"
    run = run_qemu(xen.xen_elf(pykexec_assets), modules, append=HOST_XEN_ARGS, memory=xen.XEN_MEMORY,
                   cpu=xen.XEN_CPU, smp=smp, timeout=180, until=DONE, log_path=vm_log_dir / "console.log",
                   watch=(PANIC_MARKER, COPIED, CRASH_XEN_MAP, PANIC_LINE))

    assert "XHX-LOAD-RC=0" in run and "XHX-CRASH-STATUS=1" in run, run.describe()
    plan = "\n".join(line for line in run.log.splitlines() if "XHX-PLAN: " in line)
    assert "xen_kexec_op" in plan, plan
    m = re.search(r"inside the backup 0x0-(0x[0-9a-f]+) \(copied to (0x[0-9a-f]+)\)", plan)
    assert m, plan
    saved, copy = int(m.group(1), 16) + 1, int(m.group(2), 16)
    assert AREA[0] <= copy and copy + saved <= AREA[1], (hex(saved), hex(copy))
    token = run.expect("XHX-TOKEN=").split("=", 1)[1].strip()
    at_load = run.expect("XHX-LOAD-XEN-PHYS-START=").split("=", 1)[1].strip()

    after = run.log.split(PANIC_MARKER, 1)[1]
    assert f"(XEN) Hardware Dom0 crashed: Executing kexec image on cpu{panic_cpu}" in after, run.describe()
    assert "pykexec purgatory: verified" in after and COPIED in after, run.describe()
    crash_xen = after.split(XEN_BANNER, 1)
    assert len(crash_xen) == 2, run.describe()
    assert "no-real-mode" in crash_xen[1] and "Xen-e820 RAM map" not in crash_xen[1], run.describe()
    assert "(XEN) Brought up 1 CPUs" in crash_xen[1], run.describe()
    block = crash_xen[1].split(CRASH_XEN_MAP + ":", 1)
    assert len(block) == 2, run.describe()
    ram = []
    for m2 in re.finditer(r"\[([0-9a-f]{16}), ([0-9a-f]{16})\] \((\w+)\)", block[1][:4000]):
        if m2.group(3) == "usable":
            ram.append((int(m2.group(1), 16), int(m2.group(2), 16) + 1))
        if not block[1][m2.end():].lstrip(" \n\r").startswith("(XEN)  ["):
            break
    assert ram[:2] == [(0, 0x9FC00), (0x100000, saved)], ram
    assert ram[2:] and all(AREA[0] <= s and e <= AREA[1] for s, e in ram[2:]), ram

    # The crash Xen's dom0 (the host's printed the same marker before the panic).
    dom0 = run.log.split(PANIC_MARKER, 1)[1].split(xen.DOM0_MARKER, 1)[1].splitlines()[0]
    m = re.search(r"elfcorehdr=(0x[0-9a-f]+)", dom0)
    assert m and AREA[0] <= int(m.group(1), 16) < AREA[1], dom0
    vmcore = int(run.expect("XHX-VMCORE size=").split("=", 1)[1])
    assert vmcore > 1 << 30, run.describe()  # the crashed machine's 1.5 GiB outside the crash area
    assert "XHX-DMESG-RC=0" in run, run.describe()
    assert "Kernel panic - not syncing: sysrq triggered crash" in run.expect(PANIC_LINE), run.describe()
    assert run.expect("XHX-DUMP-TOKEN=").split("=", 1)[1].strip() == token, run.describe()
    assert "XHX-INFO-RC=0" in run, run.describe()
    assert int(run.expect("XHX-DUMP-XEN-PHYS-START=").split("=", 1)[1].strip(), 0) == int(at_load, 16)

    t = run.marker_times
    print(f"\nXen host ({smp} CPU, crash on CPU {panic_cpu}) -> crash Xen: /proc/vmcore {vmcore} bytes, backup 0-{saved:#x} copied to {copy:#x}, crash Xen RAM "
          f"{[(hex(s), hex(e)) for s, e in ram]}, panic to purgatory's copy done {t[COPIED] - t[PANIC_MARKER]:.1f} s, "
          f"to the crash Xen's map {t[CRASH_XEN_MAP] - t[PANIC_MARKER]:.1f} s, "
          f"to the dump's panic line {t[PANIC_LINE] - t[PANIC_MARKER]:.1f} s, "
          f"run {run.duration:.1f} s")
