"""The kdump service's load, unload and status, on a temporary root, with the library's
kexec calls and the crash initramfs builder replaced by recorders."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pykexec.errors import KexecError, MachineError
from pykexec.kdump import records, service
from pykexec.kdump.config import KdumpConfig
from pykexec.kdump.paths import Paths
from pykexec.request import KexecRequest

from support.kdump_fakes import RELEASE, FakeKexec, kdump_root
from support.synth_images import make_bzimage


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeKexec:
    return FakeKexec().install(monkeypatch)


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    return kdump_root(tmp_path, monkeypatch)


CONFIG = KdumpConfig()


def test_load_builds_the_crash_request_and_records_a_stamp(fake: FakeKexec, paths: Paths) -> None:
    outcome = service.load(CONFIG, paths)
    assert outcome.action == "loaded"
    assert fake.loads == [KexecRequest(str(paths.kernel(RELEASE)), initrd=str(paths.initramfs),
                                       append="irqpoll nr_cpus=1 reset_devices panic=10", reuse_cmdline=True,
                                       crash=True, syscall="load")]
    stamp = json.loads(paths.stamp.read_text())
    assert stamp["kernel"] == str(paths.kernel(RELEASE)) and len(stamp["kernel_sha256"]) == 64
    assert stamp["initrd"] == str(paths.initramfs) and stamp["boot_id"] == "boot-1"


def test_load_again_without_change_is_unchanged(fake: FakeKexec, paths: Paths) -> None:
    service.load(CONFIG, paths)
    outcome = service.load(CONFIG, paths)
    assert outcome.action == "unchanged" and len(fake.loads) == 1


@pytest.mark.parametrize("change, what", [
    (lambda p, c: p.kernel(RELEASE).write_bytes(make_bzimage(init_size=0x900000)) and c, "kernel"),
    (lambda p, c: replace(c, dump_level=1), "configuration"),  # the initramfs embeds it, too
    (lambda p, c: replace(c, append="nr_cpus=1"), "configuration"),
    (lambda p, c: (p.proc / "sys/kernel/random/boot_id").write_text("boot-2") and c, "boot"),
])
def test_a_change_reloads_and_says_what_changed(fake: FakeKexec, paths: Paths, change: object, what: str) -> None:
    service.load(CONFIG, paths)
    config = change(paths, CONFIG)  # type: ignore[operator]
    outcome = service.load(config, paths)
    assert outcome.action == "reloaded" and what in outcome.changed
    assert len(fake.loads) == 2
    assert service.load(config, paths).action == "unchanged"


def test_initrd_change_alone(fake: FakeKexec, paths: Paths) -> None:
    config = KdumpConfig(initrd="/boot/crash.img")
    paths.under("/boot/crash.img").write_bytes(b"one")
    service.load(config, paths)
    paths.under("/boot/crash.img").write_bytes(b"two")
    assert service.load(config, paths).changed == ("initrd",)
    assert fake.loads[-1].initrd == str(paths.under("/boot/crash.img"))


def test_a_crash_kernel_loaded_by_someone_else_is_replaced(fake: FakeKexec, paths: Paths) -> None:
    fake.loaded = True
    outcome = service.load(CONFIG, paths)
    assert outcome.action == "reloaded" and outcome.changed == ("no stamp",)


def test_force_loads_anyway(fake: FakeKexec, paths: Paths) -> None:
    service.load(CONFIG, paths)
    outcome = service.load(CONFIG, paths, force=True)
    assert (outcome.action, outcome.changed, len(fake.loads)) == ("reloaded", ("forced",), 2)


def test_failed_load_leaves_no_stamp(fake: FakeKexec, paths: Paths) -> None:
    service.load(CONFIG, paths)
    fake.fail = KexecError("kexec_file_load failed: no room")
    with pytest.raises(KexecError, match="no room"):
        service.load(replace(CONFIG, dump_level=1), paths)
    assert not paths.stamp.exists()
    assert service.status(CONFIG, paths)["loaded"] is False


def test_unreadable_kernel_is_refused_before_loading(fake: FakeKexec, paths: Paths) -> None:
    with pytest.raises(MachineError, match="crash kernel .*vmlinuz-other cannot be read"):
        service.load(KdumpConfig(kernel="/boot/vmlinuz-other"), paths)
    assert fake.loads == []


def test_unload(fake: FakeKexec, paths: Paths) -> None:
    service.load(CONFIG, paths)
    assert service.unload(paths) is True
    assert fake.unloads == 1 and not paths.stamp.exists()
    assert service.unload(paths) is False and fake.unloads == 1


@pytest.mark.parametrize("config, append", [
    (KdumpConfig(), "irqpoll nr_cpus=1 reset_devices panic=10"),
    (KdumpConfig(append="nr_cpus=1 panic=3"), "nr_cpus=1 panic=3"),
    (KdumpConfig(failure_action="shell"), "irqpoll nr_cpus=1 reset_devices"),
    (KdumpConfig(append=""), "panic=10"),
])
def test_crash_append(config: KdumpConfig, append: str) -> None:
    assert service.crash_append(config) == append


def test_reserved_bytes(paths: Paths) -> None:
    assert service.reserved_bytes(paths) == 256 << 20


def test_status(fake: FakeKexec, paths: Paths) -> None:
    target = paths.under("/var/crash")
    crash_dir = records.new_crash_dir(target, "6.1.0-57-cloud-amd64", datetime(2026, 12, 6, tzinfo=timezone.utc))
    records.write_record(crash_dir, records.CrashRecord(id=crash_dir.name, kernel_release="6.1.0-57-cloud-amd64",
                                                        crash_time="2026-12-06T00:00:00Z", panic="Kernel panic"))
    st = service.status(CONFIG, paths)
    assert st["loaded"] is False and st["changed_since_load"] == []
    service.load(CONFIG, paths)
    paths.kernel(RELEASE).write_bytes(make_bzimage(init_size=0x900000))
    st = service.status(CONFIG, paths)
    assert st["loaded"] is True and st["changed_since_load"] == ["kernel"]
    assert st["reserved_bytes"] == 256 << 20
    assert isinstance(st["needed_bytes"], int) and st["needed_bytes"] % (16 << 20) == 0
    assert (st["target"], st["dump_level"], st["compression"]) == ("/var/crash", 31, "zstd")
    assert [c["panic"] for c in st["crashes"]] == ["Kernel panic"]  # type: ignore[attr-defined]
    assert st["crashes"][0]["complete"] is False  # type: ignore[index]


def test_cli_load_status_unload(fake: FakeKexec, paths: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    from pykexec.main import main

    root = ["--root", str(paths.root)]
    assert main(["kdump", "load", *root]) == 0
    assert capsys.readouterr().out == (f"pykexec kdump: loaded {paths.kernel(RELEASE)} with {paths.initramfs}\n")
    assert main(["kdump", "load", *root]) == 0
    assert capsys.readouterr().out.startswith("pykexec kdump: already loaded, unchanged: ")
    assert main(["kdump", "status", "--json", *root]) == 0
    assert json.loads(capsys.readouterr().out)["loaded"] is True
    assert main(["kdump", "status", *root]) == 0
    out = capsys.readouterr().out
    assert out.startswith("crash kernel: loaded (") and "memory: 256 MiB reserved, about " in out
    assert "target: /var/crash, dump level 31, zstd\nlast crashes: none\n" in out
    assert main(["kdump", "unload", *root]) == 0
    assert capsys.readouterr().out == "pykexec kdump: unloaded the crash kernel\n"
    assert main(["kdump", "status", *root]) == 1


def test_cli_bad_configuration_is_one_line(paths: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    from pykexec.main import main

    paths.config.parent.mkdir(parents=True)
    paths.config.write_text("dump_level = 99\n")
    assert main(["kdump", "status", "--root", str(paths.root)]) == 2
    err = capsys.readouterr().err
    assert err == (f"pykexec: {paths.config}: dump_level = 99 is out of range: 0 to 31 (1 zero pages, 2 page "
                   "cache, 4 private cache, 8 user data, 16 free pages)\n")


def test_the_crash_kernel_goes_through_kexec_file_load_only_under_lockdown(paths: Paths) -> None:
    lockdown = paths.sys / "kernel/security/lockdown"
    lockdown.parent.mkdir(parents=True, exist_ok=True)
    assert service.crash_syscall(paths) == "load"  # no lockdown file
    lockdown.write_text("[none] integrity confidentiality\n")
    assert service.crash_syscall(paths) == "load"
    lockdown.write_text("none [integrity] confidentiality\n")
    assert service.crash_syscall(paths) == "file"
