"""The fuzz tests reuse the unit tests' synthetic builders (synth_images, multiboot_synth,
vmcore_synth): put tests/unit on the path so they import by name, as there."""

from __future__ import annotations

import sys
from pathlib import Path

_UNIT = str(Path(__file__).resolve().parent.parent / "unit")
if _UNIT not in sys.path:
    sys.path.insert(0, _UNIT)
