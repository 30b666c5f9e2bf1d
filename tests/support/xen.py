"""Xen for the QEMU test bed: Debian's hypervisor, a dom0 kernel and a dom0 initramfs.

Dom0 is Debian's generic 6.1 kernel (XEN_DOM0/XEN_PV built in). Its initramfs prints
``PYKEXEC-DOM0-UP`` with its command line and what it sees of the hypervisor, so a
test can tell that Xen booted and started dom0 with the arguments it was given.
"""

from __future__ import annotations

import re
from pathlib import Path

from support.testbed.assets import Assets, build_initramfs
from support.testbed.cache import content_hash
from support.testbed.guest_init import init_files

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
    # Keyed by its layer's files (/init too) and busybox, so a change to either rebuilds it.
    layer = [data for _, data, _ in init_files(DOM0_INIT)]
    out = assets.built / f"dom0-initrd-{content_hash(*layer, str(assets.busybox()))}.cpio.gz"
    if not out.exists():
        build_initramfs(out, DOM0_INIT, {}, assets=assets, kernels=(), compress=True)
    return out


def guest_files(assets: Assets) -> dict[str, Path]:
    """What a Linux guest needs to kexec into Xen with dom0."""
    return {"/boot/xen.gz": xen_gz(assets), "/boot/xen": xen_elf(assets),
            "/boot/dom0-vmlinuz": dom0_kernel(assets), "/boot/dom0-initrd.gz": dom0_initrd(assets)}


# --------------------------------------------------------------------------- #
# A dom0 with Python and pykexec (for the kexec_op tests)
# --------------------------------------------------------------------------- #

#: The modules dom0 needs to reach Xen from user space: privcmd (hypercalls and
#: /dev/xen/hypercall), xenfs (/proc/xen/capabilities), evtchn.
DOM0_XEN_MODULES = ("xen-privcmd", "xenfs", "xen-evtchn")
DOM0_MODULE_DIR = "/lib/xen-modules"


def _modinfo(data: bytes, key: str) -> str:
    """A ``key=value`` string of a module's .modinfo section (no section parsing needed:
    the strings are NUL-separated and the keys are distinctive)."""
    m = re.search(rb"(?:^|\0)" + re.escape(key.encode()) + rb"=([^\0]*)\0", data)
    return m.group(1).decode() if m else ""


def _module_bytes(path: Path) -> bytes:
    """A .ko, decompressed if Debian shipped it as .ko.xz (busybox insmod takes plain ELF)."""
    import lzma

    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def dom0_modules(assets: Assets, names: tuple[str, ...] = DOM0_XEN_MODULES) -> list[tuple[str, bytes]]:
    """The dom0 kernel's modules ``names`` plus their dependencies, in load order, as
    ``(file name, .ko bytes)``. Debian ships no modules.dep: ``depends=`` is read from
    each module's .modinfo."""
    root = assets.kernel("6.1-generic").modules_dir
    index = {p.name.split(".ko")[0].replace("-", "_"): p for p in root.rglob("*.ko*")}
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        key = name.replace("-", "_")
        if key in seen:
            return
        seen.add(key)
        if key not in index:
            raise FileNotFoundError(f"module {name} not in {root}")
        data = _module_bytes(index[key])
        for dep in filter(None, _modinfo(data, "depends").split(",")):
            visit(dep)
        order.append((f"{key}.ko", data))

    for n in names:
        visit(n)
    return order


def dom0_python_init(body: str, assets: Assets) -> tuple[str, dict[str, bytes]]:
    """(script, files) for a dom0 initramfs that loads the Xen modules, mounts xenfs on
    /proc/xen, then runs ``body``."""
    mods = dom0_modules(assets)
    files = {f"{DOM0_MODULE_DIR}/{name}": data for name, data in mods}
    loads = "\n".join(f"insmod {DOM0_MODULE_DIR}/{name}" for name, _ in mods)
    script = f"""{DOM0_INIT}
{loads}
mkdir -p /proc/xen
mount -t xenfs xenfs /proc/xen
{body}
"""
    return script, files


def dom0_python_initrd(assets: Assets, body: str, out: Path) -> Path:
    """A dom0 initramfs with Python 3.11 and pykexec whose init loads the Xen modules,
    mounts xenfs and runs the shell ``body``. Uncompressed (dom0 unpacks it faster)."""
    script, files = dom0_python_init(body, assets)
    return build_initramfs(out, script, files, with_python=True, with_pykexec=True,
                           assets=assets, kernels=(), compress=False)
