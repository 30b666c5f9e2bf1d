"""Kexec and kdump from a Xen 4.17 PV dom0 through the kexec_op hypercall, end to end.

QEMU boots Debian's Xen 4.17 (``crashkernel=256M@1G``) with the generic 6.1 kernel as
dom0, whose initramfs has Python and pykexec. In dom0:

* ``pykexec -l`` + ``pykexec -e``: Xen hands the machine to a bare Debian 6.1 kernel,
  which must report its exact command line;
* ``pykexec -p`` then a dom0 panic: Xen runs the crash kernel, in which
  ``pykexec vmcore info --json /proc/vmcore`` must report the ``xen_phys_start`` that
  get_range gave at load time, and Xen's and dom0's VMCOREINFO;
* ``pykexec -p --xen-crash-efi``: Xen 4.17 lacks that load type, and pykexec must say so
  in one line and leave nothing loaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support import xen
from support.testbed.assets import Assets, build_initramfs
from support.testbed.qemu import GuestRun, run_qemu

XEN_ARGS = "console=com1 dom0_mem=768M crashkernel=256M@1G loglvl=all"
DOM0_ARGS = "console=hvc0 earlyprintk=xen panic=-1"

CRASH_INIT = r"""
echo PYKEXEC-CRASH-KERNEL-UP cmdline=$(cat /proc/cmdline)
pykexec vmcore info --json /proc/vmcore > /tmp/info.json; echo VMCORE-INFO-RC=$?
python3 - <<'EOF'
import json
info = json.load(open("/tmp/info.json"))
xen = info.get("xen", {})
print("CRASH-XEN-PHYS-START=%s" % xen.get("xen_phys_start"))
print("CRASH-XEN-VERSION=%s" % xen.get("version"))
print("CRASH-XEN-VMCOREINFO=%d" % len(xen.get("vmcoreinfo", {})))
print("CRASH-DOM0-VMCOREINFO=%s" % info.get("osrelease"))
print("CRASH-CPUS=%d" % len(info["cpus"]))
EOF
"""

XEN_PHYS_START = ("python3 -c 'from pykexec.backends.xen.kexec_op import XenKexec; x = XenKexec.open(); "
                  "print(\"LOAD-XEN-PHYS-START=%#x\" % x.xen_phys_start())'")


def _boot_xen(assets: Assets, tmp: Path, body: str, log: Path, until: str, smp: int = 1) -> GuestRun:
    script, files = xen.dom0_python_init(body, assets)
    crash = build_initramfs(tmp / "crash.cpio.gz", CRASH_INIT, {}, with_python=True, with_pykexec=True,
                            assets=assets, kernels=(), compress=True)
    files["/boot/crash.cpio.gz"] = crash.read_bytes()
    initrd = build_initramfs(tmp / "dom0.cpio", script, files, with_python=True, with_pykexec=True,
                             assets=assets, kernels=("6.1",), compress=False)
    modules = f"{xen.dom0_kernel(assets)} {DOM0_ARGS},{initrd}"
    return run_qemu(xen.xen_elf(assets), modules, append=XEN_ARGS, memory=xen.XEN_MEMORY, cpu=xen.XEN_CPU,
                    smp=smp, timeout=300, until=until, log_path=log)


@pytest.fixture
def dom0_assets(pykexec_assets: Assets) -> Assets:
    xen.dom0_modules(pykexec_assets)
    return pykexec_assets


def test_kexec_from_dom0_into_linux(dom0_assets: Assets, tmp_path: Path, vm_log_dir: Path) -> None:
    cmdline = "console=ttyS0 panic=-1 pykexec.test=from-xen-dom0"
    body = (f"pykexec -l /boot/vmlinuz-6.1 --initrd /boot/second.cpio.gz --append '{cmdline}'; echo LOAD-RC=$?\n"
            "pykexec -S -l; echo STATUS=$?\n"
            "drain-console\n"
            "pykexec -e; echo EXEC-RC=$?\n")
    run = _boot_xen(dom0_assets, tmp_path, body, vm_log_dir / "console.log", until="PYKEXEC-SECOND-KERNEL-UP")
    assert "LOAD-RC=0" in run and "STATUS=1" in run, run.describe()
    release, got = run.second_kernel()
    assert got == cmdline, run.describe()
    assert release == dom0_assets.kernel("6.1").release


@pytest.mark.parametrize("smp", [1, 2])
def test_kdump_from_dom0_reports_xen_phys_start(dom0_assets: Assets, tmp_path: Path, vm_log_dir: Path,
                                                smp: int) -> None:
    body = ("pykexec -d -p /boot/vmlinuz-6.1 --initrd /boot/crash.cpio.gz "
            "--append 'console=ttyS0 panic=-1 maxcpus=1 reset_devices' 2>/tmp/plan; echo LOAD-RC=$?\n"
            "grep -E 'xen_kexec_op|elfcorehdr|note' /tmp/plan\n"
            "pykexec -S -p; echo CRASH-STATUS=$?\n"
            f"{XEN_PHYS_START}\n"
            "drain-console\n"
            "echo c > /proc/sysrq-trigger\n")
    run = _boot_xen(dom0_assets, tmp_path, body, vm_log_dir / "console.log", until="CRASH-CPUS=", smp=smp)
    assert "LOAD-RC=0" in run and "CRASH-STATUS=1" in run, run.describe()
    at_load = run.expect("LOAD-XEN-PHYS-START=").split("=", 1)[1].strip()
    run.expect("PYKEXEC-CRASH-KERNEL-UP")
    assert "VMCORE-INFO-RC=0" in run, run.describe()
    assert run.expect("CRASH-XEN-PHYS-START=").split("=", 1)[1].strip() == at_load
    assert "CRASH-XEN-VERSION=4.17" in run
    assert "CRASH-XEN-VMCOREINFO=0" not in run, run.describe()
    assert "CRASH-DOM0-VMCOREINFO=6.1" in run, run.describe()   # dom0's VMCOREINFO saved at load time
    assert f"CRASH-CPUS={smp}" in run, run.describe()           # Xen's per-pCPU notes


def test_crash_efi_refused_cleanly_by_xen_4_17(dom0_assets: Assets, tmp_path: Path, vm_log_dir: Path) -> None:
    body = ("pykexec -p --xen-crash-efi /boot/vmlinuz-6.1 --initrd /boot/crash.cpio.gz --append x=1"
            " 2>/tmp/err; echo EFI-RC=$?; echo ERR-LINES=$(wc -l < /tmp/err); cat /tmp/err\n"
            "pykexec -S -p; echo CRASH-STATUS=$?\n"
            "echo PYKEXEC-XEN-DONE\n")
    run = _boot_xen(dom0_assets, tmp_path, body, vm_log_dir / "console.log", until="PYKEXEC-XEN-DONE")
    assert "EFI-RC=1" in run and "ERR-LINES=1" in run, run.describe()
    line = run.expect("does not know the CRASH_EFI load type")
    assert "Xen 4.17" in line and "nothing was loaded" in line
    assert "CRASH-STATUS=0" in run, run.describe()
