"""Debian packages for the test bed: kernels, busybox, kexec-tools and the guest's Python,
downloaded with ``apt-get download`` and unpacked into the cache (``debs/``, ``pkgs/``)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from support.testbed.cache import REPO_ROOT, TestbedError, atomic_write, content_hash, default_cache_dir
from support.testbed.host import run_command

#: Kernel flavours, by the Debian meta package that names the current version.
KERNEL_META = {
    "6.1": "linux-image-cloud-amd64",
    "6.12": "linux-image-6.12-cloud-amd64",
    # Generic 6.1 (has XEN_DOM0); large, only fetched when asked for.
    "6.1-generic": "linux-image-amd64",
}
DEFAULT_GUEST_KERNELS = ("6.1", "6.12")

PYTHON_PACKAGES = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libffi8")


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


class PackageCache:
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
        state = content_hash(*(f"{p.name}:{p.stat().st_mtime_ns}:{p.stat().st_size}" for p in lists))
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
                out = run_command(["apt-cache", "depends", "--important", name])
                m = re.search(r"^\s*\|?Depends:\s*(\S+)", out, re.M)
                answer = m.group(1) if m else None
            else:
                out = run_command(["apt-cache", "policy", name])
                m = re.search(r"Candidate:\s*(\S+)", out)
                answer = m.group(1) if m and m.group(1) != "(none)" else None
        except TestbedError:
            return None  # not memoized: apt may be fixed later
        memo["answers"][key] = answer
        atomic_write(memo_path, json.dumps(memo, indent=1).encode())
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
                        run_command(["apt-get", "download", "-q", name], cwd=Path(tmp))
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
                run_command(["dpkg-deb", "-x", deb, tmp_root])
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

    def systemd_stub(self) -> Path:
        """Debian's systemd-stub (systemd-boot-efi): the PE stub UKIs are built on."""
        return self.package("systemd-boot-efi") / "usr" / "lib" / "systemd" / "boot" / "efi" / "linuxx64.efi.stub"

    def fetch_all(self, *, generic: bool = False) -> None:
        """Fetch everything the default guests need (and the generic kernel if asked)."""
        with self.lock():
            for fl in DEFAULT_GUEST_KERNELS:
                self.kernel(fl)
            if generic:
                self.kernel("6.1-generic")
            self.busybox()
            self.kexec_tools()
            self.systemd_stub()
            for p in PYTHON_PACKAGES:
                self.package(p)
