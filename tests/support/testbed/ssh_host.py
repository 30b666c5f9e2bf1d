"""An ssh target on the host, reachable by a guest only through the host's loopback.

:class:`HostSshd` runs the host's ``/usr/sbin/sshd`` (openssh-server, from
.ci/install-deps.sh) in the foreground, bound to 127.0.0.1 on a free port, with its own
host key, one authorized client key and its log in a temporary directory.  The guest gets a
QEMU user network with ``restrict=on`` (no way out of QEMU but the forwards named) and one
``guestfwd``: a TCP connection to :data:`GUEST_SSH_ADDRESS` port 22 spawns
``loopback_relay.py``, which joins it to the sshd on 127.0.0.1.  So every byte the guest
sends stays on the host's loopback, and sshd's log says each connection came from 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from support.testbed.cache import TestbedError

#: The address the guest connects to (inside QEMU's 10.0.2.0/24 user network).
GUEST_SSH_ADDRESS = "10.0.2.100"
#: The guest's network card, with a fixed MAC so that the crash kernel finds it by address.
GUEST_MAC = "52:54:00:12:34:56"
SSHD = "/usr/sbin/sshd"
_RELAY = Path(__file__).with_name("loopback_relay.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
                   check=True, capture_output=True)


class HostSshd:
    """``with HostSshd(directory) as sshd:`` an sshd for the guest's key; ``sshd.target_dir``
    is where the guest writes, ``sshd.client_key``/``host_key_line`` what the guest needs."""

    def __init__(self, directory: Path) -> None:
        if not os.access(SSHD, os.X_OK) or shutil.which("ssh-keygen") is None:
            raise TestbedError(f"{SSHD} or ssh-keygen missing; run .ci/install-deps.sh")
        self.directory = directory
        self.target_dir = directory / "crash"
        self.log_path = directory / "sshd.log"
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def client_key(self) -> bytes:
        return (self.directory / "client_key").read_bytes()

    def known_hosts_line(self) -> bytes:
        """The guest's known_hosts entry for the host, by the address the guest uses."""
        key_type, key = (self.directory / "host_key.pub").read_text().split()[:2]
        return f"{GUEST_SSH_ADDRESS} {key_type} {key}\n".encode()

    def __enter__(self) -> HostSshd:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.target_dir.mkdir(exist_ok=True)
        _keygen(self.directory / "host_key")
        _keygen(self.directory / "client_key")
        # Root's login is the guest's only power here: no pty, no forwarding of any kind.
        pub = (self.directory / "client_key.pub").read_text().strip()
        (self.directory / "authorized_keys").write_text(f"restrict {pub}\n")
        config = self.directory / "sshd_config"
        config.write_text(f"ListenAddress 127.0.0.1\nPort {self.port}\n"
                          f"HostKey {self.directory / 'host_key'}\n"
                          f"AuthorizedKeysFile {self.directory / 'authorized_keys'}\n"
                          "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                          "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n"
                          "LogLevel VERBOSE\n")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation directory
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise TestbedError(f"sshd did not start: {self.log_path.read_text()[-500:]}") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def qemu_args(self) -> list[str]:
        """The guest's network: QEMU's user network, restricted, with the one forward."""
        relay = f"cmd:{sys.executable} {_RELAY} 127.0.0.1 {self.port}"
        return ["-netdev", f"user,id=net0,restrict=on,guestfwd=tcp:{GUEST_SSH_ADDRESS}:22-{relay}",
                "-device", f"virtio-net-pci,netdev=net0,mac={GUEST_MAC}"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
