"""The kdump service's set-up of a Xen dom0 (pykexec.kdump.xen_dom0) on a temporary root,
with a recorded runner standing for modprobe and mount."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pykexec.errors import KexecError
from pykexec.kdump import xen_dom0
from pykexec.kdump.paths import Paths


class Runner:
    """modprobe makes /dev/xen/privcmd appear; mount makes /proc/xen/capabilities appear
    (unless ``mount_works`` is False); ``fail`` makes the command named fail."""

    def __init__(self, paths: Paths, *, fail: str | None = None, mount_works: bool = True) -> None:
        self.paths, self.fail, self.mount_works = paths, fail, mount_works
        self.calls: list[list[str]] = []

    def __call__(self, cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        self.calls.append(cmd)
        if cmd[0] == self.fail:
            return subprocess.CompletedProcess(cmd, 1, "", f"{cmd[0]}: it went wrong\n")
        if cmd[0] == "modprobe":
            self.paths.under(xen_dom0.PRIVCMD).parent.mkdir(parents=True, exist_ok=True)
            self.paths.under(xen_dom0.PRIVCMD).touch()
        elif cmd[0] == "mount" and self.mount_works:
            (self.paths.proc / "xen/capabilities").write_text("control_d\n")
        return subprocess.CompletedProcess(cmd, 0, "", "")


def xen_root(tmp_path: Path, *, hypervisor: str | None = "xen", proc_xen: bool = True) -> Paths:
    paths = Paths(tmp_path)
    (paths.sys / "hypervisor").mkdir(parents=True)
    if hypervisor is not None:
        (paths.sys / "hypervisor/type").write_text(hypervisor + "\n")
    paths.proc.mkdir()
    if proc_xen:
        (paths.proc / "xen").mkdir()
    return paths


def test_not_xen_does_nothing(tmp_path: Path) -> None:
    for hypervisor in (None, "kvm"):
        paths = xen_root(tmp_path / str(hypervisor), hypervisor=hypervisor)
        run = Runner(paths)
        assert xen_dom0.prepare(paths, run) == [] and run.calls == []


def test_loads_the_modules_and_mounts_xenfs(tmp_path: Path) -> None:
    paths = xen_root(tmp_path)
    run = Runner(paths)
    assert xen_dom0.prepare(paths, run) == ["loaded xenfs, xen-privcmd", f"mounted xenfs on {paths.proc / 'xen'}"]
    assert run.calls == [["modprobe", "-a", "xenfs", "xen-privcmd"],
                         ["mount", "-t", "xenfs", "xenfs", str(paths.proc / "xen")]]
    # All there now: nothing more to do.
    again = Runner(paths)
    assert xen_dom0.prepare(paths, again) == [] and again.calls == []


def test_xenfs_mounted_but_privcmd_missing(tmp_path: Path) -> None:
    paths = xen_root(tmp_path)
    (paths.proc / "xen/capabilities").write_text("control_d\n")
    run = Runner(paths)
    assert xen_dom0.prepare(paths, run) == ["loaded xenfs, xen-privcmd"]
    assert [c[0] for c in run.calls] == ["modprobe"]


@pytest.mark.parametrize("runner, proc_xen, message", [
    (lambda p: Runner(p, fail="modprobe"), True, "modprobe -a xenfs xen-privcmd failed: modprobe: it went wrong"),
    (lambda p: Runner(p, fail="mount"), True, "mount -t xenfs xenfs {xen} failed: mount: it went wrong"),
    (lambda p: Runner(p, mount_works=False), True, "xenfs mounted on {xen} but {xen}/capabilities is missing"),
    (Runner, False, "{xen} is missing: this kernel has no Xen support in /proc (a PV dom0 needs XEN_DOM0)"),
])
def test_failures_are_one_line(tmp_path: Path, runner: object, proc_xen: bool, message: str) -> None:
    paths = xen_root(tmp_path, proc_xen=proc_xen)
    with pytest.raises(KexecError) as err:
        xen_dom0.prepare(paths, runner(paths))  # type: ignore[operator]
    assert str(err.value) == message.format(xen=paths.proc / "xen")


def test_missing_or_hung_tools(tmp_path: Path) -> None:
    paths = xen_root(tmp_path)

    def missing(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(cmd[0])

    def hung(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(cmd, 60)

    with pytest.raises(KexecError, match="^modprobe not found: cannot set up Xen's dom0 interfaces$"):
        xen_dom0.prepare(paths, missing)
    with pytest.raises(KexecError, match=r"^modprobe -a xenfs xen-privcmd did not finish in 60 s$"):
        xen_dom0.prepare(paths, hung)


# -- the service in a dom0 ---------------------------------------------------------------------

@pytest.fixture
def dom0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    """A kdump root on Xen (its kexec calls recorded), whose set-up did its work."""
    from support.kdump_fakes import FakeKexec, kdump_root

    FakeKexec().install(monkeypatch)
    paths = kdump_root(tmp_path, monkeypatch)
    (paths.sys / "hypervisor").mkdir()
    (paths.sys / "hypervisor/type").write_text("xen\n")
    # dom0's kernel reserves nothing itself: Xen does.
    (paths.sys / "kernel/kexec_crash_size").write_text("0\n")
    monkeypatch.setattr(xen_dom0, "prepare", lambda paths: ["loaded xenfs, xen-privcmd"])
    return paths


def test_status_says_loaded_through_xen(dom0: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    from pykexec.main import main

    root = ["--root", str(dom0.root)]
    assert main(["kdump", "load", *root]) == 0
    assert capsys.readouterr().err == "pykexec kdump: Xen dom0: loaded xenfs, xen-privcmd\n"
    assert main(["kdump", "status", *root]) == 0
    out = capsys.readouterr().out
    assert out.startswith("crash kernel: loaded through Xen (")
    # Not dom0's kexec_crash_size (0): Xen's area, which only this machine's Xen can tell.
    assert "memory: unknown reserved, " in out
    assert main(["kdump", "status", "--json", *root]) == 0
    import json

    assert json.loads(capsys.readouterr().out)["loaded_through"] == "xen_kexec_op"


def test_status_elsewhere_is_loaded_by_the_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pykexec.kdump import service
    from pykexec.kdump.config import KdumpConfig

    from support.kdump_fakes import FakeKexec, kdump_root

    FakeKexec().install(monkeypatch)
    paths = kdump_root(tmp_path, monkeypatch)
    service.load(KdumpConfig(), paths)
    st = service.status(KdumpConfig(), paths)
    assert st["loaded_through"] == "kernel" and st["reserved_bytes"] == 256 << 20


def test_reserved_bytes_is_xens_crash_area(monkeypatch: pytest.MonkeyPatch) -> None:
    from pykexec.kdump import service

    monkeypatch.setattr(service, "under_xen", lambda paths: True)
    monkeypatch.setattr(xen_dom0, "crash_area_bytes", lambda: 256 << 20)
    assert service.reserved_bytes(Paths("/")) == 256 << 20

    def refused() -> int:
        raise KexecError("not a PV dom0")

    monkeypatch.setattr(xen_dom0, "crash_area_bytes", refused)
    assert service.reserved_bytes(Paths("/")) is None


def test_a_failed_set_up_stops_load_only(dom0: Paths, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from pykexec.main import main

    def fails(paths: Paths) -> list[str]:
        raise KexecError("modprobe -a xenfs xen-privcmd failed: Operation not permitted")

    monkeypatch.setattr(xen_dom0, "prepare", fails)
    root = ["--root", str(dom0.root)]
    assert main(["kdump", "load", *root]) == 1
    assert capsys.readouterr().err == "pykexec: modprobe -a xenfs xen-privcmd failed: Operation not permitted\n"
    assert main(["kdump", "status", *root]) == 1  # not loaded, and said so
    captured = capsys.readouterr()
    assert captured.err == "pykexec kdump: Xen dom0: modprobe -a xenfs xen-privcmd failed: Operation not permitted\n"
    assert captured.out.startswith("crash kernel: not loaded (")


class FakeXen:
    """XenKexec.open() of a 2 GiB machine with a 256 MiB crash area at 1 GiB."""

    def __enter__(self) -> FakeXen:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def machine_memory_map(self) -> list[object]:
        from pykexec.backends.xen.kexec_op import E820Range

        return [E820Range(0, 0x9fc00, 1), E820Range(0x9fc00, 0x400, 2), E820Range(0x100000, 0x7fee0000, 1),
                E820Range(0xfffc0000, 0x40000, 2), E820Range(0x80000000, 0, 1)]

    def crash_area(self) -> object:
        from pykexec.backends.xen.rules import XenRange

        return XenRange(1 << 30, 256 << 20)


def test_what_xen_says(monkeypatch: pytest.MonkeyPatch) -> None:
    from pykexec.backends.xen.kexec_op import XenKexec

    monkeypatch.setattr(XenKexec, "open", classmethod(lambda cls, **kw: FakeXen()))
    assert xen_dom0.crash_area_bytes() == 256 << 20
    # RAM only (not the reserved ranges above it, nor an empty entry): up to 0x7ffe0000.
    assert xen_dom0.machine_ram() == (0x7ffe0000 // 4096, (0x9fc00 + 0x7fee0000) // 4096)
