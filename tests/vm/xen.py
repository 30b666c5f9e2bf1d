"""Xen for the QEMU test bed: Debian's hypervisor, a dom0 kernel and a dom0 initramfs.

Dom0 is Debian's generic 6.1 kernel (XEN_DOM0/XEN_PV built in). Its initramfs prints
``PYKEXEC-DOM0-UP`` with its command line and what it sees of the hypervisor, so a
test can tell that Xen booted and started dom0 with the arguments it was given.
"""

from __future__ import annotations

from pathlib import Path

from testbed import Assets, build_initramfs

XEN_PACKAGE = "xen-hypervisor-4.17-amd64"
DOM0_MARKER = "PYKEXEC-DOM0-UP"
# TESTBED.md: PV dom0 crashes early on -cpu max and Skylake models under TCG.
XEN_CPU = "Nehalem"
XEN_MEMORY = "2048M"

DOM0_INIT = f"""
echo {DOM0_MARKER} hypervisor=$(cat /sys/hypervisor/type 2>/dev/null || echo none) \\
    cmdline=$(cat /proc/cmdline)
"""


def xen_gz(assets: Assets) -> Path:
    """Debian's ``xen-4.17-amd64.gz``: a gzip'd ELF32 with Multiboot v1 and v2 headers."""
    root = assets.package(XEN_PACKAGE)
    images = sorted(root.glob("boot/xen-*.gz"))
    if not images:
        raise FileNotFoundError(f"{XEN_PACKAGE} holds no boot/xen-*.gz")
    return images[0]


def xen_elf(assets: Assets) -> Path:
    """The same hypervisor gunzipped (Debian's kexec-tools cannot read the .gz)."""
    import gzip

    src = xen_gz(assets)
    out = assets.built / (src.name.removesuffix(".gz") + ".elf")
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(gzip.decompress(src.read_bytes()))
        tmp.replace(out)
    return out


def dom0_kernel(assets: Assets) -> Path:
    return assets.kernel("6.1-generic").vmlinuz


def dom0_initrd(assets: Assets) -> Path:
    """A busybox initramfs (gzip'd, as it travels as a module) that reports and powers off."""
    out = assets.built / "dom0-initrd.cpio.gz"
    if not out.exists():
        build_initramfs(out, DOM0_INIT, {}, assets=assets, kernels=(), compress=True)
    return out


def guest_files(assets: Assets) -> dict[str, Path]:
    """What a Linux guest needs to kexec into Xen with dom0."""
    return {"/boot/xen.gz": xen_gz(assets), "/boot/xen": xen_elf(assets),
            "/boot/dom0-vmlinuz": dom0_kernel(assets), "/boot/dom0-initrd.gz": dom0_initrd(assets)}
