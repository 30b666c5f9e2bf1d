"""Every path the kdump service uses, in one place, under one root.

``Paths()`` is the running system's; ``Paths("/tmp/x")`` puts every one of them under
``/tmp/x`` (the unit tests', and ``pykexec kdump --root DIR``'s, a hidden option for
tests only).  The kernel's own interfaces (``/proc``, ``/sys``) move with the root
too, so that a test can fake ``/proc/sysrq-trigger``; the library calls the service
makes (:mod:`pykexec.kexec`, :mod:`pykexec.probe`) always act on the running system.
"""

from __future__ import annotations

import os
from pathlib import Path

CONFIG = "/etc/pykexec/kdump.toml"
STATE_DIR = "/var/lib/pykexec/kdump"
UNIT_NAME = "pykexec-kdump.service"
UNIT_DIR = "/etc/systemd/system"


class Paths:
    """The service's files under ``root`` ("/" for the running system)."""

    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        self.root = Path(root)

    def under(self, path: str | os.PathLike[str]) -> Path:
        """``path`` (absolute, on the running system) under this root."""
        return self.root / os.fspath(path).lstrip("/")

    @property
    def config(self) -> Path:
        """The configuration file (TOML)."""
        return self.under(CONFIG)

    @property
    def state_dir(self) -> Path:
        """What the service keeps between runs: the load stamp, the crash initramfs."""
        return self.under(STATE_DIR)

    @property
    def stamp(self) -> Path:
        """Digests of what the loaded crash kernel was made of (see :mod:`pykexec.kdump.service`)."""
        return self.state_dir / "loaded.json"

    @property
    def initramfs(self) -> Path:
        """The crash initramfs pykexec builds (:func:`pykexec.kdump.initramfs.build`)."""
        return self.state_dir / "initramfs.img"

    @property
    def unit_file(self) -> Path:
        return self.under(UNIT_DIR) / UNIT_NAME

    @property
    def boot(self) -> Path:
        return self.under("/boot")

    @property
    def modules(self) -> Path:
        """``/lib/modules``: a release's modules are in ``modules / release``."""
        return self.under("/lib/modules")

    @property
    def proc(self) -> Path:
        return self.under("/proc")

    @property
    def sys(self) -> Path:
        return self.under("/sys")

    def kernel(self, release: str) -> Path:
        """The installed kernel of ``release`` (Debian's, Fedora's and SUSE's name)."""
        return self.boot / f"vmlinuz-{release}"

    def __repr__(self) -> str:
        return f"Paths({str(self.root)!r})"
