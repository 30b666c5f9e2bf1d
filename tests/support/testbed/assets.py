"""The test bed's initramfs layers, built once from the fetched packages and cached by
content hash (``built/``): busybox, Python, kexec-tools, pykexec, kernels and the standard
second-kernel initramfs; and :func:`build_initramfs`, which puts a guest together from them."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from support.testbed.cache import TestbedError, atomic_write, content_hash
from support.testbed.cpio import CpioWriter, cpio_bytes
from support.testbed.guest_init import SECOND_INIT_BODY, init_files
from support.testbed.host import compile_tree, copy_shared_libs, host_python311, run_command
from support.testbed.initramfs import GuestFiles, write_initramfs
from support.testbed.packages import DEFAULT_GUEST_KERNELS, PYTHON_PACKAGES, PackageCache

KEXEC_TOOLS_BINARIES = ("sbin/kexec", "sbin/vmcore-dmesg")

# Parts of the stdlib a kexec tool never needs; dropping them keeps the image small.
_STDLIB_DROP_DIRS = {
    "test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
    "pydoc_data", "__phello__", "venv", "distutils", "config-3.11-x86_64-linux-gnu",
}
_STDLIB_DROP_FILES = {"turtle.py", "pydoc.py", "doctest.py"}
# Extension modules left out: test helpers, and those pulling in big libraries
# (libssl/libcrypto, sqlite, ncurses, readline).
_DYNLOAD_DROP = re.compile(
    r"^(_test|_xx|xx|_ctypes_test|_ssl|_hashlib|_sqlite3|_curses|readline|_dbm|_gdbm|nis|"
    r"ossaudiodev|audioop|_codecs_(cn|hk|jp|kr|tw|iso2022)|_tkinter)"
)

# Bump to invalidate every cached derived artifact after a layout change.
_LAYOUT_VERSION = "2+extension-libs"


class Assets(PackageCache):
    """The fetched packages (see :class:`PackageCache`) and the initramfs layers built from them.

    All methods are safe to call from concurrent processes.
    """

    def _segment(self, name: str, key: str, build: Callable[[CpioWriter], None],
                 *, compress: bool = False) -> Path:
        # Uncompressed by default: measured under TCG, the kernel unpacks a
        # 30 MB raw cpio ~0.4 s faster than its gzip -1 form, and QEMU loads
        # the extra bytes for free.
        path = self.built / f"{name}-{content_hash(_LAYOUT_VERSION, key)}.cpio{'.gz' if compress else ''}"
        if not path.exists():
            with self.lock():
                if not path.exists():
                    atomic_write(path, cpio_bytes(build, compress=compress))
        return path

    def busybox_segment(self) -> Path:
        """Busybox, the basic directory layout and /dev/console."""
        bb = self.busybox()

        def build(w: CpioWriter) -> None:
            for d in ("proc", "sys", "dev", "tmp", "run", "root", "sbin", "usr/bin", "usr/sbin", "etc"):
                w.mkdir(d)
            # Without /dev/console the kernel gives init no stdout.
            w.chardev("dev/console", 5, 1)
            w.host_path("bin/busybox", bb)
            w.symlink("bin/sh", "busybox")
        return self._segment("busybox", str(bb), build)

    def _built_tree(self, tree: Path, fill: Callable[[Path], None]) -> Path:
        """``tree``, made once by ``fill`` (into a temporary sibling, renamed when complete,
        so a crash never leaves a half tree that looks done), under the cache lock."""
        if (tree / ".done").exists():
            return tree
        with self.lock():
            if (tree / ".done").exists():
                return tree
            tmp = tree.with_name(tree.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            fill(tmp)
            (tmp / ".done").touch()
            shutil.rmtree(tree, ignore_errors=True)
            os.replace(tmp, tree)
        return tree

    def python_tree(self) -> Path:
        """Guest Python 3.11: interpreter, trimmed and precompiled stdlib, libraries."""
        roots = [self.package(p) for p in PYTHON_PACKAGES]
        key = content_hash(_LAYOUT_VERSION, *(r.name for r in roots))

        def fill(tmp: Path) -> None:
            for r in roots:
                shutil.copytree(r, tmp, symlinks=True, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns(".unpacked", "share"))
            stdlib = tmp / "usr" / "lib" / "python3.11"
            for p in sorted(stdlib.rglob("*"), reverse=True):
                if p.is_dir() and p.name in _STDLIB_DROP_DIRS:
                    shutil.rmtree(p)
                elif p.is_file() and p.parent == stdlib and p.name in _STDLIB_DROP_FILES:
                    p.unlink()
            for so in (stdlib / "lib-dynload").glob("*.so"):
                if _DYNLOAD_DROP.match(so.name):
                    so.unlink()
            (tmp / "usr" / "bin" / "python3").symlink_to("python3.11")
            # Shared libraries of the interpreter and every kept extension.
            # libffi comes from the unpacked libffi8; the rest from the host
            # (Debian 12 too, so the same ABI).
            elfs = [tmp / "usr" / "bin" / "python3.11", *(stdlib / "lib-dynload").glob("*.so")]
            libdirs = [str(p) for p in tmp.glob("usr/lib/x86_64-linux-gnu")]
            missing = copy_shared_libs(elfs, tmp, libdirs)
            for so in missing:
                so.unlink()  # an extension whose library is absent: drop it
            compile_tree(stdlib, guest_prefix="/usr/lib/python3.11")
        return self._built_tree(self.built / f"python-{key}", fill)

    def python_segment(self) -> Path:
        tree = self.python_tree()

        def build(w: CpioWriter) -> None:
            _add_tree(w, tree)
            w.mkdir("usr/lib/python3/dist-packages")
        return self._segment("python", tree.name, build)

    def kexec_tools_segment(self) -> Path:
        """Debian's ``kexec`` and ``vmcore-dmesg`` plus their shared libraries."""
        root = self.kexec_tools()

        def build(w: CpioWriter) -> None:
            with tempfile.TemporaryDirectory() as tmp:
                t = Path(tmp)
                bins = [root / b for b in KEXEC_TOOLS_BINARIES]
                copy_shared_libs(bins, t, [])
                for b in KEXEC_TOOLS_BINARIES:
                    (t / b).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(root / b, t / b)
                for child in sorted(t.iterdir()):
                    w.host_path(child.name, child)
        return self._segment("kexec-tools", root.name, build)

    def pykexec_tree(self) -> Path:
        """pykexec and its dependencies, ``pip install --target``-ed and precompiled.

        Keyed by the content of ``pyproject.toml`` and ``src/``, so any source
        change rebuilds it (about 4 s).
        """
        src_files = sorted(p for p in (self.repo / "src").rglob("*")
                           if p.is_file() and "__pycache__" not in p.parts
                           and ".egg-info" not in str(p.relative_to(self.repo))
                           and p.suffix != ".pyc")
        src_files.append(self.repo / "bin" / "pykexec")
        parts: list[bytes | str] = [_LAYOUT_VERSION, (self.repo / "pyproject.toml").read_bytes()]
        for p in src_files:
            parts += [str(p.relative_to(self.repo)), p.read_bytes()]

        def fill(tmp: Path) -> None:
            with tempfile.TemporaryDirectory() as stage:
                # Build from a clean copy so no build/ or egg-info lands in the repo.
                st = Path(stage)
                shutil.copy2(self.repo / "pyproject.toml", st / "pyproject.toml")
                for extra in ("README.md", "LICENSE", "COPYING", "setup.py", "setup.cfg", "MANIFEST.in"):
                    if (self.repo / extra).exists():
                        shutil.copy2(self.repo / extra, st / extra)
                for p in src_files:
                    dst = st / p.relative_to(self.repo)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(p, dst)
                site = tmp / "usr" / "lib" / "python3" / "dist-packages"
                run_command([host_python311(), "-m", "pip", "install", "-q", "--no-compile",
                      "--disable-pip-version-check", "--target", site, st])
            shutil.rmtree(site / "bin", ignore_errors=True)  # host shebangs; see wrapper below
            # Libraries of the dependencies' extension modules that the python layer lacks
            # (zstandard's backend wants libpthread.so.0), from the host (Debian 12 too).
            unresolved = copy_shared_libs(sorted(site.rglob("*.so")), tmp, [])
            if unresolved:
                raise TestbedError(f"ldd cannot resolve every library of {unresolved}")
            compile_tree(site, guest_prefix="/usr/lib/python3/dist-packages")
            wrapper = tmp / "usr" / "sbin" / "pykexec"
            wrapper.parent.mkdir(parents=True)
            # The package's own script (pip's copy has a host shebang).
            script = (self.repo / "bin" / "pykexec").read_text()
            wrapper.write_text("#!/usr/bin/python3.11\n" + script.split("\n", 1)[1])
            wrapper.chmod(0o755)
        return self._built_tree(self.built / f"pykexec-{content_hash(*parts)}", fill)

    def pykexec_segment(self) -> Path:
        tree = self.pykexec_tree()

        return self._segment("pykexec", tree.name, lambda w: _add_tree(w, tree))

    def second_initrd(self) -> Path:
        """The standard second-kernel initramfs (busybox only).

        Its init prints ``PYKEXEC-SECOND-KERNEL-UP release=<uname -r>
        cmdline=<cmdline>``, and ``PYKEXEC-SECOND-KERNEL-VMCORE size=<n>``
        when booted as a crash kernel, then powers off.
        """
        # Keyed by every file of its own layer (its /init too), not by the body alone.
        layer = [data for _, data, _ in init_files(SECOND_INIT_BODY)]
        path = self.built / f"second-{content_hash(_LAYOUT_VERSION, *layer, str(self.busybox()))}.cpio.gz"
        if not path.exists():
            with self.lock():
                if not path.exists():
                    build_initramfs(path, SECOND_INIT_BODY, {}, with_python=False,
                                    with_pykexec=False, with_kexec_tools=False,
                                    assets=self, kernels=(), compress=True)
        return path

    def kernels_segment(self, flavours: Sequence[str], boot_flavour: str) -> Path:
        """``/boot/vmlinuz-<flavour>``, ``/boot/vmlinuz`` (the booted one) and
        ``/boot/second.cpio.gz``.  Uncompressed: the payloads are compressed already."""
        kernels = [self.kernel(f) for f in flavours]
        second = self.second_initrd()

        def build(w: CpioWriter) -> None:
            for k in kernels:
                w.host_path(f"boot/vmlinuz-{k.flavour}", k.vmlinuz)
                w.file(f"boot/release-{k.flavour}", k.release.encode() + b"\n")
            if boot_flavour in flavours:
                w.symlink("boot/vmlinuz", f"vmlinuz-{boot_flavour}")
            w.host_path("boot/second.cpio.gz", second)
        key = "|".join([boot_flavour, second.name, *(k.package for k in kernels)])
        return self._segment("kernels", key, build)


def _add_tree(w: CpioWriter, tree: Path) -> None:
    """A built tree's contents (not its ``.done`` stamp) at the guest's root."""
    for child in sorted(tree.iterdir()):
        if child.name != ".done":
            w.host_path(child.name, child)


def build_initramfs(out_path: Path | str, init_script_body: str, files: GuestFiles | None = None, *,
                    with_python: bool = False, with_pykexec: bool = False,
                    with_kexec_tools: bool = False, assets: Assets | None = None,
                    kernels: Sequence[str] = DEFAULT_GUEST_KERNELS, boot_kernel: str = "6.1",
                    trace: bool = False, compress: bool = False) -> Path:
    """Build an initramfs at ``out_path`` and return the path.

    ``init_script_body`` is shell code run by busybox ``sh`` after the
    standard setup (busybox applets installed, proc/sys/devtmpfs/tmp mounted);
    /init always ends with ``poweroff -f``.  ``files`` maps guest paths to
    host paths (files or directory trees) or to bytes (mode 0755 when they
    start with ``#!``).  ``kernels`` puts ``/boot/vmlinuz-<flavour>`` in the
    guest, plus ``/boot/vmlinuz`` -> ``boot_kernel`` and
    ``/boot/second.cpio.gz``; pass ``()`` for none.

    The image is a concatenation of cached segments (busybox, python,
    pykexec, kexec-tools, kernels) and a small per-call one; the kernel
    unpacks them in order, later files overriding earlier ones.  The result
    is uncompressed (fastest to boot under TCG) unless ``compress`` asks for
    one gzip stream, e.g. for an image the guest itself passes to kexec.
    """
    assets = assets or Assets()
    segments = [assets.busybox_segment()]
    if with_python or with_pykexec:
        segments.append(assets.python_segment())
    if with_pykexec:
        segments.append(assets.pykexec_segment())
    if with_kexec_tools:
        segments.append(assets.kexec_tools_segment())
    if kernels:
        segments.append(assets.kernels_segment(kernels, boot_kernel))
    return write_initramfs(Path(out_path), segments, init_script_body, files, trace=trace, compress=compress)
