"""A pretend machine under a temporary root, as the crash initramfs builder reads one
(:class:`pykexec.kdump.paths.Paths`): a virtio disk in /sys (the disk's driver
virtio_blk and its PCI function's virtio_pci, both modules), the file system
holding /var/crash in /proc/self/mountinfo, and /boot/config-<release>."""

from __future__ import annotations

from pathlib import Path

from pykexec.kdump.paths import Paths

PCI = "devices/pci0000:00/0000:00:04.0"


def make_system(root: Path, release: str, *, fstype: str = "ext4", disk: str = "vda", partition: str = "",
                major_minor: str = "254:0", stacked: bool = False, rd_zstd: bool = True) -> Paths:
    """The machine; /dev/<disk><partition> is a plain file (or, after, a link to an image)."""
    disk_dir = root / "sys" / PCI / "virtio2" / "block" / disk
    node_dir = disk_dir / f"{disk}{partition}" if partition else disk_dir
    node_dir.mkdir(parents=True)
    if partition:
        (node_dir / "partition").write_text("1\n")
    if stacked:
        (node_dir / "dm").mkdir()
    (disk_dir / "device").symlink_to("../../../virtio2")
    for device, driver, module, bus in ((f"{PCI}/virtio2", "virtio_blk", "virtio_blk", "virtio"),
                                        (PCI, "virtio-pci", "virtio_pci", "pci")):
        (root / "sys" / "bus" / bus / "drivers" / driver).mkdir(parents=True, exist_ok=True)
        (root / "sys" / "module" / module).mkdir(parents=True, exist_ok=True)
        (root / "sys" / "bus" / bus / "drivers" / driver / "module").symlink_to(f"../../../../module/{module}")
        (root / "sys" / device / "driver").symlink_to("../" * (device.count("/") + 1) + f"bus/{bus}/drivers/{driver}")
    (root / "sys" / "dev" / "block").mkdir(parents=True)
    node = f"{disk}{partition}"
    (root / "sys" / "dev" / "block" / major_minor).symlink_to(
        f"../../{PCI}/virtio2/block/{disk}" + (f"/{node}" if partition else ""))
    (root / "proc" / "self").mkdir(parents=True)
    (root / "proc" / "self" / "mountinfo").write_text(
        "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
        f"27 1 {major_minor} / / rw,relatime - {fstype} /dev/{node} rw\n"
        "31 27 0:28 / /run rw,nosuid - tmpfs tmpfs rw\n")
    (root / "dev").mkdir()
    (root / "var" / "crash").mkdir(parents=True)
    (root / "run").mkdir()
    (root / "boot").mkdir()
    (root / "boot" / f"config-{release}").write_text(
        "CONFIG_RD_GZIP=y\n" + ("CONFIG_RD_ZSTD=y\n" if rd_zstd else "# CONFIG_RD_ZSTD is not set\n"))
    return Paths(root)
