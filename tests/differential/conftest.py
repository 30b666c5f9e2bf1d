"""Fixtures for the kexec-tools differential tests: Debian's current cloud kernel
(downloaded once into <repo>/.cache/oracle/) and a small synthetic initrd."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from support.oracle import REPO_ROOT
from support.testbed.cache import flock

CACHE = REPO_ROOT / ".cache" / "oracle"


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True,
                              **kwargs)  # type: ignore[call-overload]
    except FileNotFoundError:
        pytest.fail(f"{cmd[0]} not found: the oracle tests need Debian's apt/dpkg tools")
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"{' '.join(cmd)} failed ({exc.returncode}):\n{exc.stderr}")


@pytest.fixture(scope="session")
def vmlinuz() -> Path:
    """The bzImage of Debian's current cloud kernel, downloaded once.  Under a lock and
    extracted to a private directory that is then renamed: with two pytest workers, one
    once read the other's half-written vmlinuz."""
    depends = _run(["apt-cache", "depends", "linux-image-cloud-amd64"]).stdout
    match = re.search(r"Depends:\s*(linux-image-\S+-cloud-amd64)", depends)
    if match is None:
        pytest.fail(f"cannot resolve linux-image-cloud-amd64 from:\n{depends}")
    package = match.group(1)
    extracted = CACHE / package
    CACHE.mkdir(parents=True, exist_ok=True)
    with flock(CACHE / ".lock"):
        kernels = sorted(extracted.glob("boot/vmlinuz-*"))
        if kernels:
            return kernels[0]
        debs = sorted(CACHE.glob(f"{package}_*.deb"))
        if not debs:
            _run(["apt-get", "download", package], cwd=CACHE)
            debs = sorted(CACHE.glob(f"{package}_*.deb"))
        if not debs:
            pytest.fail(f"apt-get download {package} produced no .deb in {CACHE}")
        staging = Path(tempfile.mkdtemp(prefix=f".{package}-", dir=CACHE))
        _run(["dpkg-deb", "-x", str(debs[-1]), str(staging)])
        if not list(staging.glob("boot/vmlinuz-*")):
            pytest.fail(f"{debs[-1]} contains no boot/vmlinuz-*")
        if extracted.exists():   # a tree without a kernel, left by an interrupted run
            shutil.rmtree(extracted)
        os.replace(staging, extracted)
        return sorted(extracted.glob("boot/vmlinuz-*"))[0]


def _newc_entry(name: str, data: bytes, mode: int, ino: int) -> bytes:
    """One "newc" cpio member (the initramfs format), 4-byte aligned."""
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
    header = b"070701" + b"".join(b"%08x" % f for f in fields)
    blob = header + name.encode() + b"\0"
    blob += bytes(-len(blob) % 4) + data
    return blob + bytes(-len(blob) % 4)


@pytest.fixture(scope="session")
def initrd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small, deterministic, valid newc initramfs (~200 KiB, not page sized)."""
    payload = b"".join(hashlib.sha256(b"initrd%d" % i).digest() for i in range(6000))
    archive = (_newc_entry("init", b"#!/bin/sh\necho hello from pykexec\n", 0o100755, 1)
               + _newc_entry("payload.bin", payload, 0o100644, 2)
               + _newc_entry("TRAILER!!!", b"", 0, 0))
    assert len(archive) % 4096  # exercise bufsz < memsz for the initrd
    path = tmp_path_factory.mktemp("initrd") / "initrd.img"
    path.write_bytes(archive)
    return path
