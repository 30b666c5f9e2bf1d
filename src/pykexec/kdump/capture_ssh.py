"""The capture's ssh target: bring up the interface that reaches the host (the
crash kernel has no DHCP client or ``ip``: ioctls, with the address the running
system had), then write the crash directory on the host through ``ssh``, each
file as ``cat > NAME.part && mv NAME.part NAME`` so that no half file has its
final name.

The dump goes as it is made, in makedumpfile's flattened format (``vmcore save``
to the pipe of ``ssh HOST 'cat > DIR/vmcore.flat.part'``), and is renamed
``vmcore.flat`` once the capture knows it complete: the host needs nothing but a
shell and ``cat``.  ``pykexec vmcore``, ``pykexec kdump list/show`` and crash read
the stream as it is; ``pykexec vmcore reassemble`` or ``makedumpfile -R`` rebuild
the kdump-compressed file from it.  Order on the host: the log (and Xen's), a
record saying the capture has not finished, the dump, the final record.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import socket
import struct
import time

from pykexec.kdump import capture_plan as CP

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pykexec.kdump.capture import Capture, CrashDump

SSH = "/usr/bin/ssh"
KNOWN_HOSTS = "/root/.ssh/known_hosts"
SIOCSIFFLAGS, SIOCSIFADDR, SIOCSIFNETMASK, SIOCADDRT = 0x8914, 0x8916, 0x891C, 0x890B
IFF_UP, IFF_RUNNING = 0x1, 0x40
RTF_UP, RTF_GATEWAY = 0x1, 0x2


class _SockaddrIn(ctypes.Structure):
    _fields_ = [("family", ctypes.c_uint16), ("port", ctypes.c_uint16), ("addr", ctypes.c_uint8 * 4),
                ("zero", ctypes.c_uint8 * 8)]


class _RtEntry(ctypes.Structure):
    """``struct rtentry`` (<net/route.h>), for SIOCADDRT."""

    _fields_ = [("pad1", ctypes.c_ulong), ("dst", _SockaddrIn), ("gateway", _SockaddrIn),
                ("genmask", _SockaddrIn), ("flags", ctypes.c_ushort), ("pad2", ctypes.c_short),
                ("pad3", ctypes.c_ulong), ("pad4", ctypes.c_void_p), ("metric", ctypes.c_short),
                ("dev", ctypes.c_char_p), ("mtu", ctypes.c_ulong), ("window", ctypes.c_ulong),
                ("irtt", ctypes.c_ushort)]


def _sockaddr(address: str) -> _SockaddrIn:
    sa = _SockaddrIn()
    sa.family = socket.AF_INET
    sa.addr[:] = list(socket.inet_aton(address))
    return sa


def _ifreq(name: str, payload: bytes) -> bytes:
    return struct.pack("16s", name.encode()[:15]) + payload.ljust(24, b"\0")


def interface_by_mac(capture: Capture, mac: str) -> str:
    """The name of the interface with ``mac``, waiting for its driver."""
    net = capture.path("/sys/class/net")
    deadline = time.monotonic() + capture.plan.wait_seconds
    while True:
        for name in sorted(os.listdir(net)) if os.path.isdir(net) else []:
            try:
                with open(os.path.join(net, name, "address")) as f:
                    if f.read().strip().lower() == mac.lower():
                        return name
            except OSError:
                continue
        if time.monotonic() > deadline:
            raise FileNotFoundError(f"no network interface with MAC {mac} after {capture.plan.wait_seconds:.0f} s")
        time.sleep(0.2)


def bring_up(name: str, network: CP.Network) -> None:
    """Address, netmask, up, and the default route through the gateway (if any)."""
    import fcntl

    mask = socket.inet_ntoa(((1 << 32) - (1 << (32 - network.prefix))).to_bytes(4, "big"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for request, address in ((SIOCSIFADDR, network.address), (SIOCSIFNETMASK, mask)):
            fcntl.ioctl(sock.fileno(), request, _ifreq(name, bytes(_sockaddr(address))))
        for interface in ("lo", name):
            fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, _ifreq(interface, struct.pack("h", IFF_UP | IFF_RUNNING)))
        if network.gateway:
            route = _RtEntry()
            route.dst, route.genmask = _sockaddr("0.0.0.0"), _sockaddr("0.0.0.0")
            route.gateway = _sockaddr(network.gateway)
            route.flags = RTF_UP | RTF_GATEWAY
            fcntl.ioctl(sock.fileno(), SIOCADDRT, bytes(route))


class SshTarget:
    """``ssh`` to the configured host, by the address found when the initramfs was built."""

    def __init__(self, capture: Capture) -> None:
        target = capture.config.parsed_target
        assert capture.plan.network is not None, "an ssh target's plan names its network"
        self.capture = capture
        self.directory = target.path
        # A link that dies ends ssh (and the dump's writes) within a minute.
        self.options = ["-i", capture.path(CP.SSH_KEY_PATH), "-o", "BatchMode=yes", "-o", "ConnectTimeout=30",
                        "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
        if os.path.exists(capture.path(KNOWN_HOSTS)):
            self.options += ["-o", "StrictHostKeyChecking=yes", "-o", f"HostKeyAlias={target.host}"]
        else:  # nobody can answer a question in the crash kernel
            self.options += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        if target.port:
            self.options += ["-p", str(target.port)]
        host = capture.plan.network.host_ip or target.host
        self.destination = f"{target.user}@{host}" if target.user else host

    def argv(self, command: str) -> list[str]:
        return [self.capture.path(SSH), *self.options, self.destination, command]

    def failed(self, command: str, status: int, stderr: bytes) -> OSError:
        return OSError(f"ssh {self.destination} {command!r}: exit {status}: "
                       f"{stderr.decode(errors='replace').strip()[-200:]}")

    def run(self, command: str, data: bytes = b"") -> None:
        import subprocess

        res = subprocess.run(self.argv(command), input=data, capture_output=True, timeout=600)
        if res.returncode != 0:
            raise self.failed(command, res.returncode, res.stderr)

    def stream_dump(self, path: str) -> tuple[bool, int | None]:
        """The dump, flattened, into ``path`` on the host: (complete, bytes sent).  ssh
        reads the pipe as ``vmcore save`` writes it; its few lines of stderr are read
        once the pipe is closed."""
        import subprocess

        command = f"cat > {shlex.quote(path)}"
        read_end, write_end = os.pipe()
        try:
            proc = subprocess.Popen(self.argv(command), stdin=read_end, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
        finally:
            os.close(read_end)
        try:
            saved = self.capture.step("stream the dump",
                                      lambda: self.capture.save_dump(write_end, name=f"{self.destination}:{path}"))
        finally:
            os.close(write_end)  # end of file for cat
            _, stderr = proc.communicate()
        if proc.returncode != 0:
            self.capture.errors.append(str(self.failed(command, proc.returncode, stderr)))
            return False, saved[1] if saved is not None else None
        return saved if saved is not None else (False, None)

    def put(self, path: str, data: bytes) -> None:
        quoted = shlex.quote(path)
        self.run(f"cat > {quoted}.part && mv {quoted}.part {quoted}", data)

    def rename(self, path: str, new_path: str) -> bool:
        self.run(f"mv {shlex.quote(path)} {shlex.quote(new_path)}")
        return True


def save_over_ssh(capture: Capture, dump: CrashDump) -> None:
    """The crash directory on the ssh host: logs, provisional record, dump, final record."""
    from dataclasses import replace
    from datetime import datetime, timezone

    from pykexec.kdump import records as R

    network = capture.plan.network
    assert network is not None, "an ssh target's plan names its network"
    name = interface_by_mac(capture, network.mac)
    bring_up(name, network)
    capture.console.say(f"network {name} up: {network.address}/{network.prefix}"
                        + (f" via {network.gateway}" if network.gateway else ""))
    ssh = SshTarget(capture)
    when = datetime.fromtimestamp(dump.crash_time, timezone.utc)
    directory = f"{ssh.directory.rstrip('/')}/{R.crash_dir_name(dump.release, when)}"
    ssh.run(f"mkdir -p {shlex.quote(directory)}")
    logs = [(R.LOG_FILE, dump.log)] + ([(R.XEN_LOG_FILE, dump.xen_log)] if dump.xen_log is not None else [])
    for name, text in logs:
        ssh.put(f"{directory}/{name}", text)
        capture.console.say(f"log saved: {ssh.destination}:{directory}/{name} ({len(text)} bytes)")
    record = capture.record(dump, os.path.basename(directory), log=R.LOG_FILE,
                            xen_log=R.XEN_LOG_FILE if dump.xen_log is not None else None, error=R.NOT_FINISHED)
    ssh.put(f"{directory}/{R.RECORD_FILE}", record.to_json().encode())
    part = f"{directory}/{R.FLAT_DUMP_FILE}{R.PART_SUFFIX}"
    complete, size = ssh.stream_dump(part)
    if complete:  # a partial stream keeps its .part name
        complete = capture.step("name the dump", ssh.rename, part, f"{directory}/{R.FLAT_DUMP_FILE}") is True
    name = R.FLAT_DUMP_FILE if complete else R.FLAT_DUMP_FILE + R.PART_SUFFIX
    final = replace(record, complete=complete, dump=name, dump_bytes=size,
                    capture_seconds=round(time.monotonic() - capture.started, 3),
                    error="; ".join(capture.errors) or None)
    ssh.put(f"{directory}/{R.RECORD_FILE}", final.to_json().encode())
    capture.console.say(f"record written: {ssh.destination}:{directory}/{R.RECORD_FILE} "
                        f"(complete: {str(complete).lower()})")
