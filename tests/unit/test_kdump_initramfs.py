"""The crash initramfs built on this host (Python 3.11, as a Debian 12 system has)
for a pretend system under a temporary root: a virtio disk in /sys, its mount in
/proc/self/mountinfo, and a module tree in /lib/modules; what the archive holds,
when it is rebuilt, and the targets it refuses.  With root, the archive is
unpacked and its own interpreter runs a whole capture in a chroot."""

from __future__ import annotations

import json
import lzma
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pykexec.errors import InputError
from pykexec.kdump import initramfs as I
from pykexec.kdump.capture_plan import CapturePlan
from pykexec.kdump.config import KdumpConfig
from pykexec.kdump.cpio_reader import CpioEntry, read_initramfs_file
from pykexec.kdump.kmods import ModuleIndex
from pykexec.kdump.paths import Paths
from pykexec.kdump.pyclosure import interpreter
from pykexec.vmcore.kdump import KdumpFile

from support.crash_dump import PANIC, synthetic_crash
from support.kdump_system import make_system as system_root

RELEASE = "6.1.0-test-amd64"
#: name -> (path under kernel/, its modules.dep dependencies)
MODULES = {
    "virtio": ("drivers/virtio/virtio.ko", []),
    "virtio_ring": ("drivers/virtio/virtio_ring.ko", []),
    "virtio_pci_modern_dev": ("drivers/virtio/virtio_pci_modern_dev.ko", []),
    "virtio_pci": ("drivers/virtio/virtio_pci.ko", ["virtio_pci_modern_dev", "virtio_ring", "virtio"]),
    "virtio_blk": ("drivers/block/virtio_blk.ko.xz", ["virtio_ring", "virtio"]),
    "xfs": ("fs/xfs/xfs.ko.xz", ["libcrc32c"]),
    "libcrc32c": ("lib/libcrc32c.ko", []),
    "crc32c_generic": ("crypto/crc32c_generic.ko", []),
    "e1000": ("drivers/net/e1000.ko", []),
}


def module_bytes(name: str) -> bytes:
    return f"\x7fELF pretend module {name}\n".encode() * 10


def make_system(root: Path, *, fstype: str = "xfs", stacked: bool = False) -> Paths:
    """A machine with /dev/vda1 (xfs by default) holding /var/crash, and a module tree."""
    paths = system_root(root, RELEASE, fstype=fstype, partition="1", major_minor="254:1", stacked=stacked)
    moddir = paths.modules / RELEASE
    for name, (path, _deps) in MODULES.items():
        target = moddir / "kernel" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        data = module_bytes(name)
        target.write_bytes(lzma.compress(data) if path.endswith(".xz") else data)
    (moddir / "modules.dep").write_text("".join(
        f"kernel/{path}: {' '.join('kernel/' + MODULES[d][0] for d in deps)}\n" for path, deps in MODULES.values()))
    (moddir / "modules.alias").write_text("alias fs-xfs xfs\nalias crypto-crc32c crc32c_generic\n"
                                          "alias crc32c crc32c_generic\nalias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000\n")
    (moddir / "modules.softdep").write_text("softdep xfs pre: crc32c\n")
    (moddir / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\nkernel/fs/jbd2/jbd2.ko\n")
    return paths


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Paths, dict[str, CpioEntry]]:
    paths = make_system(tmp_path_factory.mktemp("system"))
    out = I.build(KdumpConfig(dump_level=17), paths, release=RELEASE)
    return paths, {e.name: e for e in read_initramfs_file(out, want=lambda name: True)}


def test_the_archive_holds_python_pykexec_the_modules_and_init(built: tuple[Paths, dict[str, CpioEntry]]) -> None:
    paths, entries = built
    python = interpreter()
    init = entries["init"]
    assert init.data is not None and init.mode & 0o111
    assert init.data.startswith(f"#!{python} -S\n".encode()) and b"from pykexec.kdump.capture import main" in init.data
    assert python.lstrip("/") in entries or any(e.is_symlink and python.lstrip("/").startswith(e.name)
                                                 for e in entries.values())
    for module in ("pykexec/kdump/capture", "pykexec/kdump/records", "pykexec/vmcore/save",
                   "pykexec/vmcore/kdump_writer", "pykexec/vmcore/printk", "zstandard/__init__"):
        assert f"kdump/python/{module}.pyc" in entries, module
    assert not [name for name in entries if name.endswith(".py")], "sources: only .pyc files"
    assert any(name.startswith("kdump/python/zstandard/backend_c") for name in entries)
    assert any(name.endswith("/os.pyc") for name in entries)  # the interpreter's landmark
    assert not any("/unittest/" in name or "/asyncio/" in name or "/tkinter/" in name for name in entries)
    plan = CapturePlan.from_json(entries["kdump/capture.json"].data.decode())  # type: ignore[union-attr]
    # the disk's and its controller's drivers, the file system, and what each needs, in order
    assert plan.modules == ["virtio", "virtio_ring", "virtio_blk", "virtio_pci_modern_dev", "virtio_pci",
                            "crc32c_generic", "libcrc32c", "xfs"]
    assert plan.device is not None and (plan.device.name, plan.device.fstype, plan.device.path) == \
        ("vda1", "xfs", "/var/crash")
    for name in plan.modules:  # decompressed: finit_module takes them as they are
        assert entries[f"kdump/modules/{name}.ko"].data == module_bytes(name)
    config = tomllib.loads(entries["etc/pykexec/kdump.toml"].data.decode())  # type: ignore[union-attr]
    assert config["dump_level"] == 17
    assert entries["dev/console"].mode == 0o20600
    assert not any(name.endswith("bin/ssh") for name in entries)  # a local target: no ssh client


def test_stamp_and_rebuild_only_when_inputs_change(built: tuple[Paths, dict[str, CpioEntry]]) -> None:
    paths, _ = built
    stamp = json.loads(I.stamp_path(paths).read_text())
    assert stamp["compression"] == "zstd" and stamp["bytes"] == paths.initramfs.stat().st_size
    assert stamp["unpacked_bytes"] > stamp["bytes"]
    before = paths.initramfs.stat()
    assert I.build(KdumpConfig(dump_level=17), paths, release=RELEASE) == paths.initramfs
    after = paths.initramfs.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    I.build(KdumpConfig(dump_level=31), paths, release=RELEASE)
    assert paths.initramfs.stat().st_ino != before.st_ino
    assert json.loads(I.stamp_path(paths).read_text())["digest"] != stamp["digest"]
    assert not list(paths.initramfs.parent.glob(".*.tmp"))


def test_gzip_without_rd_zstd(tmp_path: Path) -> None:
    paths = make_system(tmp_path)
    assert I.compression(paths, RELEASE) == "zstd"
    (paths.boot / f"config-{RELEASE}").write_text("CONFIG_RD_GZIP=y\n# CONFIG_RD_ZSTD is not set\n")
    assert I.compression(paths, RELEASE) == "gzip"
    (paths.boot / f"config-{RELEASE}").unlink()
    assert I.compression(paths, RELEASE) == "gzip"


def test_built_in_file_system_needs_no_module(tmp_path: Path) -> None:
    paths = make_system(tmp_path, fstype="ext4")
    plan, wanted = I.target_plan(KdumpConfig(), paths, RELEASE)
    assert wanted == ["virtio_blk", "virtio_pci", "fs-ext4"]
    index = ModuleIndex(paths.modules / RELEASE)
    assert index.resolve("fs-ext4") == [] and index.resolve("ext4") == []
    assert plan.device is not None and plan.device.uuid is None  # no /dev node here: found by name


def test_targets_the_crash_kernel_cannot_reach(tmp_path: Path) -> None:
    paths = make_system(tmp_path / "dm", stacked=True)
    with pytest.raises(InputError, match="device-mapper or md"):
        I.target_plan(KdumpConfig(), paths, RELEASE)
    paths = make_system(tmp_path / "tmpfs")
    (paths.under("/run/crash")).mkdir()
    with pytest.raises(InputError, match="is on tmpfs"):
        I.target_plan(KdumpConfig(target="/run/crash"), paths, RELEASE)


def test_module_index_without_modules_dep_reads_modinfo() -> None:
    """A kernel package unpacked, not installed (no depmod): dependencies from .modinfo."""
    packages = Path(__file__).resolve().parents[2] / ".cache" / "testbed" / "pkgs"
    trees = sorted(packages.glob("linux-image-6.12*-cloud-amd64*/lib/modules/*"))
    if not trees:
        pytest.skip("no Debian 6.12 kernel package in the test bed's cache")
    index = ModuleIndex(trees[0])
    assert not index.indexed
    order = index.load_order(index.resolve("virtio_blk") + index.resolve("virtio_net"))
    assert order.index("virtio_blk") > order.index("virtio_ring") if "virtio_ring" in order else True
    assert order[-1] in ("virtio_blk", "virtio_net", "net_failover") and "failover" in order
    assert index.contents("virtio_blk")[:4] == b"\x7fELF"  # .ko.xz in 6.12 packages


def _capture_in_chroot(entries: dict[str, CpioEntry], root: Path) -> tuple[Path, set[str]]:
    """Unpacked at ``root``, the archive's own interpreter runs the capture in a chroot
    (the kernel's part faked: no mount, no reboot); the crash directory it made and the
    modules it imported."""
    for e in entries.values():
        path = root / e.name
        if e.is_dir:
            path.mkdir(parents=True, exist_ok=True)
        elif e.is_symlink:
            path.symlink_to(e.data.decode())  # type: ignore[union-attr]
        elif e.is_file:
            path.write_bytes(e.data)  # type: ignore[arg-type]
            path.chmod(e.mode & 0o7777)
    synthetic_crash(root / "tmp" / "vmcore")
    (root / "sys" / "class" / "block" / "vda1").mkdir(parents=True)
    (root / "dev" / "vda1").write_bytes(b"")
    runner = root / "tmp" / "run.py"
    runner.write_text(CHROOT_CAPTURE)
    res = subprocess.run(["chroot", str(root), interpreter(), "-S", "/tmp/run.py"], capture_output=True, text=True,
                         timeout=120)
    if res.returncode != 0 and "Operation not permitted" in res.stderr:
        pytest.skip("chroot is not permitted here")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ACTION reboot" in res.stdout and "pykexec-kdump: dump saved" in res.stdout, res.stdout
    (crash,) = list((root / "mnt" / "target" / "var" / "crash").iterdir())
    assert json.loads((crash / "record.json").read_text())["complete"] is True
    return crash, set(res.stdout.split("MODULES ", 1)[1].split())


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_the_initramfs_python_runs_a_capture(built: tuple[Paths, dict[str, CpioEntry]], tmp_path: Path) -> None:
    """Every module the capture imports is in the archive."""
    _, entries = built
    crash, imported = _capture_in_chroot(entries, tmp_path / "initramfs")
    assert PANIC in (crash / "dmesg.txt").read_bytes()
    # only what the capture needs was imported: no site, no argparse-free surprises
    assert "site" not in imported and "zstandard" in imported


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
@pytest.mark.parametrize("kind,module,flag", [("lzo", "lzallright", 0x2), ("snappy", "cramjam", 0x4)])
def test_lzo_and_snappy_captures_carry_their_codec_alone(tmp_path: Path, kind: str, module: str, flag: int) -> None:
    """A configured lzo or snappy capture: its codec's library is in the archive (and
    loads there), the other codecs' are not; the dump saved says it is lzo or snappy."""
    paths = make_system(tmp_path / "system")
    out = I.build(KdumpConfig(dump_level=17, compression=kind), paths, release=RELEASE)
    entries = {e.name: e for e in read_initramfs_file(out, want=lambda name: True)}
    packages = {name.split("/")[2] for name in entries if name.startswith("kdump/python/")}
    assert module in packages and not {"zstandard", "lzallright", "cramjam"} - {module} & packages
    crash, imported = _capture_in_chroot(entries, tmp_path / "initramfs")
    assert module in imported
    with KdumpFile(crash / "vmcore") as dump:
        assert dump.header.status == flag and not dump.incomplete


#: Run by the archive's interpreter in the chroot: the capture with the kernel's part faked.
CHROOT_CAPTURE = f"""
import os, sys
sys.path.insert(0, {I.CP.PYTHON_DIR!r})
from pykexec.kdump.capture import Capture, Console, load_plan

class Kernel:
    def mount(self, source, target, fstype, options="", flags=0):
        os.makedirs(target, exist_ok=True)
    def umount(self, target): pass
    def load_module(self, path):
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    def sync(self): pass
    def reboot(self, action): pass

console = Console()
plan, config = load_plan(console)
print("ACTION", Capture(plan, config, Kernel(), console, vmcore="/tmp/vmcore").run(), flush=True)
print("MODULES", " ".join(sorted(sys.modules)))
"""
