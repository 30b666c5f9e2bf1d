"""Fixtures for the unit tests (the builders are in synth_images.py: a module named
conftest is ambiguous, tests/vm has one too)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.synth_images import MACHINE_1G, make_bzimage


@pytest.fixture
def machine_file(tmp_path: Path) -> Path:
    path = tmp_path / "machine.json"
    path.write_text(json.dumps(MACHINE_1G))
    return path


@pytest.fixture
def bzimage_file(tmp_path: Path) -> Path:
    path = tmp_path / "bzImage"
    path.write_bytes(make_bzimage())
    return path
