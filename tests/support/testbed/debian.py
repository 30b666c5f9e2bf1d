"""A real Debian 12 system for the kdump service's end-to-end tests: systemd, udev,
initramfs-tools, Debian's cloud kernels (6.1 and 6.12), kexec-tools, makedumpfile and kdump-tools
(installed, disabled: a test turns on either it or pykexec's service), and pykexec installed
from the checkout.  It is a Xen host too: Debian's Xen 4.17 hypervisor and the generic 6.1
kernel (flavour ``6.1-xen``: the cloud kernels cannot be a PV dom0), booted by
:func:`support.testbed.debian_boot.boot_xen`; nothing else of Xen's tools is installed
(pykexec's service loads the dom0 modules it needs itself).

Two layers, so that a source change costs a second, not a rebuild:

* the **base** (:meth:`DebianTestbed.base`, about a minute): ``mmdebstrap`` from the Debian
  archive this machine's apt sources name, kdump-tools installed with the ``MODULES=list``
  workaround, the result put in a sparse 4 GiB ext4 image with ``mkfs.ext4 -d``; the image's
  own kernels and initrds copied beside it for QEMU's ``-kernel``/``-initrd``.  Cached in
  ``<cache>/debian/base-<key>`` where the key digests the package list, the hooks, the layout
  and the kernel packages apt resolves today (a new Debian kernel makes a new base).
* the **guest layer** (:meth:`DebianTestbed.guest_layer`): pykexec and its dependencies as
  ``pip install --target /usr/local/lib/python3.11/dist-packages`` makes them, precompiled,
  ``/usr/local/bin/pykexec``, and the step runner (:mod:`.debian_step`); keyed by the digest of
  pykexec's sources, so every test run gets the checkout as it is.

:meth:`DebianTestbed.new_disk` copies the base image (holes kept) and writes the guest layer
into it with debugfs: about 0.6 s.  Boot it with :func:`support.testbed.debian_boot.boot`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from support.testbed.cache import REPO_ROOT, TestbedError, atomic_write, content_hash, default_cache_dir, flock
from support.testbed.debian_step import BOOT_COUNT_PATH, STEP_PATH, step_files, step_unit_links
from support.testbed.ext4 import Ext4Image, copy_image, make_image
from support.testbed.host import compile_tree, run_command
from support.testbed.packages import KERNEL_META, PackageCache

SUITE = "bookworm"
#: Kernel flavours installed in the image, by their meta package: Debian's cloud kernels, and
#: the generic 6.1 kernel (XEN_DOM0) as ``6.1-xen``, the dom0 of Xen boots.
KERNELS = {"6.1": KERNEL_META["6.1"], "6.12": KERNEL_META["6.12"], "6.1-xen": KERNEL_META["6.1-generic"]}
#: Debian's hypervisor package (no Recommends: not xen-utils, whose daemons a kdump test does not need).
XEN_HYPERVISOR = "xen-hypervisor-4.17-amd64"
#: Installed by mmdebstrap (minbase variant, no Recommends); kdump-tools comes after, in a hook.
PACKAGES = ("systemd-sysv", "udev", "kmod", "initramfs-tools", *KERNELS.values(), "python3",
            "kexec-tools", "makedumpfile", "procps", "openssh-client", "e2fsprogs", XEN_HYPERVISOR,
            # kdump-tools' dependencies, installed up front so that its hook only configures it.
            "bsdextrautils", "file", "ucf", "busybox")
DISK_BYTES = 4 << 30
GUEST_SITE_PACKAGES = "/usr/local/lib/python3.11/dist-packages"
XEN_ELF = "xen.elf"
DISK_LABEL = "testbed-root"
# Bump when the way the base is built changes in a way the inputs below do not show.
_LAYOUT_VERSION = "2"
_TOOLS = ("mmdebstrap", "mkfs.ext4", "debugfs", "e2fsck", "dumpe2fs")

# Before any package is configured: kexec-tools must not take over reboots, and kdump-tools
# stays off until a test turns it on.
_ESSENTIAL_HOOK = (
    'printf "%s\\n" "kexec-tools kexec-tools/load_kexec boolean false"'
    ' "kdump-tools kdump-tools/use_kdump boolean false" | chroot "$1" debconf-set-selections'
)

# kdump-tools' kernel hook switches initramfs-tools to MODULES=dep, whose mkinitramfs cannot
# find the root device inside a chroot: pin MODULES=list with what /dev/vda needs first.
_CUSTOMIZE_HOOK = """set -eu
root="$1"
echo MODULES=list > "$root/etc/initramfs-tools/conf.d/testbed-modules"
printf '%s\\n' virtio_pci virtio_blk ext4 >> "$root/etc/initramfs-tools/modules"
DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -q --no-install-recommends kdump-tools
# Its trigger rebuilt the newest kernel's initrd only: the others' still hold MODULES=most.
chroot "$root" update-initramfs -u -k all
# Present but off: a test enables kdump-tools or pykexec's service, never both.
chroot "$root" systemctl disable kdump-tools.service
# agetty would hang up the serial console under the step runner's feet (hvc0: Xen's dom0).
chroot "$root" systemctl mask serial-getty@ttyS0.service serial-getty@hvc0.service
# Persistent daily timers would fire during the first boots and compete for the CPU.
chroot "$root" systemctl disable apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \\
    e2scrub_all.timer fstrim.timer
echo '/dev/vda / ext4 defaults 0 1' > "$root/etc/fstab"
echo testbed > "$root/etc/hostname"
printf '127.0.0.1 localhost\\n127.0.1.1 testbed\\n' > "$root/etc/hosts"
mkdir -p "$root/var/lib/testbed"
"""


@dataclass(frozen=True)
class DebianBase:
    """A built base: the disk image, and the kernels and initrds it boots with (copies of
    its own /boot/vmlinuz-* and /boot/initrd.img-*)."""

    directory: Path
    releases: dict[str, str]     # uname -r of each kernel flavour (see KERNELS)

    def image(self) -> Path:
        return self.directory / "disk.img"

    def vmlinuz(self, flavour: str = "6.1") -> Path:
        return self.directory / f"vmlinuz-{self.releases[flavour]}"

    def initrd(self, flavour: str = "6.1") -> Path:
        return self.directory / f"initrd.img-{self.releases[flavour]}"

    def xen(self) -> Path:
        """The image's /boot/xen-*.gz gunzipped (QEMU's Multiboot loader takes no gzip)."""
        return self.directory / XEN_ELF

    def manifest(self) -> dict[str, object]:
        """What was built, from what, and how long it took (``manifest.json``)."""
        manifest: dict[str, object] = json.loads((self.directory / "manifest.json").read_text())
        return manifest


class DebianDisk(Ext4Image):
    """A per-test copy of the base image with the guest layer, and the kernel it boots."""

    def __init__(self, path: Path, base: DebianBase) -> None:
        super().__init__(path)
        self.base = base

    def write_step(self, script: str) -> None:
        """The shell step the next boot runs (see :mod:`.debian_step`)."""
        self.write_files([(STEP_PATH, script.encode(), 0o755)])

    def boot_count(self) -> int:
        """How many boots reached the step runner so far."""
        if not self.exists(BOOT_COUNT_PATH):
            return 0
        return int(self.read_text(BOOT_COUNT_PATH).strip() or 0)


class DebianTestbed:
    """The cached Debian base and guest layer (``<cache>/debian``).  Safe across processes."""

    def __init__(self, cache_dir: Path | None = None, repo: Path = REPO_ROOT) -> None:
        self.cache = (cache_dir or default_cache_dir()).resolve()
        self.root = self.cache / "debian"
        self.root.mkdir(parents=True, exist_ok=True)
        self.repo = repo

    # -- the base -----------------------------------------------------------------
    def kernel_packages(self) -> dict[str, str]:
        """The versioned kernel package of each flavour, as apt resolves it today."""
        apt = PackageCache(self.cache, self.repo)
        return {flavour: apt.resolve_depends(meta) for flavour, meta in KERNELS.items()}

    def base_key(self) -> str:
        """The digest naming the base: everything that decides what mmdebstrap installs."""
        return content_hash(_LAYOUT_VERSION, SUITE, *PACKAGES, _ESSENTIAL_HOOK, _CUSTOMIZE_HOOK,
                            *self.kernel_packages().values(), str(DISK_BYTES))

    def base(self) -> DebianBase:
        """The base, built first if this key has none (about a minute, network included)."""
        _require_tools()
        directory = self.root / f"base-{self.base_key()}"
        if not (directory / ".done").exists():
            with flock(self.root / ".lock"):
                if not (directory / ".done").exists():
                    self._build_base(directory)
        manifest = json.loads((directory / "manifest.json").read_text())
        return DebianBase(directory=directory, releases=manifest["releases"])

    def _build_base(self, directory: Path) -> None:
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        tree = tmp / "rootfs"
        debs = self.root / "debs"  # downloaded packages, kept for the next build
        debs.mkdir(exist_ok=True)
        t0 = time.monotonic()
        cmd = ["mmdebstrap", "--mode=root", "--format=directory", "--variant=minbase",
               f"--include={','.join(PACKAGES)}",
               f"--essential-hook={_ESSENTIAL_HOOK}",
               "--setup-hook=mkdir -p \"$1/var/cache/apt/archives\""
               f" && cp -al {shlex.quote(str(debs))}/. \"$1/var/cache/apt/archives/\"",
               f"--customize-hook={_CUSTOMIZE_HOOK}",
               f"--customize-hook=cp -aln \"$1\"/var/cache/apt/archives/*.deb {shlex.quote(str(debs))}/",
               # Keep the linked .debs in the cache instead of unlinking them after use.
               "--skip=essential/unlink",
               SUITE, str(tree), *debian_sources()]
        log = tmp / "mmdebstrap.log"
        try:
            with open(log, "w") as out:
                res = _run_logged(cmd, out)
            if res != 0:
                raise TestbedError(f"mmdebstrap failed ({res}); see {log}:\n" + _tail(log))
            t1 = time.monotonic()
            releases = {flavour: package.removeprefix("linux-image-")
                        for flavour, package in self.kernel_packages().items()}
            base = DebianBase(directory=tmp, releases=releases)
            for flavour, release in releases.items():
                for name in (f"vmlinuz-{release}", f"initrd.img-{release}"):
                    if not (tree / "boot" / name).is_file():
                        raise TestbedError(f"the image has no /boot/{name}")
                    shutil.copy2(tree / "boot" / name, tmp / name)
            _copy_xen(tree, tmp / XEN_ELF)
            make_image(base.image(), tree, size_bytes=DISK_BYTES, label=DISK_LABEL)
            t2 = time.monotonic()
        finally:
            shutil.rmtree(tree, ignore_errors=True)
        manifest = {"releases": releases, "suite": SUITE, "packages": list(PACKAGES),
                    "mmdebstrap_seconds": round(t1 - t0, 1), "image_seconds": round(t2 - t1, 1),
                    "built": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write(tmp / "manifest.json", json.dumps(manifest, indent=1).encode())
        (tmp / ".done").touch()
        # One base at a time: each is half a gigabyte.
        for old in self.root.glob("base-*"):
            if old != tmp:
                shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, directory)

    # -- the guest layer ----------------------------------------------------------------
    def guest_layer(self) -> Path:
        """A tree to lay over the base's root: pykexec from the checkout and the step runner."""
        # Imported here: assets pulls in the initramfs builders, which only this needs.
        from support.testbed.assets import Assets

        pykexec_tree = Assets(self.cache, self.repo).pykexec_tree()
        files = step_files()
        key = content_hash(_LAYOUT_VERSION, pykexec_tree.name,
                           *(f"{path}:{mode:o}" for path, _, mode in files),
                           *(data for _, data, _ in files), *(":".join(link) for link in step_unit_links()))
        layer = self.root / f"layer-{key}"
        if (layer / ".done").exists():
            return layer / "root"
        with flock(self.root / ".lock"):
            if not (layer / ".done").exists():
                tmp = layer.with_name(layer.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                _fill_layer(tmp / "root", pykexec_tree)
                (tmp / ".done").touch()
                shutil.rmtree(layer, ignore_errors=True)
                os.replace(tmp, layer)
            _prune_layers(self.root, keep=layer)
        return layer / "root"

    # -- per-test disks -------------------------------------------------------------------
    def new_disk(self, path: Path) -> DebianDisk:
        """A fresh disk at ``path``: the base image with the current guest layer written in."""
        base = self.base()
        layer = self.guest_layer()
        copy_image(base.image(), path)
        disk = DebianDisk(path, base)
        disk.add_tree(layer, "/")
        return disk


def _fill_layer(root: Path, pykexec_tree: Path) -> None:
    """pykexec's ``pip install --target`` tree moved to /usr/local and precompiled there
    (tracebacks name the guest's paths), its command, and the step runner."""
    site = root / GUEST_SITE_PACKAGES.lstrip("/")
    shutil.copytree(pykexec_tree / "usr" / "lib" / "python3" / "dist-packages", site, symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    compile_tree(site, guest_prefix=GUEST_SITE_PACKAGES)
    command = root / "usr" / "local" / "bin" / "pykexec"
    command.parent.mkdir(parents=True)
    shutil.copy2(pykexec_tree / "usr" / "sbin" / "pykexec", command)
    for path, data, mode in step_files():
        dest = root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        dest.chmod(mode)
    for path, target in step_unit_links():
        link = root / path.lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)


def _copy_xen(tree: Path, out: Path) -> None:
    import gzip

    found = sorted((tree / "boot").glob("xen-*.gz"))
    if len(found) != 1:
        raise TestbedError(f"expected one /boot/xen-*.gz in the image ({XEN_HYPERVISOR}), found {found}")
    out.write_bytes(gzip.decompress(found[0].read_bytes()))


def _prune_layers(root: Path, *, keep: Path, max_age: float = 86400) -> None:
    """Drop guest layers unused for a day (one per source change, 30 MB each)."""
    now = time.time()
    for old in root.glob("layer-*"):
        if old != keep and now - old.stat().st_mtime > max_age:
            shutil.rmtree(old, ignore_errors=True)


def debian_sources(suite: str = SUITE, apt: Path = Path("/etc/apt")) -> list[str]:
    """This machine's apt sources for ``suite`` and its -updates and -security suites, as
    one-line entries for mmdebstrap: the Debian archive the host is set up to use, and
    none of the other repositories it may list."""
    wanted = {suite, f"{suite}-updates", f"{suite}-security"}
    entries: list[str] = []
    one_line = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            # deb [options] URI SUITE COMPONENT...
            m = re.match(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.+?)\s*$", line.split("#", 1)[0])
            if m and m.group(2) in wanted:
                entries.append(f"deb {m.group(1)} {m.group(2)} {m.group(3)}")
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = _deb822_fields(stanza)
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                continue
            for uri in fields.get("uris", "").split():
                for s in fields.get("suites", "").split():
                    if s in wanted:
                        entries.append(f"deb {uri} {s} {fields.get('components', 'main')}")
    if not any(e.split()[2] == suite for e in entries):
        raise TestbedError(f"no apt source for Debian {suite} in {apt}: mmdebstrap needs one")
    return list(dict.fromkeys(entries))


def _deb822_fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    name = None
    for line in stanza.splitlines():
        if line.startswith("#"):
            continue
        if line[:1].isspace() and name:
            fields[name] += " " + line.strip()
        elif ":" in line:
            name, value = line.split(":", 1)
            name = name.strip().lower()
            fields[name] = value.strip()
    return fields


def _require_tools() -> None:
    missing = [t for t in _TOOLS if shutil.which(t) is None]
    if missing:
        raise TestbedError(f"{', '.join(missing)} not installed; run .ci/install-deps.sh")
    if os.geteuid() != 0:
        raise TestbedError("building the Debian image needs root (mmdebstrap --mode=root)")


def _run_logged(cmd: list[str], out: IO[str]) -> int:
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT).returncode


def _tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
