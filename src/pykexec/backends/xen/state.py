"""The record of our Xen loads and unloads, because Xen's own answer cannot be trusted.

``KEXEC_CMD_kexec_status`` is broken in Xen 4.9 to at least 4.22: it returns the parity
of load/unload operations on that slot, not whether an image is loaded (load -> 1,
load+load -> 0, load+unload -> 0, unload of nothing -> 1). Each successful load and
unload is therefore recorded in ``/run/pykexec/xen-<type>.loaded``, tagged with the boot
id; :meth:`pykexec.backends.xen.kexec_op.XenKexec.is_loaded` answers from that record,
falling back to Xen's status only when no record exists (e.g. the image was loaded by
another tool).
"""

from __future__ import annotations

import os

from pykexec.backends import read_stripped
from pykexec.backends.xen.rules import type_name

STATE_DIR = "/run/pykexec"
BOOT_ID = "/proc/sys/kernel/random/boot_id"


def _boot_id() -> str:
    return read_stripped(BOOT_ID) or "unknown"


def state_path(type_: int, state_dir: str = STATE_DIR) -> str:
    """The file recording whether an image of ``type_`` is loaded: ``xen-<type>.loaded``."""
    return os.path.join(state_dir, f"xen-{type_name(type_).replace(' ', '-')}.loaded")


def record_state(type_: int, loaded: bool, state_dir: str = STATE_DIR) -> None:
    """Remember a successful load (True) or unload (False) of ``type_`` for this boot.

    The file holds the boot id, so a record from before a reboot (or a kexec into a new
    system) is never believed. Failing to write it is not fatal: the load happened.
    """
    path = state_path(type_, state_dir)
    try:
        os.makedirs(state_dir, mode=0o755, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{_boot_id()} {1 if loaded else 0}\n")
        os.replace(tmp, path)
    except OSError:
        pass


def recorded_state(type_: int, state_dir: str = STATE_DIR) -> bool | None:
    """What :func:`record_state` last said this boot: True/False, None if nothing known."""
    text = read_stripped(state_path(type_, state_dir))
    if not text:
        return None
    parts = text.split()
    if len(parts) != 2 or parts[0] != _boot_id() or parts[1] not in ("0", "1"):
        return None
    return parts[1] == "1"
