"""Fixtures for the QEMU end-to-end tests (see support/testbed).

VM tests carry the ``vm`` marker; deselect them locally with ``-m "not vm"``.
When ``CI`` is set, missing QEMU or assets make them fail, never skip.
Otherwise they skip with the reason.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from support.testbed.assets import Assets
from support.testbed.cache import TestbedError


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"VM test bed unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"VM test bed unavailable: {reason} (run .ci/install-deps.sh)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test in this directory boots QEMU: mark them so -m "not vm" works.
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.vm)


@pytest.fixture(scope="session")
def assets() -> Iterator[Assets]:
    """Fetched kernels and guest packages; prebuilt busybox/python/kexec-tools/pykexec layers."""
    if shutil.which("qemu-system-x86_64") is None:
        _unavailable("qemu-system-x86_64 not installed")
    try:
        a = Assets()
        a.fetch_all()
        a.python_segment()
        a.kexec_tools_segment()
        a.second_initrd()
    except TestbedError as e:
        _unavailable(str(e))
    yield a


@pytest.fixture(scope="session")
def pykexec_assets(assets: Assets) -> Assets:
    """``assets`` with the pykexec layer built (pip install of the working tree)."""
    try:
        assets.pykexec_segment()
    except TestbedError as e:
        _unavailable(f"cannot install pykexec into the guest: {e}")
    return assets


@pytest.fixture
def vm_log_dir(request: pytest.FixtureRequest, assets: Assets) -> Path:
    """A per-test directory for console logs (kept after the run for debugging)."""
    d = assets.cache / "logs" / request.node.name.replace("/", "_")
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module", params=["6.1", "6.12"])
def vmcore(request: pytest.FixtureRequest, assets: Assets) -> tuple[str, Path]:
    """(kernel flavour, path) of a real crash dump of that guest, made once and cached."""
    from support.vmcore_fixture import real_vmcore

    try:
        return request.param, real_vmcore(assets, request.param)
    except TestbedError as err:
        pytest.fail(f"could not make a real vmcore: {err}")
