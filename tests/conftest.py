"""Suite-wide: with pytest-xdist's workers (scripts/test.sh runs two, one per core), the
longest tests are handed out first, so that neither worker ends with a several-minute
boot alone while the other idles."""

from __future__ import annotations

import pytest


def _order(item: pytest.Item) -> int:
    """Several-minute Debian/Xen boots (``slow``), then the other QEMU tests, then the rest."""
    if item.get_closest_marker("slow"):
        return 0
    if item.get_closest_marker("vm") or "/tests/vm/" in str(item.path):
        return 1
    return 2


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Collection runs in each worker (which has workerinput; its -n option is not set); the
    # controller hands tests out in the order the workers collected them.
    if hasattr(config, "workerinput"):
        items.sort(key=_order)  # stable: file order within each class
