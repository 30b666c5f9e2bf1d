"""pykexec-kdump.service: its text, and enable/disable on a temporary root with a fake
systemctl on PATH that records its calls and keeps the wants/ link as systemctl does."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pykexec.errors import KexecError
from pykexec.kdump import unit
from pykexec.kdump.config import KdumpConfig
from pykexec.kdump.paths import UNIT_NAME, Paths

FAKE_SYSTEMCTL = r"""#!/bin/sh
# Records its arguments; enable/disable/is-enabled through the wants/ link under
# --root=DIR, or under $FAKE_ROOT for the running system.
echo "$*" >> "$FAKE_LOG"
root="$FAKE_ROOT"
case "$1" in --root=*) root="${1#--root=}"; shift;; esac
wants="$root/etc/systemd/system/multi-user.target.wants"
case "$1" in
  enable) mkdir -p "$wants" && ln -sf "../$2" "$wants/$2";;
  disable) rm -f "$wants/$2";;
  is-enabled) if [ -L "$wants/$2" ]; then echo enabled; else echo disabled; exit 1; fi;;
  fail) echo "Failed to do it: Access denied" >&2; exit 1;;
esac
exit "${FAKE_EXIT:-0}"
"""


@pytest.fixture
def systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake systemctl first on PATH; returns its log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "systemctl"
    script.write_text(FAKE_SYSTEMCTL)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "systemctl.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_ROOT", str(tmp_path / "root"))
    return log


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines()


def test_unit_text() -> None:
    assert unit.unit_text("/usr/bin/pykexec") == """\
[Unit]
Description=pykexec kdump: the crash kernel, loaded to capture a dump on panic
After=local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/pykexec kdump load
ExecStop=/usr/bin/pykexec kdump unload

[Install]
WantedBy=multi-user.target
"""
    ssh = unit.unit_text("/usr/bin/pykexec", KdumpConfig(target="ssh://u@h/p"))
    assert "After=local-fs.target network-online.target\nWants=network-online.target\n" in ssh


def test_enable_and_disable_under_a_root_are_idempotent(tmp_path: Path, systemctl: Path) -> None:
    paths = Paths(tmp_path / "image")
    root = f"--root={paths.root}"
    assert unit.enable(paths, command="/usr/bin/pykexec") == [
        f"wrote {paths.unit_file}", f"enabled {UNIT_NAME}: the crash kernel is loaded at every boot"]
    assert paths.unit_file.read_text() == unit.unit_text("/usr/bin/pykexec")
    assert (paths.under("/etc/systemd/system/multi-user.target.wants") / UNIT_NAME).is_symlink()
    assert calls(systemctl) == [f"{root} is-enabled {UNIT_NAME}", f"{root} enable {UNIT_NAME}"]

    assert unit.enable(paths, command="/usr/bin/pykexec") == [f"{UNIT_NAME} is already installed and enabled"]
    assert unit.enable(paths, command="/opt/bin/pykexec") == [f"updated {paths.unit_file}"]

    assert unit.disable(paths) == [f"disabled {UNIT_NAME}", f"removed {paths.unit_file}"]
    assert not paths.unit_file.exists()
    assert not (paths.under("/etc/systemd/system/multi-user.target.wants") / UNIT_NAME).exists()
    assert unit.disable(paths) == [f"{UNIT_NAME} is not installed"]
    assert all(call.startswith(root) for call in calls(systemctl))


def test_live_enable_reloads_systemd_and_starts_with_now(tmp_path: Path, systemctl: Path) -> None:
    paths = Paths(tmp_path / "root")
    done = unit.enable(paths, command="/usr/bin/pykexec", now=True, live=True)
    assert done == [f"wrote {paths.unit_file}", f"enabled {UNIT_NAME}: the crash kernel is loaded at every boot",
                    f"started {UNIT_NAME}: the crash kernel is loaded"]
    assert calls(systemctl) == ["daemon-reload", f"is-enabled {UNIT_NAME}", f"enable {UNIT_NAME}",
                                f"restart {UNIT_NAME}"]
    systemctl.write_text("")
    assert unit.disable(paths, now=True, live=True) == [
        f"stopped {UNIT_NAME}: the crash kernel is unloaded", f"disabled {UNIT_NAME}", f"removed {paths.unit_file}"]
    assert calls(systemctl) == [f"stop {UNIT_NAME}", f"is-enabled {UNIT_NAME}", f"disable {UNIT_NAME}",
                                "daemon-reload"]


def test_systemctl_failure_is_one_line(tmp_path: Path, systemctl: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_EXIT", "1")
    with pytest.raises(KexecError, match=r"^systemctl daemon-reload failed: exit 1$"):
        unit.enable(Paths(tmp_path / "root"), command="/usr/bin/pykexec", live=True)


def test_no_systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(KexecError, match="systemctl not found: the kdump service needs systemd"):
        unit.enable(Paths(tmp_path / "root"), command="/usr/bin/pykexec")


def test_cli_enable_disable(tmp_path: Path, systemctl: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pykexec.main import main

    paths = Paths(tmp_path / "image")
    assert main(["kdump", "enable", "--root", str(paths.root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"pykexec kdump: wrote {paths.unit_file}\n")
    assert "ExecStart=" in paths.unit_file.read_text() and " kdump load\n" in paths.unit_file.read_text()
    assert main(["kdump", "disable", "--root", str(paths.root)]) == 0
    assert capsys.readouterr().out == (f"pykexec kdump: disabled {UNIT_NAME}\n"
                                       f"pykexec kdump: removed {paths.unit_file}\n")
