"""What the crash initramfs tells its capture about the system that crashed:
facts only the running system knows (which modules reach the target, the
target's device and file system, the interface to an ssh host), found when the
initramfs is built (:mod:`pykexec.kdump.initramfs`) and read by the capture
(:mod:`pykexec.kdump.capture`) from :data:`PLAN_PATH`.  The configuration itself
travels beside it, as ``/etc/pykexec/kdump.toml``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

#: Where the initramfs holds the plan, its modules and the Python packages it runs.
PLAN_PATH = "/kdump/capture.json"
MODULE_DIR = "/kdump/modules"
PYTHON_DIR = "/kdump/python"
SSH_KEY_PATH = "/kdump/ssh_key"
#: Where the capture mounts the target's file system.
MOUNT_POINT = "/mnt/target"


@dataclass(frozen=True)
class Device:
    """A block device as the running system names it; ``uuid`` identifies its file
    system (None when unreadable: the capture then goes by ``name``)."""

    name: str
    major: int
    minor: int
    fstype: str = ""
    uuid: str | None = None
    options: str = ""
    #: the target directory inside the file system (from its root)
    path: str = "/"


@dataclass(frozen=True)
class Network:
    """The interface that reaches the ssh host (found by MAC: its name may differ in
    the crash kernel), its IPv4 address and the gateway ("" when on the same link)."""

    mac: str
    address: str
    prefix: int
    gateway: str = ""
    host_ip: str = ""


@dataclass(frozen=True)
class CapturePlan:
    """``modules``: module names in load order (``MODULE_DIR/<name>.ko``)."""

    release: str
    target_kind: str
    modules: list[str] = field(default_factory=list)
    device: Device | None = None
    network: Network | None = None
    #: How long the capture waits for the target's device or interface to appear.
    wait_seconds: float = 60.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> CapturePlan:
        data = json.loads(text)
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if values.get("device") is not None:
            values["device"] = Device(**values["device"])
        if values.get("network") is not None:
            values["network"] = Network(**values["network"])
        return cls(**values)
