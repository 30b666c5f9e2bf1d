"""QEMU end-to-end test bed for pykexec.

Boots real Debian kernels under QEMU (TCG) with small busybox initramfs
images, optionally carrying a Python 3.11 interpreter, pykexec and Debian's
kexec-tools (the reference implementation).

Main entry points:

* :class:`Assets` -- downloads and caches kernels and guest packages.
* :func:`build_initramfs` -- builds a gzip/newc initramfs around a shell script.
* :func:`run_qemu` -- boots a kernel, streams the serial console to a log.
* :func:`run_guest_script` -- all of the above in one call, cached.

Stdlib only.  Everything downloaded or generated lives in the cache directory
(``$PYKEXEC_TESTBED_CACHE`` or ``<repo>/.cache/testbed``), guarded by a file
lock so that several pytest processes can share it.

Command line (for humans)::

    python -m support.testbed fetch [--generic]
    python -m support.testbed run 'kexec -v; python3 -c "print(1)"'
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Mapping, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Marker printed by the standard second-kernel initramfs; the rest of the line
#: is ``release=<uname -r> cmdline=<contents of /proc/cmdline>``.
SECOND_KERNEL_MARKER = "PYKEXEC-SECOND-KERNEL-UP"
#: Printed by the second kernel when /proc/vmcore exists: ``size=<bytes>``.
SECOND_KERNEL_VMCORE_MARKER = "PYKEXEC-SECOND-KERNEL-VMCORE"
#: Printed by every test-bed /init once user space is set up.
INIT_MARKER = "PYKEXEC-INIT-UP"
#: Printed after the guest script returns: ``rc=<exit status>``.
SCRIPT_EXIT_MARKER = "PYKEXEC-SCRIPT-EXIT"

#: Default guest kernel command line.  ``panic=-1`` + QEMU's ``-no-reboot``
#: turn any panic into a prompt QEMU exit instead of a hang.
DEFAULT_APPEND = "console=ttyS0 panic=-1"

#: Kernel flavours, by the Debian meta package that names the current version.
KERNEL_META = {
    "6.1": "linux-image-cloud-amd64",
    "6.12": "linux-image-6.12-cloud-amd64",
    # Generic 6.1 (has XEN_DOM0); large, only fetched when asked for.
    "6.1-generic": "linux-image-amd64",
}
DEFAULT_GUEST_KERNELS = ("6.1", "6.12")

PYTHON_PACKAGES = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libffi8")
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


# --------------------------------------------------------------------------- #
# Small helpers
# --------------------------------------------------------------------------- #

def default_cache_dir() -> Path:
    env = os.environ.get("PYKEXEC_TESTBED_CACHE")
    return Path(env) if env else REPO_ROOT / ".cache" / "testbed"


def _run(cmd: Sequence[str | os.PathLike[str]], *, cwd: Path | None = None,
         env: Mapping[str, str] | None = None) -> str:
    """Run a command, return stdout; raise with stderr included on failure."""
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise TestbedError(f"command failed ({res.returncode}): {' '.join(map(str, cmd))}\n"
                           f"{res.stdout}\n{res.stderr}")
    return res.stdout


def _hash(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:20]


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class TestbedError(RuntimeError):
    """The test bed could not fetch, build or boot something."""

    __test__ = False  # not a pytest test class


# --------------------------------------------------------------------------- #
# newc cpio writer
# --------------------------------------------------------------------------- #

class CpioWriter:
    """Minimal writer for the newc ("070701") cpio format the kernel unpacks.

    Written in-process so device nodes (``/dev/console``) can be created
    without root and output is deterministic (mtime 0, uid/gid 0).
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._ino = 1
        self._dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        name_b = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0)
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._ino += 1
        self._out.write(hdr + name_b)
        self._out.write(b"\0" * (-(len(hdr) + len(name_b)) % 4))
        self._out.write(data)
        self._out.write(b"\0" * (-len(data) % 4))

    @staticmethod
    def _norm(path: str) -> str:
        return path.strip("/")

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        """Create ``path`` and its missing parents."""
        path = self._norm(path)
        if not path or path in self._dirs:
            return
        parent = os.path.dirname(path)
        if parent:
            self.mkdir(parent)
        self._dirs.add(path)
        self._entry(path, stat.S_IFDIR | mode)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        path = self._norm(path)
        self.mkdir(os.path.dirname(path))
        self._entry(path, stat.S_IFREG | (mode & 0o7777), data)

    def symlink(self, path: str, target: str) -> None:
        path = self._norm(path)
        self.mkdir(os.path.dirname(path))
        self._entry(path, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        path = self._norm(path)
        self.mkdir(os.path.dirname(path))
        self._entry(path, stat.S_IFCHR | mode, rdev=(major, minor))

    def host_path(self, guest: str, host: Path) -> None:
        """Copy a host file, symlink or directory tree (recursively) to ``guest``."""
        st = host.lstat()
        if stat.S_ISLNK(st.st_mode):
            self.symlink(guest, os.readlink(host))
        elif stat.S_ISDIR(st.st_mode):
            self.mkdir(guest)
            for child in sorted(host.iterdir()):
                self.host_path(f"{guest.rstrip('/')}/{child.name}", child)
        elif stat.S_ISREG(st.st_mode):
            self.file(guest, host.read_bytes(), st.st_mode)

    def close(self) -> None:
        """Write the trailer and pad to 512 bytes so archives concatenate."""
        self._entry("TRAILER!!!", 0)
        pos = self._out.tell()
        self._out.write(b"\0" * (-pos % 512))


def cpio_bytes(build: Callable[[CpioWriter], None], *, compress: bool) -> bytes:
    """Run ``build`` against a fresh archive; return it, gzip -1 compressed if asked."""
    buf = io.BytesIO()
    w = CpioWriter(buf)
    build(w)
    w.close()
    data = buf.getvalue()
    if compress:
        data = gzip.compress(data, compresslevel=1, mtime=0)
        # The kernel skips zero padding between concatenated segments; keep
        # each segment 4-byte aligned as it requires for uncompressed ones.
        data += b"\0" * (-len(data) % 4)
    return data


# --------------------------------------------------------------------------- #
# Assets
# --------------------------------------------------------------------------- #

@dataclass(frozen=True)
class Kernel:
    """An unpacked Debian kernel package."""

    flavour: str          # "6.1", "6.12", "6.1-generic"
    package: str          # e.g. linux-image-6.1.0-56-cloud-amd64
    release: str          # uname -r, e.g. 6.1.0-56-cloud-amd64
    root: Path            # dpkg-deb -x tree (has lib/modules/<release>/...)

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def modules_dir(self) -> Path:
        return self.root / "lib" / "modules" / self.release


class Assets:
    """Downloads (``apt-get download``) and unpacks test-bed inputs into a cache.

    Versions are resolved at run time from the apt lists, so the newest
    kernel in the archive is used; a second run with unchanged lists does no
    downloads.  All methods are safe to call from concurrent processes.
    """

    def __init__(self, cache_dir: Path | None = None, repo: Path = REPO_ROOT) -> None:
        self.cache = (cache_dir or default_cache_dir()).resolve()
        self.repo = repo
        self.debs = self.cache / "debs"
        self.pkgs = self.cache / "pkgs"
        self.built = self.cache / "built"
        for d in (self.debs, self.pkgs, self.built):
            d.mkdir(parents=True, exist_ok=True)
        self._kernels: dict[str, Kernel] = {}
        self._lock_depth = 0
        self._lock_fd: int | None = None

    # -- locking ------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive, re-entrant lock on the cache (across processes)."""
        if self._lock_depth == 0:
            self._lock_fd = os.open(self.cache / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0 and self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    # -- Debian packages ------------------------------------------------------
    def _apt_query(self, kind: str, name: str) -> str | None:
        """Memoized ``apt-cache`` answer (apt-cache takes ~0.5 s a call here).

        The memo is keyed by the state of the apt lists, so ``apt-get update``
        invalidates it.  ``kind`` is "depends" (first Depends: of a meta
        package) or "candidate" (candidate version).  None if unknown.
        """
        lists = sorted(Path("/var/lib/apt/lists").glob("*_Packages*"))
        state = _hash(*(f"{p.name}:{p.stat().st_mtime_ns}:{p.stat().st_size}" for p in lists))
        memo_path = self.cache / "apt-memo.json"
        try:
            memo = json.loads(memo_path.read_text())
        except (OSError, ValueError):
            memo = {}
        if memo.get("state") != state:
            memo = {"state": state, "answers": {}}
        key = f"{kind}:{name}"
        if key in memo["answers"]:
            return memo["answers"][key]
        answer: str | None = None
        try:
            if kind == "depends":
                out = _run(["apt-cache", "depends", "--important", name])
                m = re.search(r"^\s*\|?Depends:\s*(\S+)", out, re.M)
                answer = m.group(1) if m else None
            else:
                out = _run(["apt-cache", "policy", name])
                m = re.search(r"Candidate:\s*(\S+)", out)
                answer = m.group(1) if m and m.group(1) != "(none)" else None
        except TestbedError:
            return None  # not memoized: apt may be fixed later
        memo["answers"][key] = answer
        _atomic_write(memo_path, json.dumps(memo, indent=1).encode())
        return answer

    def resolve_depends(self, meta: str) -> str:
        """First ``Depends:`` of a meta package, e.g. the versioned kernel package."""
        dep = self._apt_query("depends", meta)
        if dep is None:
            raise TestbedError(f"cannot resolve the package {meta!r} depends on "
                               "(apt-cache depends failed; run .ci/install-deps.sh)")
        return dep

    def package(self, name: str) -> Path:
        """Download (once) and unpack (once) a Debian package; return the tree."""
        with self.lock():
            debs = self._cached_debs(name)
            if not debs:
                with tempfile.TemporaryDirectory(dir=self.debs) as tmp:
                    try:
                        _run(["apt-get", "download", "-q", name], cwd=Path(tmp))
                    except TestbedError as e:
                        raise TestbedError(
                            f"apt-get download {name} failed; run .ci/install-deps.sh "
                            f"(it refreshes the apt lists)\n{e}") from e
                    for f in Path(tmp).glob("*.deb"):
                        os.replace(f, self.debs / f.name)
                debs = self._cached_debs(name)
                if not debs:
                    raise TestbedError(f"apt-get download {name} produced no .deb")
            deb = debs[-1]
            root = self.pkgs / deb.name.removesuffix(".deb")
            if not (root / ".unpacked").exists():
                tmp_root = root.with_name(root.name + ".tmp")
                shutil.rmtree(tmp_root, ignore_errors=True)
                _run(["dpkg-deb", "-x", deb, tmp_root])
                (tmp_root / ".unpacked").touch()
                shutil.rmtree(root, ignore_errors=True)
                os.replace(tmp_root, root)
            return root

    def _cached_debs(self, name: str) -> list[Path]:
        """Cached .debs of ``name`` whose version is the apt candidate."""
        candidate = self._apt_query("candidate", name)
        found = sorted(self.debs.glob(f"{name}_*.deb"))
        if candidate is None:
            return found  # offline / unknown: use whatever is cached
        # apt-get download escapes ':' (epochs) as %3a in file names.
        want = f"{name}_{candidate.replace(':', '%3a')}_"
        return [d for d in found if d.name.startswith(want)]

    # -- kernels ----------------------------------------------------------------
    def kernel(self, flavour: str = "6.1") -> Kernel:
        """Fetch the kernel ``flavour`` ("6.1", "6.12" or "6.1-generic")."""
        if flavour in self._kernels:
            return self._kernels[flavour]
        if flavour not in KERNEL_META:
            raise TestbedError(f"unknown kernel flavour {flavour!r}; known: {sorted(KERNEL_META)}")
        pkg = self.resolve_depends(KERNEL_META[flavour])
        root = self.package(pkg)
        images = sorted((root / "boot").glob("vmlinuz-*"))
        if len(images) != 1:
            raise TestbedError(f"expected one vmlinuz in {pkg}, found {images}")
        release = images[0].name.removeprefix("vmlinuz-")
        k = Kernel(flavour=flavour, package=pkg, release=release, root=root)
        self._kernels[flavour] = k
        return k

    def busybox(self) -> Path:
        return self.package("busybox-static") / "bin" / "busybox"

    def kexec_tools(self) -> Path:
        return self.package("kexec-tools")

    def fetch_all(self, *, generic: bool = False) -> None:
        """Fetch everything the default guests need (and the generic kernel if asked)."""
        with self.lock():
            for fl in DEFAULT_GUEST_KERNELS:
                self.kernel(fl)
            if generic:
                self.kernel("6.1-generic")
            self.busybox()
            self.kexec_tools()
            for p in PYTHON_PACKAGES:
                self.package(p)

    # -- cached initramfs segments -------------------------------------------
    def _segment(self, name: str, key: str, build: Callable[[CpioWriter], None],
                 *, compress: bool = False) -> Path:
        # Uncompressed by default: measured under TCG, the kernel unpacks a
        # 30 MB raw cpio ~0.4 s faster than its gzip -1 form, and QEMU loads
        # the extra bytes for free.
        path = self.built / f"{name}-{_hash(_LAYOUT_VERSION, key)}.cpio{'.gz' if compress else ''}"
        if not path.exists():
            with self.lock():
                if not path.exists():
                    _atomic_write(path, cpio_bytes(build, compress=compress))
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
        key = _hash(_LAYOUT_VERSION, *(r.name for r in roots))

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
            missing = _copy_shared_libs(elfs, tmp, libdirs)
            for so in missing:
                so.unlink()  # an extension whose library is absent: drop it
            _compile_tree(stdlib, guest_prefix="/usr/lib/python3.11")
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
                _copy_shared_libs(bins, t, [])
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
                _run([_host_python311(), "-m", "pip", "install", "-q", "--no-compile",
                      "--disable-pip-version-check", "--target", site, st])
            shutil.rmtree(site / "bin", ignore_errors=True)  # host shebangs; see wrapper below
            # Libraries of the dependencies' extension modules that the python layer lacks
            # (zstandard's backend wants libpthread.so.0), from the host (Debian 12 too).
            unresolved = _copy_shared_libs(sorted(site.rglob("*.so")), tmp, [])
            if unresolved:
                raise TestbedError(f"ldd cannot resolve every library of {unresolved}")
            _compile_tree(site, guest_prefix="/usr/lib/python3/dist-packages")
            wrapper = tmp / "usr" / "sbin" / "pykexec"
            wrapper.parent.mkdir(parents=True)
            # The package's own script (pip's copy has a host shebang).
            script = (self.repo / "bin" / "pykexec").read_text()
            wrapper.write_text("#!/usr/bin/python3.11\n" + script.split("\n", 1)[1])
            wrapper.chmod(0o755)
        return self._built_tree(self.built / f"pykexec-{_hash(*parts)}", fill)

    def pykexec_segment(self) -> Path:
        tree = self.pykexec_tree()

        return self._segment("pykexec", tree.name, lambda w: _add_tree(w, tree))

    def second_initrd(self) -> Path:
        """The standard second-kernel initramfs (busybox only).

        Its init prints ``PYKEXEC-SECOND-KERNEL-UP release=<uname -r>
        cmdline=<cmdline>``, and ``PYKEXEC-SECOND-KERNEL-VMCORE size=<n>``
        when booted as a crash kernel, then powers off.
        """
        path = self.built / f"second-{_hash(_LAYOUT_VERSION, SECOND_INIT_BODY, str(self.busybox()))}.cpio.gz"
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


def _host_python311() -> str:
    """A host Python 3.11 (same bytecode as the guest's Debian 3.11)."""
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    venv = REPO_ROOT / ".venv" / "bin" / "python"
    for cand in (str(venv), shutil.which("python3.11")):
        if cand and Path(cand).exists():
            return cand
    raise TestbedError("need a host Python 3.11 to precompile the guest's bytecode")


def _compile_tree(root: Path, *, guest_prefix: str) -> None:
    """Precompile ``root`` with unchecked-hash pycs, recording guest paths.

    Unchecked-hash pycs are never validated against the source, so cpio
    timestamps do not matter and the guest never recompiles.
    """
    code = ("import compileall, sys, py_compile\n"
            "ok = compileall.compile_dir(sys.argv[1], quiet=2, workers=0, stripdir=sys.argv[1],"
            " prependdir=sys.argv[2],"
            " invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)\n")
    # Some stdlib files are deliberately invalid (lib2to3 fixtures, etc.): ignore failures.
    _run([_host_python311(), "-c", code, root, guest_prefix])


def _copy_shared_libs(elfs: Sequence[Path], dest_root: Path, extra_libdirs: Sequence[str]) -> list[Path]:
    """Copy the libraries ``ldd`` resolves for ``elfs`` into ``dest_root`` at
    their host paths.  Returns the ELF files with unresolved libraries."""
    env = dict(os.environ)
    if extra_libdirs:
        env["LD_LIBRARY_PATH"] = ":".join(extra_libdirs)
    unresolved: list[Path] = []
    for elf in elfs:
        res = subprocess.run(["ldd", str(elf)], capture_output=True, text=True, env=env,
                             stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            if "not a dynamic executable" in res.stdout + res.stderr:
                continue
            raise TestbedError(f"ldd {elf} failed: {res.stderr}")
        if "not found" in res.stdout:
            unresolved.append(elf)
            continue
        for line in res.stdout.splitlines():
            m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if not m:
                continue
            src = Path(m.group(1))
            if str(src).startswith(str(dest_root)):
                continue  # resolved inside the tree (an unpacked package): keep that one
            real = src.resolve()
            dst_real = dest_root / real.relative_to("/")
            if not dst_real.exists():
                dst_real.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(real, dst_real)
            # Keep the name ldd / the ELF interpreter field uses as a symlink.
            dst_name = dest_root / src.relative_to("/")
            if src != real and not dst_name.is_symlink() and not dst_name.exists():
                dst_name.parent.mkdir(parents=True, exist_ok=True)
                dst_name.symlink_to(real)
    return unresolved


# --------------------------------------------------------------------------- #
# initramfs
# --------------------------------------------------------------------------- #

_INIT_PROLOGUE = """#!/bin/busybox sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t tmpfs tmpfs /tmp
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
echo "{init_marker} release=$(uname -r)"
"""

_INIT_EPILOGUE = """
sh {trace}/testbed/script.sh </dev/console >/dev/console 2>&1
echo "{exit_marker} rc=$?"
sync
poweroff -f
"""

SECOND_INIT_BODY = f"""echo "{SECOND_KERNEL_MARKER} release=$(uname -r) cmdline=$(cat /proc/cmdline)"
if [ -e /proc/vmcore ]; then
    echo "{SECOND_KERNEL_VMCORE_MARKER} size=$(stat -c %s /proc/vmcore)"
fi
"""


def init_script(body: str, *, trace: bool = False) -> tuple[bytes, bytes]:
    """Return (/init, /testbed/script.sh) for a script ``body``.

    The body runs in its own shell so ``exit`` in it cannot kill init
    (which would panic); its status is printed as ``PYKEXEC-SCRIPT-EXIT rc=N``.
    """
    init = (_INIT_PROLOGUE.format(init_marker=INIT_MARKER)
            + _INIT_EPILOGUE.format(trace="-x " if trace else "", exit_marker=SCRIPT_EXIT_MARKER))
    return init.encode(), body.encode()


GuestFiles = Mapping[str, "Path | str | bytes"]


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
    out = Path(out_path)
    segments = [assets.busybox_segment()]
    if with_python or with_pykexec:
        segments.append(assets.python_segment())
    if with_pykexec:
        segments.append(assets.pykexec_segment())
    if with_kexec_tools:
        segments.append(assets.kexec_tools_segment())
    if kernels:
        segments.append(assets.kernels_segment(kernels, boot_kernel))

    init, script = init_script(init_script_body, trace=trace)

    def build(w: CpioWriter) -> None:
        w.file("init", init, 0o755)
        w.file("testbed/script.sh", script, 0o755)
        for guest, src in sorted((files or {}).items()):
            if isinstance(src, bytes):
                w.file(guest, src, 0o755 if src.startswith(b"#!") else 0o644)
            else:
                p = Path(src)
                if not p.exists():
                    raise TestbedError(f"guest file {guest}: host path {p} does not exist")
                w.host_path(guest, p)

    tail = cpio_bytes(build, compress=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as raw:
        f: BinaryIO = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) if compress else raw  # type: ignore[assignment]
        for seg in segments:
            with open(seg, "rb") as s:
                shutil.copyfileobj(s, f)
        f.write(tail)
        if compress:
            f.close()
    os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------- #
# QEMU
# --------------------------------------------------------------------------- #

@dataclass
class GuestRun:
    """Result of one QEMU run."""

    cmd: list[str]
    log: str
    log_path: Path
    returncode: int | None
    timed_out: bool
    duration: float                       # seconds, QEMU start to exit
    marker_times: dict[str, float] = field(default_factory=dict)  # first sighting, s since start

    def __contains__(self, marker: str) -> bool:
        return marker in self.log

    def lines_with(self, marker: str) -> list[str]:
        return [line for line in self.log.splitlines() if marker in line]

    def expect(self, marker: str) -> str:
        """Return the first console line containing ``marker``, else fail with the log tail."""
        lines = self.lines_with(marker)
        if not lines:
            raise AssertionError(f"marker {marker!r} not in guest console\n{self.describe()}")
        return lines[0]

    def expect_not(self, marker: str) -> None:
        if marker in self.log:
            raise AssertionError(f"unexpected {marker!r} in guest console\n{self.describe()}")

    @property
    def script_rc(self) -> int | None:
        """Exit status of the first kernel's guest script, None if it did not
        return (e.g. after ``kexec -e``; the second kernel's init is ignored)."""
        first_stage = self.log.split(SECOND_KERNEL_MARKER, 1)[0]
        m = re.search(rf"{SCRIPT_EXIT_MARKER} rc=(\d+)", first_stage)
        return int(m.group(1)) if m else None

    def second_kernel(self) -> tuple[str, str]:
        """(release, cmdline) printed by the standard second-kernel initramfs."""
        line = self.expect(SECOND_KERNEL_MARKER)
        m = re.search(rf"{SECOND_KERNEL_MARKER} release=(\S+) cmdline=(.*)$", line)
        if not m:
            raise AssertionError(f"malformed second-kernel line {line!r}\n{self.describe()}")
        return m.group(1), m.group(2).rstrip("\r ")

    def assert_ok(self) -> None:
        """The script returned 0, QEMU exited by itself, and nothing panicked."""
        if self.timed_out:
            raise AssertionError(f"QEMU timed out\n{self.describe()}")
        self.expect_not("Kernel panic")
        if self.script_rc != 0:
            raise AssertionError(f"guest script rc={self.script_rc}\n{self.describe()}")

    def describe(self, tail: int = 60) -> str:
        lines = self.log.splitlines()
        return (f"qemu: rc={self.returncode} timed_out={self.timed_out} "
                f"duration={self.duration:.1f}s log={self.log_path}\n"
                f"--- last {min(tail, len(lines))} console lines ---\n" + "\n".join(lines[-tail:]))


def _qemu_lock_path() -> Path:
    return default_cache_dir() / ".qemu.lock"


def run_qemu(kernel: Path | str, initrd: Path | str | None, append: str = DEFAULT_APPEND, *,
             memory: str = "1G", smp: int = 1, timeout: float = 120.0, cpu: str = "qemu64",
             extra_args: Sequence[str] = (), log_path: Path | str | None = None,
             until: str | None = None, serialize: bool = True) -> GuestRun:
    """Boot ``kernel`` under QEMU TCG with the serial console on a pipe.

    The console is streamed to ``log_path`` (default: a file in the cache's
    ``logs/``) as it arrives.  QEMU is killed after ``timeout`` seconds, or as
    soon as ``until`` appears on the console.  With ``serialize`` (default)
    runs from all processes using the same cache take turns: the machines
    this runs on have few cores.  No TTY or stdin is needed.
    """
    if log_path is None:
        logs = default_cache_dir() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        _prune(logs, max_age=7 * 86400)
        log_path = logs / f"qemu-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{time.monotonic_ns()}.log"
    log_file = Path(log_path)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        raise TestbedError("qemu-system-x86_64 not found; run .ci/install-deps.sh")
    cmd = [qemu, "-accel", "tcg", "-cpu", cpu, "-m", memory, "-smp", str(smp),
           "-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none",
           "-serial", "stdio", "-kernel", str(kernel), "-append", append]
    if initrd is not None:
        cmd += ["-initrd", str(initrd)]
    cmd += list(extra_args)

    lock_cm: contextlib.AbstractContextManager[object]
    if serialize:
        lock_cm = _flock(_qemu_lock_path())
    else:
        lock_cm = contextlib.nullcontext()
    with lock_cm, open(log_file, "wb") as logf:
        chunks: list[bytes] = []
        marker_times: dict[str, float] = {}
        seen_until = threading.Event()
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        assert proc.stdout is not None

        def pump() -> None:
            pending = b""
            for chunk in iter(lambda: proc.stdout.read1(65536), b""):  # type: ignore[union-attr]
                chunks.append(chunk)
                logf.write(chunk)
                logf.flush()
                pending = (pending + chunk)[-4096:]
                for mk in (INIT_MARKER, SCRIPT_EXIT_MARKER, SECOND_KERNEL_MARKER):
                    if mk not in marker_times and mk.encode() in pending:
                        marker_times[mk] = time.monotonic() - start
                if until and until.encode() in pending:
                    seen_until.set()
                    # Let the rest of the line arrive before stopping QEMU.
                    if b"\n" in pending[pending.rfind(until.encode()):]:
                        _kill(proc)
        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = not seen_until.is_set()
            _kill(proc)
            proc.wait()
        finally:
            if proc.poll() is None:
                _kill(proc)
                proc.wait()
        reader.join(timeout=10)
        duration = time.monotonic() - start
        if timed_out:
            note = f"\n[testbed] QEMU killed after {timeout:.0f}s timeout\n".encode()
            logf.write(note)
            chunks.append(note)
    log = b"".join(chunks).decode("utf-8", errors="replace").replace("\r\n", "\n")
    return GuestRun(cmd=cmd, log=log, log_path=log_file, returncode=proc.returncode,
                    timed_out=timed_out, duration=duration, marker_times=marker_times)


def _prune(directory: Path, *, max_age: float) -> None:
    """Delete plain files in ``directory`` older than ``max_age`` seconds."""
    now = time.time()
    for p in directory.iterdir():
        with contextlib.suppress(OSError):
            if p.is_file() and now - p.stat().st_mtime > max_age:
                p.unlink()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 9)


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- #
# One-call helper
# --------------------------------------------------------------------------- #

def run_guest_script(script: str, assets: Assets | None = None, *, kernel: str = "6.1",
                     extra_files: GuestFiles | None = None, memory: str = "1G", smp: int = 1,
                     append_extra: str = "", append: str | None = None, timeout: float = 120.0,
                     with_python: bool = True, with_pykexec: bool = True,
                     with_kexec_tools: bool = True, guest_kernels: Sequence[str] = DEFAULT_GUEST_KERNELS,
                     cpu: str = "qemu64", extra_args: Sequence[str] = (), trace: bool = False,
                     until: str | None = None, log_path: Path | str | None = None) -> GuestRun:
    """Boot kernel ``kernel`` with an initramfs whose /init runs ``script``.

    The guest has busybox, Python 3.11 with pykexec (``/usr/sbin/pykexec``),
    Debian's ``kexec``/``vmcore-dmesg``, ``/boot/vmlinuz-6.1``,
    ``/boot/vmlinuz-6.12``, ``/boot/vmlinuz`` (the booted kernel) and
    ``/boot/second.cpio.gz``.  /init powers off after the script.  The
    initramfs is assembled from layers cached by content hash (only the
    script layer is new; assembling takes milliseconds).  The command line is
    ``append`` (default ``console=ttyS0 panic=-1``) plus ``append_extra``.
    """
    assets = assets or Assets()
    k = assets.kernel(kernel)
    kernels = tuple(dict.fromkeys([*guest_kernels, kernel])) if guest_kernels else ()
    # Every layer is cached by content hash; only the small per-script layer is
    # built here, and the concatenated image (~60 MB) is a temporary file.
    tmpdir = assets.built / "tmp"
    tmpdir.mkdir(exist_ok=True)
    _prune(tmpdir, max_age=3600)  # left behind by killed runs
    fd, name = tempfile.mkstemp(prefix="guest-", suffix=".cpio", dir=tmpdir)
    os.close(fd)
    initrd = Path(name)
    cmdline = (append if append is not None else DEFAULT_APPEND)
    if append_extra:
        cmdline = f"{cmdline} {append_extra}"
    try:
        build_initramfs(initrd, script, extra_files, with_python=with_python,
                        with_pykexec=with_pykexec, with_kexec_tools=with_kexec_tools,
                        assets=assets, kernels=kernels, boot_kernel=kernel, trace=trace)
        return run_qemu(k.vmlinuz, initrd, cmdline, memory=memory, smp=smp, timeout=timeout,
                        cpu=cpu, extra_args=extra_args, log_path=log_path, until=until)
    finally:
        initrd.unlink(missing_ok=True)


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #

def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="pykexec QEMU test bed")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download and prebuild all assets")
    f.add_argument("--generic", action="store_true", help="also the generic 6.1 kernel (for Xen)")
    r = sub.add_parser("run", help="boot a guest that runs a shell script")
    r.add_argument("script")
    r.add_argument("--kernel", default="6.1", choices=sorted(KERNEL_META))
    r.add_argument("--append-extra", default="")
    r.add_argument("--timeout", type=float, default=120)
    r.add_argument("--trace", action="store_true")
    args = ap.parse_args(argv)
    assets = Assets()
    t0 = time.monotonic()
    if args.cmd == "fetch":
        assets.fetch_all(generic=args.generic)
        t1 = time.monotonic()
        assets.python_segment()
        assets.pykexec_segment()
        assets.kexec_tools_segment()
        assets.kernels_segment(DEFAULT_GUEST_KERNELS, "6.1")
        t2 = time.monotonic()
        for fl in (*DEFAULT_GUEST_KERNELS, *(["6.1-generic"] if args.generic else [])):
            k = assets.kernel(fl)
            print(f"kernel {fl}: {k.package} -> {k.vmlinuz}")
        print(f"cache: {assets.cache}\nfetch {t1 - t0:.1f}s, build {t2 - t1:.1f}s")
        return 0
    run = run_guest_script(args.script, assets, kernel=args.kernel, append_extra=args.append_extra,
                           timeout=args.timeout, trace=args.trace)
    sys.stdout.write(run.log)
    print(f"\n[testbed] rc={run.returncode} script_rc={run.script_rc} timed_out={run.timed_out} "
          f"{run.duration:.1f}s log={run.log_path}")
    return 0 if run.script_rc == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
