"""Stand-ins for the kdump service's unit tests: the library's kexec calls as a kernel
holding one crash kernel, and a system root with what the service reads."""

from __future__ import annotations

import os
from pathlib import Path

from pykexec.errors import KexecError
from pykexec.kdump.config import KdumpConfig
from pykexec.kdump.paths import Paths
from pykexec.request import KexecRequest

from support.synth_images import make_bzimage

RELEASE = os.uname().release
RESERVED = 256 << 20


class FakeKexec:
    """pykexec.kexec's load/unload/status (install with :meth:`install`): records the
    requests; ``fail`` makes the next loads raise it, the previous crash kernel gone."""

    def __init__(self) -> None:
        self.loaded = False
        self.loads: list[KexecRequest] = []
        self.unloads = 0
        self.fail: KexecError | None = None

    def install(self, monkeypatch: object) -> FakeKexec:
        from pykexec import kexec

        for name in ("status", "load", "unload"):
            monkeypatch.setattr(kexec, name, getattr(self, name))  # type: ignore[attr-defined]
        return self

    def status(self, crash: bool = False) -> bool:
        assert crash
        return self.loaded

    def load(self, request: KexecRequest, machine: object = None, **kwargs: object) -> None:
        if self.fail is not None:
            self.loaded = False
            raise self.fail
        self.loads.append(request)
        self.loaded = True

    def unload(self, crash: bool = False, syscall: str = "auto") -> None:
        assert crash
        self.unloads += 1
        self.loaded = False


def kdump_root(root: Path, monkeypatch: object) -> Paths:
    """A root with the running release's kernel, a boot id, a command line, a 256 MiB
    reservation; the crash initramfs builder replaced by one writing a small file."""
    paths = Paths(root)
    paths.boot.mkdir(parents=True)
    paths.kernel(RELEASE).write_bytes(make_bzimage())
    (paths.proc / "sys/kernel/random").mkdir(parents=True)
    (paths.proc / "sys/kernel/random/boot_id").write_text("boot-1\n")
    (paths.proc / "cmdline").write_text("root=/dev/vda1 ro crashkernel=256M\n")
    (paths.sys / "kernel").mkdir(parents=True)
    (paths.sys / "kernel/kexec_crash_size").write_text(f"{RESERVED}\n")

    def build(config: KdumpConfig, paths: Paths) -> Path:
        paths.state_dir.mkdir(parents=True, exist_ok=True)
        paths.initramfs.write_bytes(f"initramfs {config.dump_level}".encode())
        return paths.initramfs

    monkeypatch.setattr("pykexec.kdump.initramfs.build", build)  # type: ignore[attr-defined]
    return paths
