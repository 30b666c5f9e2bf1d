"""kdump test: each check's findings (one line and a fix), on a temporary root with
the kexec calls recorded and ssh replaced; --crash --yes writes "c" to sysrq-trigger."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pykexec.doctor import FAIL, OK, WARN, Finding
from pykexec.errors import KexecError, UsageError
from pykexec.kdump import selftest, service
from pykexec.kdump.config import KdumpConfig, to_toml
from pykexec.kdump.paths import Paths

from support.kdump_fakes import RELEASE, FakeKexec, kdump_root
from support.synth_images import make_bzimage
from support.testbed.cpio import CpioWriter, cpio_bytes

CONFIG = KdumpConfig()
MiB = 1 << 20


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeKexec:
    return FakeKexec().install(monkeypatch)


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    return kdump_root(tmp_path / "root", monkeypatch)


def statuses(findings: list[Finding]) -> list[tuple[str, str]]:
    return [(f.check, f.status) for f in findings]


def test_loaded(fake: FakeKexec, paths: Paths) -> None:
    (finding,) = selftest.check_loaded(paths)
    assert finding == Finding("loaded", FAIL, "no crash kernel is loaded: a panic now would not be captured",
                              "pykexec kdump load (at every boot: pykexec kdump enable)")
    fake.loaded = True
    assert statuses(selftest.check_loaded(paths)) == [("loaded", WARN)]  # loaded, but not by us
    service.load(CONFIG, paths)
    assert statuses(selftest.check_loaded(paths)) == [("loaded", OK)]
    (paths.proc / "sys/kernel/random/boot_id").write_text("boot-2")  # the stamp outlived a reset
    (finding,) = selftest.check_loaded(paths)
    assert finding.message == ("a crash kernel is loaded, but not by pykexec kdump (its load stamp is from another "
                               "boot)")


def test_unchanged(fake: FakeKexec, paths: Paths) -> None:
    assert selftest.check_unchanged(CONFIG, paths) == []
    service.load(CONFIG, paths)
    assert statuses(selftest.check_unchanged(CONFIG, paths)) == [("unchanged", OK)]
    (paths.proc / "sys/kernel/random/boot_id").write_text("boot-2")  # not a change of files
    assert statuses(selftest.check_unchanged(CONFIG, paths)) == [("unchanged", OK)]
    paths.kernel(RELEASE).write_bytes(make_bzimage(init_size=0x900000))
    (finding,) = selftest.check_unchanged(KdumpConfig(dump_level=1), paths)
    assert finding == Finding("unchanged", FAIL, "changed since the crash kernel was loaded: kernel, configuration",
                              "pykexec kdump load")


def test_reservation(paths: Paths) -> None:
    (finding,) = selftest.check_reservation(CONFIG, paths, None)
    assert finding.status == OK and finding.message.startswith("256 MiB reserved, about "), finding
    (paths.sys / "kernel/kexec_crash_size").write_text(str(64 * MiB))
    (finding,) = selftest.check_reservation(CONFIG, paths, (1 << 22, 1 << 22, 100))
    assert finding.status == FAIL and finding.message.startswith("64 MiB reserved, the crash kernel needs about ")
    assert finding.fix.startswith("boot with crashkernel=") and finding.fix.endswith("M")


def capture_initramfs(config: KdumpConfig, *, python: bool = True, capture: bool = True,
                      modules: tuple[str, ...] = ("virtio_blk", "ext4"), init_mode: int = 0o755) -> bytes:
    """A crash initramfs laid out as pykexec's builder lays it out."""
    def build(w: CpioWriter) -> None:
        w.file("init", b"#!/usr/bin/python3.11 -S\nfrom pykexec.kdump.capture import main\n", init_mode)
        if python:
            w.file("usr/bin/python3.11", b"\x7fELF")
        if capture:
            w.file("kdump/python/pykexec/kdump/capture.pyc", b"pyc")
        w.file("kdump/python/pykexec/vmcore/save.pyc", b"pyc")
        w.file("etc/pykexec/kdump.toml", to_toml(config).encode())
        for name in modules:
            w.file(f"kdump/modules/{name}.ko", b"\x7fELF")

    return cpio_bytes(build, compress=True)


@pytest.mark.parametrize("kwargs, config, message", [
    ({}, CONFIG, None),
    ({"python": False}, CONFIG, "/init runs /usr/bin/python3.11, which the initramfs does not hold"),
    ({"init_mode": 0o644}, CONFIG, "/init in the crash initramfs is not executable"),
    ({"capture": False}, CONFIG, "{initrd} does not hold the capture (pykexec)"),
    ({}, KdumpConfig(dump_level=1), "{initrd} embeds another configuration than /etc/pykexec/kdump.toml"),
    ({"modules": ("virtio_blk",)}, CONFIG, "{initrd} lacks the target's modules: ext4"),
])
def test_initramfs(tmp_path: Path, paths: Paths, kwargs: dict[str, object], config: KdumpConfig,
                   message: str | None) -> None:
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(capture_initramfs(CONFIG, **kwargs))  # type: ignore[arg-type]
    findings = selftest.check_initramfs(config, paths, initrd, ["virtio-blk", "ext4"])
    if message is None:
        assert findings == [Finding("initramfs", OK, f"{initrd} holds the capture, the configuration and the "
                                                     "target's 2 modules")]
    else:
        assert [f.message for f in findings] == [message.format(initrd=initrd)]
        assert findings[0].status == FAIL and findings[0].fix == "pykexec kdump load"


def test_initramfs_unreadable(tmp_path: Path, paths: Paths) -> None:
    (finding,) = selftest.check_initramfs(CONFIG, paths, tmp_path / "absent", None)
    assert finding.status == FAIL and "cannot read initramfs" in finding.message


def test_local_target(paths: Paths) -> None:
    (finding,) = selftest.check_target(CONFIG, paths, 1024)
    assert finding.status == OK and finding.message.startswith("target /var/crash: writable, ")
    (finding,) = selftest.check_target(CONFIG, paths, None)
    assert finding.status == WARN and "the dump's size is unknown" in finding.message
    (finding,) = selftest.check_target(CONFIG, paths, 1 << 60)
    assert finding.status == FAIL and finding.message.endswith(f"the dump needs about {(1 << 60) // MiB} MiB")
    paths.under("/srv").write_text("a file where a directory should be")
    (finding,) = selftest.check_target(KdumpConfig(target="/srv/crash"), paths, 1024)
    assert finding == Finding("target", FAIL, f"target /srv/crash: {paths.under('/srv')} is not a writable directory",
                              "mkdir -p /srv/crash (as root)")


def test_raw_target(paths: Paths) -> None:
    paths.under("/dev").mkdir()
    paths.under("/dev/vdb").write_bytes(bytes(2 * MiB))
    config = KdumpConfig(target="/dev/vdb")
    assert statuses(selftest.check_target(config, paths, MiB)) == [("target", OK)]
    (finding,) = selftest.check_target(config, paths, 3 * MiB)
    assert finding.message == "raw target /dev/vdb: 2 MiB free, the dump needs about 3 MiB"
    (finding,) = selftest.check_target(KdumpConfig(target="/dev/vdc"), paths, MiB)
    assert finding.message == "raw target /dev/vdc: No such file or directory"


class FakeSsh:
    def __init__(self, *answers: tuple[int, str, str]) -> None:
        self.answers = list(answers)
        self.commands: list[list[str]] = []

    def __call__(self, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        self.commands.append(argv)
        code, out, err = self.answers.pop(0)
        return subprocess.CompletedProcess(argv, code, out, err)


SSH = KdumpConfig(target="ssh://kdump@10.0.2.2:2222/srv/crash", ssh_key="/etc/pykexec/key")
DF = "Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/sda1 100000 1000 51200 2% /srv\n"


def test_ssh_target(paths: Paths) -> None:
    ssh = FakeSsh((0, "", ""), (0, DF, ""))
    (finding,) = selftest.check_target(SSH, paths, 10 * MiB, run=ssh)
    assert finding == Finding("target", OK, "ssh target kdump@10.0.2.2:/srv/crash: writable, 50 MiB free for a "
                                            "dump of about 10 MiB")
    base = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-i", "/etc/pykexec/key", "-p", "2222",
            "kdump@10.0.2.2"]
    assert ssh.commands == [base + ["test", "-d", "/srv/crash", "-a", "-w", "/srv/crash"],
                            base + ["df", "-Pk", "/srv/crash"]]
    (finding,) = selftest.check_target(SSH, paths, 60 * MiB, run=FakeSsh((0, "", ""), (0, DF, "")))
    assert finding.status == FAIL and finding.fix == "free space on the host"


def test_ssh_target_refused(paths: Paths) -> None:
    ssh = FakeSsh((255, "", "kdump@10.0.2.2: Permission denied (publickey).\n"))
    (finding,) = selftest.check_target(SSH, paths, MiB, run=ssh)
    assert finding.message == "ssh target kdump@10.0.2.2:/srv/crash: kdump@10.0.2.2: Permission denied (publickey)."
    assert finding.fix == "create /srv/crash writable by kdump, and put /etc/pykexec/key.pub in its authorized_keys"


def test_crash_now(fake: FakeKexec, paths: Paths) -> None:
    trigger = paths.proc / "sysrq-trigger"
    trigger.write_text("")
    with pytest.raises(UsageError, match="^kdump test --crash panics this machine now; add --yes to mean it$"):
        selftest.crash_now(paths, yes=False)
    with pytest.raises(KexecError, match="no crash kernel is loaded"):
        selftest.crash_now(paths, yes=True)
    assert trigger.read_text() == ""
    fake.loaded = True
    selftest.crash_now(paths, yes=True)
    assert trigger.read_text() == "c"


def test_cli(fake: FakeKexec, paths: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    from pykexec.main import main

    root = ["--root", str(paths.root)]
    assert main(["kdump", "test", "--json", *root]) == 1
    findings = json.loads(capsys.readouterr().out)
    assert findings[0] == {"check": "loaded", "status": "fail",
                           "message": "no crash kernel is loaded: a panic now would not be captured",
                           "fix": "pykexec kdump load (at every boot: pykexec kdump enable)"}
    assert {f["check"] for f in findings} >= {"loaded", "reservation", "initramfs", "target"}
    assert main(["kdump", "test", *root]) == 1
    out = capsys.readouterr().out
    assert out.startswith("[fail] loaded: no crash kernel is loaded") and "problem(s)" in out
    assert main(["kdump", "test", "--crash", *root]) == 2
    assert capsys.readouterr().err == ("pykexec: kdump test --crash panics this machine now; add --yes to mean it "
                                       "(see pykexec kdump test --help)\n")
    assert main(["kdump", "test", "--yes", *root]) == 2
    assert "--yes confirms --crash" in capsys.readouterr().err
