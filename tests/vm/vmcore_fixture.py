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

    python tests/vm/vmcore_fixture.py [--kernel 6.1] [--smp 1]
"""

from __future__ import annotations

import argparse
import lzma
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from testbed import (  # noqa: E402
    Assets,
    TestbedError,
    _flock,
    build_initramfs,
    run_guest_script,
)

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


def _module_files(assets: Assets, kernel: str) -> dict[str, bytes]:
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
    with _flock(vmcore_dir(assets) / ".lock"):
        if out.exists():
            return out
        _make(assets, kernel, smp, out, timeout)
        _evict(out)
    return out


def _make(assets: Assets, kernel: str, smp: int, out: Path, timeout: float) -> None:
    work = Path(tempfile.mkdtemp(prefix="mk-", dir=out.parent))
    try:
        crash_initrd = work / "crash.cpio.gz"
        files: dict[str, Path | str | bytes] = dict(_module_files(assets, kernel))
        build_initramfs(crash_initrd, _CRASH_SCRIPT, files, assets=assets, kernels=(), compress=True)
        disk = work / "disk.img"
        with open(disk, "wb") as f:
            f.truncate(1 << 30)  # sparse; larger than any vmcore of a 1 GiB guest
        load = ("pykexec -p /boot/vmlinuz --initrd /testbed/crash.cpio.gz "
                "--append 'console=ttyS0 panic=-1 maxcpus=1 reset_devices' && "
                f"echo {LOADED_MARKER} && echo c > /proc/sysrq-trigger\n")
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
