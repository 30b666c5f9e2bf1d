"""pytest fixtures for the Debian test bed (support/testbed/debian.py).

A test module imports the fixtures it uses (``from support.debian_fixtures import
debian_disk``).  As in tests/vm/conftest.py: when ``CI`` is set, a test bed that cannot be
built makes the test fail, never skip; elsewhere it skips with the reason.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from support.testbed.cache import TestbedError
from support.testbed.debian import DebianDisk, DebianTestbed


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"Debian test bed unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"Debian test bed unavailable: {reason} (run .ci/install-deps.sh)")


@pytest.fixture(scope="session")
def debian_testbed() -> DebianTestbed:
    """The cached Debian base (built on first use, about a minute) and the guest layer of
    this checkout."""
    if shutil.which("qemu-system-x86_64") is None:
        _unavailable("qemu-system-x86_64 not installed")
    bed = DebianTestbed()
    try:
        bed.base()
        bed.guest_layer()
    except TestbedError as err:
        _unavailable(str(err))
    return bed


@pytest.fixture
def debian_disk(debian_testbed: DebianTestbed, tmp_path: Path) -> DebianDisk:
    """A fresh disk for this test (its console logs are written beside it, in tmp_path)."""
    try:
        return debian_testbed.new_disk(tmp_path / "disk.img")
    except TestbedError as err:
        pytest.fail(f"cannot make a Debian disk: {err}", pytrace=False)
