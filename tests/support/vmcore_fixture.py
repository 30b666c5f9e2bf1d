"""A real /proc/vmcore from a QEMU guest, made once and cached on the host.

:func:`real_vmcore` boots a 1 GiB guest with ``crashkernel=256M``, loads a
crash kernel with ``pykexec -p``, panics it with sysrq ``c``; the crash
kernel's own small initramfs loads the virtio block modules and ``dd``\\ s
``/proc/vmcore`` onto a raw disk image attached to QEMU.  The image is then
truncated to the size of the vmcore and renamed into
``<cache>/vmcores/vmcore-<release>-smp<N>.elf``.

The disk is attached with ``detect-zeroes=unmap`` so the zero pages of the
dump become holes in the host file: a ~850 MB dump takes far less disk.
At most :data:`MAX_CACHED` dumps are kept (oldest deleted first).

Command line (for humans)::

    python -m support.vmcore_fixture [--kernel 6.1] [--smp 1]
"""

from __future__ import annotations

import argparse
import lzma
import os
import re
import tempfile
from pathlib import Path

from support.testbed.assets import Assets, build_initramfs
from support.testbed.cache import TestbedError, flock
from support.testbed.guest import run_guest_script

#: Kept on disk at once; each is a sparse file of up to ~850 MB.
MAX_CACHED = 2
#: Modules the crash kernel needs for /dev/vda, in load order (dependencies first).
#: Those missing from a kernel's tree are assumed built in.
VIRTIO_BLK_MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
                      "virtio_pci", "virtio_blk")

SAVED_MARKER = "PYKEXEC-VMCORE-SAVED"
LOADED_MARKER = "PYKEXEC-CRASH-LOADED"

_CRASH_SCRIPT = f"""for m in {' '.join(VIRTIO_BLK_MODULES)}; do
    [ -e /crash/$m.ko ] && insmod /crash/$m.ko
done
n=0
while [ ! -b /dev/vda ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done
size=$(stat -c %s /proc/vmcore)
dd if=/proc/vmcore of=/dev/vda bs=1M conv=fsync 2>/dev/null && echo "{SAVED_MARKER} size=$size"
"""


def virtio_blk_module_files(assets: Assets, kernel: str) -> dict[str, bytes]:
    """``crash/<name>.ko`` -> module bytes, xz-decompressed (busybox insmod wants plain ELF)."""
    files: dict[str, bytes] = {}
    for name in VIRTIO_BLK_MODULES:
        hits = [p for p in assets.kernel(kernel).modules_dir.rglob(f"{name}.ko*")
                if p.name in (f"{name}.ko", f"{name}.ko.xz")]
        if not hits:
            continue
        data = hits[0].read_bytes()
        files[f"crash/{name}.ko"] = lzma.decompress(data) if hits[0].name.endswith(".xz") else data
    return files


def vmcore_dir(assets: Assets) -> Path:
    d = assets.cache / "vmcores"
    d.mkdir(parents=True, exist_ok=True)
    return d


def real_vmcore(assets: Assets | None = None, kernel: str = "6.1", *, smp: int = 1,
                timeout: float = 600.0) -> Path:
    """Path to a cached real vmcore of the ``kernel`` guest (made on first use).

    Raises :class:`TestbedError` with the console tail if the guest did not
    save a dump.  Safe to call from concurrent processes.
    """
    assets = assets or Assets()
    release = assets.kernel(kernel).release
    out = vmcore_dir(assets) / f"vmcore-{release}-smp{smp}.elf"
    if out.exists():
        return out
    with flock(vmcore_dir(assets) / ".lock"):
        if out.exists():
            return out
        _make(assets, kernel, smp, out, timeout)
        _evict(out)
    return out


def _make(assets: Assets, kernel: str, smp: int, out: Path, timeout: float) -> None:
    work = Path(tempfile.mkdtemp(prefix="mk-", dir=out.parent))
    try:
        crash_initrd = work / "crash.cpio.gz"
        files: dict[str, Path | str | bytes] = dict(virtio_blk_module_files(assets, kernel))
        build_initramfs(crash_initrd, _CRASH_SCRIPT, files, assets=assets, kernels=(), compress=True)
        disk = work / "disk.img"
        with open(disk, "wb") as f:
            f.truncate(1 << 30)  # sparse; larger than any vmcore of a 1 GiB guest
        load = ("pykexec -p /boot/vmlinuz --initrd /testbed/crash.cpio.gz "
                "--append 'console=ttyS0 panic=-1 maxcpus=1 reset_devices' && "
                f"echo {LOADED_MARKER} && drain-console && echo c > /proc/sysrq-trigger\n")
        run = run_guest_script(
            load, assets, kernel=kernel, smp=smp, append_extra="crashkernel=256M",
            extra_files={"testbed/crash.cpio.gz": crash_initrd}, guest_kernels=(kernel,),
            with_kexec_tools=False, timeout=timeout, until=SAVED_MARKER,
            extra_args=["-drive", f"file={disk},format=raw,if=virtio,detect-zeroes=unmap,discard=unmap"])
        m = re.search(rf"{SAVED_MARKER} size=(\d+)", run.log)
        if not m:
            raise TestbedError(f"crash kernel did not save /proc/vmcore\n{run.describe()}")
        with open(disk, "r+b") as f:
            f.truncate(int(m.group(1)))
        os.replace(disk, out)
    finally:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()


def _evict(keep: Path) -> None:
    """Delete the oldest cached dumps beyond :data:`MAX_CACHED`."""
    dumps = sorted((p for p in keep.parent.glob("vmcore-*.elf") if p != keep),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    for old in dumps[MAX_CACHED - 1:]:
        old.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="make (or find) a cached real vmcore")
    ap.add_argument("--kernel", default="6.1")
    ap.add_argument("--smp", type=int, default=1)
    args = ap.parse_args(argv)
    path = real_vmcore(kernel=args.kernel, smp=args.smp)
    st = path.stat()
    print(f"{path} size={st.st_size} on-disk={st.st_blocks * 512}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# --------------------------------------------------------------------------- #
# A real dump of a Xen machine (Xen 4.17 + a PV dom0), for the Xen readers
# --------------------------------------------------------------------------- #

#: Kept on disk at once: a Xen dump is a ~1.8 GB sparse file (the machine has 2 GiB).
MAX_CACHED_XEN = 1
XEN_MACHINE_ARGS = "console=com1 dom0_mem=768M crashkernel=256M@1G loglvl=all"
XEN_DOM0_ARGS = "console=hvc0 earlyprintk=xen panic=-1"
#: dom0 writes this to /dev/kmsg just before it panics: dom0's log in the dump must end near it.
DOM0_KMSG_MARKER = "PYKEXEC-DOM0-KMSG-MARKER"
#: Line prefixes dom0 prints at load time (the facts the tests compare the dump with).
DOM0_DMESG_PREFIX = "DOM0-DMESG: "
XENSYM_PREFIX = "XENSYM: "

_XEN_DOM0_BODY = f"""pykexec -p /boot/vmlinuz-6.1 --initrd /boot/crash.cpio.gz \\
    --append 'console=ttyS0 panic=-1 maxcpus=1 reset_devices'; echo LOAD-RC=$?
python3 -c 'from pykexec.backends.xen.kexec_op import XenKexec; x = XenKexec.open(); \\
print("LOAD-XEN-PHYS-START=%#x" % x.xen_phys_start())'
grep -E '[ #](conring|conring_size|conringp|conringc)$' /proc/xen/xensyms | sed 's/^/{XENSYM_PREFIX}/'
echo {DOM0_KMSG_MARKER} > /dev/kmsg
dmesg | sed 's/^/{DOM0_DMESG_PREFIX}/'
echo DOM0-DMESG-END
echo {LOADED_MARKER}
drain-console
echo c > /proc/sysrq-trigger
"""


def real_xen_vmcore(assets: Assets | None = None, *, smp: int = 1, timeout: float = 900.0) -> Path:
    """Path to a cached real dump of a whole Xen 4.17 machine (made on first use).

    QEMU boots Xen (2 GiB, ``crashkernel=256M@1G``) with Debian's generic 6.1 as a PV
    dom0; dom0 loads the 6.1 cloud crash kernel with ``pykexec -p`` (so the elfcorehdr
    holds dom0's VMCOREINFO), prints what the tests compare with (``xen_phys_start``
    from get_range, Xen's console-ring symbols from ``/proc/xen/xensyms``, its own
    ``dmesg`` after writing :data:`DOM0_KMSG_MARKER` to ``/dev/kmsg``), then panics.
    Xen runs the crash kernel, which ``dd``\\ s ``/proc/vmcore`` to a raw virtio disk.

    Next to ``xen-vmcore-<release>-smp<N>.elf`` the whole serial console (Xen's lines,
    dom0's, the crash kernel's) is kept as ``.log``: see :func:`xen_vmcore_log`.
    """
    assets = assets or Assets()
    release = assets.kernel("6.1-generic").release
    out = vmcore_dir(assets) / f"xen-vmcore-{release}-smp{smp}.elf"
    if out.exists() and out.with_suffix(".log").exists():
        return out
    with flock(vmcore_dir(assets) / ".lock"):
        if out.exists() and out.with_suffix(".log").exists():
            return out
        _make_xen(assets, smp, out, timeout)
        for old in out.parent.glob("xen-vmcore-*"):
            if old.stem != out.stem:
                old.unlink(missing_ok=True)
    return out


def xen_vmcore_log(dump: Path) -> str:
    """The serial console of the run that made ``dump`` (see :func:`real_xen_vmcore`)."""
    return dump.with_suffix(".log").read_text(errors="replace")


def _make_xen(assets: Assets, smp: int, out: Path, timeout: float) -> None:
    from support import xen
    from support.testbed.qemu import run_qemu

    xen.dom0_modules(assets)
    work = Path(tempfile.mkdtemp(prefix="mkxen-", dir=out.parent))
    try:
        crash = work / "crash.cpio.gz"
        build_initramfs(crash, _CRASH_SCRIPT, dict(virtio_blk_module_files(assets, "6.1")), assets=assets,
                        kernels=(), compress=True)
        script, files = xen.dom0_python_init(_XEN_DOM0_BODY, assets)
        files["/boot/crash.cpio.gz"] = crash.read_bytes()
        initrd = build_initramfs(work / "dom0.cpio", script, files, with_python=True, with_pykexec=True,
                                 assets=assets, kernels=("6.1",), compress=False)
        disk = work / "disk.img"
        with open(disk, "wb") as f:
            f.truncate(3 << 30)  # sparse; larger than the dump of a 2 GiB machine
        modules = f"{xen.dom0_kernel(assets)} {XEN_DOM0_ARGS},{initrd}"
        run = run_qemu(xen.xen_elf(assets), modules, append=XEN_MACHINE_ARGS, memory=xen.XEN_MEMORY,
                       cpu=xen.XEN_CPU, smp=smp, timeout=timeout, until=SAVED_MARKER,
                       extra_args=["-drive", f"file={disk},format=raw,if=virtio,"
                                             "detect-zeroes=unmap,discard=unmap"])
        m = re.search(rf"{SAVED_MARKER} size=(\d+)", run.log)
        if not m or "LOAD-RC=0" not in run.log:
            raise TestbedError(f"the Xen machine's crash kernel did not save /proc/vmcore\n{run.describe()}")
        with open(disk, "r+b") as f:
            f.truncate(int(m.group(1)))
        out.with_suffix(".log").write_text(run.log)
        os.replace(disk, out)
    finally:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()
