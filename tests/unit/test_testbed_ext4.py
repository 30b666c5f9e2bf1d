"""The Debian test bed's host-side pieces that need no QEMU: files written to and read back from
a raw ext4 image with debugfs (support/testbed/ext4.py), a dirty journal replayed first, and the
apt sources mmdebstrap is given (support/testbed/debian.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from support.testbed.cache import TestbedError
from support.testbed.debian import debian_sources
from support.testbed.ext4 import copy_image, make_image

pytestmark = pytest.mark.skipif(shutil.which("debugfs") is None or shutil.which("mkfs.ext4") is None,
                                reason="e2fsprogs not installed")


def small_image(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("testbed\n")
    (tree / "etc" / "link").symlink_to("hostname")
    make_image(tmp_path / "disk.img", tree, size_bytes=32 << 20, label="t")
    return tmp_path / "disk.img"


def test_write_read_list_and_tree(tmp_path: Path) -> None:
    image = copy_image(small_image(tmp_path), tmp_path / "copy.img")
    assert image.read_text("/etc/hostname") == "testbed\n"
    step = b"#!/bin/sh\necho hi\n"
    image.write_files([("/var/lib/testbed/step.sh", step, 0o755),
                       ("/etc/hostname", b"other\n", 0o644)])
    assert image.read_text("/etc/hostname") == "other\n"
    entries = {e.name: e for e in image.listdir("/var/lib/testbed")}
    assert entries["step.sh"].mode == 0o100755 and entries["step.sh"].size == len(step)
    assert image.listdir("/var/lib") and image.listdir("/var")[0].is_dir

    layer = tmp_path / "layer"
    (layer / "usr" / "local" / "bin").mkdir(parents=True)
    (layer / "usr" / "local" / "bin" / "tool").write_bytes(b"\x7fELF" + bytes(range(256)) * 64)
    (layer / "etc" / "wants").mkdir(parents=True)
    (layer / "etc" / "wants" / "unit").symlink_to("/etc/unit")
    image.add_tree(layer, "/")
    image.add_tree(layer, "/")  # again: files replaced, directories kept
    assert image.read_bytes("/usr/local/bin/tool") == (layer / "usr" / "local" / "bin" / "tool").read_bytes()
    out = image.copy_tree_out("/etc", tmp_path / "out")
    assert (out / "wants" / "unit").readlink() == Path("/etc/unit")
    assert (out / "link").readlink() == Path("hostname")
    assert image.exists("/etc/link") and not image.exists("/etc/missing")
    with pytest.raises(TestbedError):
        image.read_bytes("/etc/missing")
    image.fsck()


def test_dirty_journal_is_replayed_before_reading(tmp_path: Path) -> None:
    image = copy_image(small_image(tmp_path), tmp_path / "copy.img")
    # Mark the filesystem as a crashed guest leaves it: needs_recovery set.
    subprocess.run(["debugfs", "-w", "-R", "feature needs_recovery", str(image.path)],
                   check=True, capture_output=True)
    assert image.replay_journal() is True
    assert image.replay_journal() is False
    assert image.read_text("/etc/hostname") == "testbed\n"


def test_debian_sources_keep_the_suites_of_debian_only(tmp_path: Path) -> None:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list").write_text("deb [arch=amd64] http://mirror.invalid/debian bookworm main contrib\n"
                                      "# deb http://commented.invalid/debian bookworm main\n"
                                      "deb-src http://mirror.invalid/debian bookworm main\n")
    (apt / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://security.invalid/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://disabled.invalid/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n")
    (apt / "sources.list.d" / "other.list").write_text("deb https://vendor.invalid/apt vendor-bookworm main\n")
    assert debian_sources("bookworm", apt) == [
        "deb http://mirror.invalid/debian bookworm main contrib",
        "deb http://mirror.invalid/debian bookworm main",
        "deb http://mirror.invalid/debian bookworm-updates main",
        "deb http://security.invalid/debian-security bookworm-security main",
    ]
    (apt / "sources.list").write_text("")
    (apt / "sources.list.d" / "debian.sources").write_text("")
    with pytest.raises(TestbedError):
        debian_sources("bookworm", apt)
