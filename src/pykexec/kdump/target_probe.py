"""Where the dump target lives on the running system, read when the crash initramfs
is built: the file system holding a target directory (``/proc/self/mountinfo``),
its block device, and the drivers on the way to it (``/sys``: each device's bound
driver, up to the bus, and the kernel module providing it); for ssh targets, the
network interface that reaches the host.  The crash kernel gets these as facts
(:mod:`pykexec.kdump.capture_plan`): it has no udev to discover them.
"""

from __future__ import annotations

import os
from pathlib import Path

from pykexec.errors import InputError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pykexec.kdump.paths import Paths


class Mount:
    """One line of ``/proc/self/mountinfo``."""

    def __init__(self, line: str) -> None:
        fields = line.split()
        dash = fields.index("-")
        self.major, self.minor = (int(n) for n in fields[2].split(":"))
        self.root = _unescape(fields[3])
        self.mount_point = _unescape(fields[4])
        self.fstype = fields[dash + 1]
        self.source = _unescape(fields[dash + 2])
        self.options = fields[dash + 3] if len(fields) > dash + 3 else ""


def _unescape(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code in ("040", "011", "012", "134"):
        text = text.replace("\\" + code, chr(int(code, 8)))
    return text


def mount_of(directory: str, paths: Paths) -> tuple[Mount, str]:
    """The mount holding ``directory`` (its nearest existing ancestor if it is not there
    yet), and the directory's path inside that file system (from its root)."""
    existing = Path(directory)
    while not paths.under(existing).exists() and existing != existing.parent:
        existing = existing.parent
    real = os.path.realpath(paths.under(existing))
    root = os.path.realpath(paths.root)
    if root != "/" and (real + "/").startswith(root + "/"):
        real = "/" + os.path.relpath(real, root)  # the path the system under the root sees
    real = os.path.normpath(os.path.join(real, os.path.relpath(directory, existing)))
    try:
        lines = (paths.proc / "self" / "mountinfo").read_text().splitlines()
    except OSError as err:
        raise InputError(f"cannot read the mounts ({err.strerror})") from None
    best: Mount | None = None
    for line in lines:
        mount = Mount(line)
        inside = real == mount.mount_point or real.startswith(mount.mount_point.rstrip("/") + "/")
        if inside and (best is None or len(mount.mount_point) >= len(best.mount_point)):
            best = mount  # the last of equal mount points is the one on top
    if best is None:
        raise InputError(f"no mount holds {directory}")
    rest = os.path.relpath(real, best.mount_point)
    return best, os.path.normpath(os.path.join(best.root, rest if rest != "." else ""))


def block_device_dir(major: int, minor: int, paths: Paths) -> Path:
    """The sysfs directory of block device ``major:minor`` (its disk's, for a partition).
    :class:`InputError` for stacked devices (device-mapper, md), which the crash
    initramfs cannot assemble."""
    link = paths.sys / "dev" / "block" / f"{major}:{minor}"
    if not link.exists():
        raise InputError(f"block device {major}:{minor} is not in {link.parent}: the target is not on a disk")
    node = Path(os.path.realpath(link))
    if (node / "dm").exists() or (node / "md").exists() or any((node / "slaves").glob("*")):
        raise InputError(f"the target is on {node.name}, a device-mapper or md device: the crash "
                         "initramfs reaches plain disks and partitions only (use a directory on one, "
                         "or an ssh target)")
    return node.parent if (node / "partition").exists() else node


def driver_modules(device: Path) -> list[str]:
    """The modules of the drivers bound to ``device`` and its ancestors (the disk's
    driver, its controller's, the bus's), nearest first; built-in drivers have none."""
    found: list[str] = []
    node = Path(os.path.realpath(device))
    while node.name and node.name != "devices":
        module = node / "driver" / "module"
        if module.exists():
            name = os.path.basename(os.path.realpath(module))
            if name not in found:
                found.append(name)
        node = node.parent
    return found


def disk_modules(disk: Path) -> list[str]:
    """The modules a disk (its sysfs directory) needs."""
    device = disk / "device"
    return driver_modules(device) if device.exists() else []


class Interface:
    """The network interface that reaches an ssh host, as the crash kernel must set it up."""

    def __init__(self, name: str, mac: str, address: str, prefix: int, gateway: str) -> None:
        self.name, self.mac, self.address, self.prefix, self.gateway = name, mac, address, prefix, gateway


def _hex_ip(text: str) -> int:
    """An address of ``/proc/net/route`` (the bytes in network order, printed as a
    little-endian number) as a number whose big-endian bytes are the address."""
    return int.from_bytes(bytes.fromhex(text), "little")


def _dotted(value: int) -> str:
    return ".".join(str(b) for b in value.to_bytes(4, "big"))


def route_to(host_ip: str, paths: Paths) -> tuple[str, str]:
    """The interface and gateway ("" for none) the routing table picks for ``host_ip``."""
    target = int.from_bytes(bytes(int(p) for p in host_ip.split(".")), "big")
    best: tuple[int, str, str] | None = None
    try:
        lines = (paths.proc / "net" / "route").read_text().splitlines()[1:]
    except OSError as err:
        raise InputError(f"cannot read the routing table ({err.strerror})") from None
    for line in lines:
        f = line.split()
        dest, gateway, mask = (_hex_ip(x) for x in (f[1], f[2], f[7]))
        if target & mask == dest and (best is None or mask.bit_count() > best[0]):
            best = (mask.bit_count(), f[0], _dotted(gateway) if gateway else "")
    if best is None:
        raise InputError(f"no route to {host_ip}")
    return best[1], best[2]


def interface_address(name: str) -> tuple[str, int]:
    """The IPv4 address and prefix length of interface ``name`` (SIOCGIFADDR/SIOCGIFNETMASK)."""
    import fcntl
    import socket
    import struct

    request = struct.pack("16s16x", name.encode()[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            addr = fcntl.ioctl(sock.fileno(), 0x8915, request)[20:24]  # SIOCGIFADDR
            mask = fcntl.ioctl(sock.fileno(), 0x891B, request)[20:24]  # SIOCGIFNETMASK
        except OSError as err:
            raise InputError(f"interface {name} has no IPv4 address ({err.strerror})") from None
    return socket.inet_ntoa(addr), int.from_bytes(mask, "big").bit_count()


def interface_to(host_ip: str, paths: Paths) -> Interface:
    """The interface that reaches ``host_ip``, with its address, MAC and gateway."""
    name, gateway = route_to(host_ip, paths)
    address, prefix = interface_address(name)
    try:
        mac = (paths.sys / "class" / "net" / name / "address").read_text().strip()
    except OSError:
        raise InputError(f"interface {name} has no MAC address in {paths.sys}") from None
    return Interface(name, mac, address, prefix, gateway)
