"""The systemd unit ``pykexec-kdump.service``: it loads the crash kernel at boot
(``pykexec kdump load``, which reloads only after a change) and unloads it at shutdown.

:func:`enable` writes the unit (when its text differs), reloads systemd and enables
it; :func:`disable` undoes that.  Both are idempotent and say what they did.  Under a
root other than ``/`` (tests, an image being prepared) systemctl is run with
``--root``, which edits the links without a running systemd, and nothing is
started or stopped.
"""

from __future__ import annotations

import os
import subprocess

from pykexec.errors import KexecError
from pykexec.kdump.paths import UNIT_NAME

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from pykexec.kdump.config import KdumpConfig
    from pykexec.kdump.paths import Paths

    Runner = Callable[..., subprocess.CompletedProcess[str]]


def pykexec_command() -> str:
    """How systemd runs pykexec: the ``pykexec`` on PATH, else this interpreter with ``-m``."""
    import shutil
    import sys

    found = shutil.which("pykexec")
    return os.path.abspath(found) if found else f"{sys.executable} -m pykexec"


def unit_text(command: str, config: KdumpConfig | None = None) -> str:
    """The unit file.  An ssh target waits for the network: the crash initramfs is
    built at load time with the route to the host."""
    ssh = config is not None and config.parsed_target.kind == "ssh"
    after = "local-fs.target network-online.target" if ssh else "local-fs.target"
    wants = "Wants=network-online.target\n" if ssh else ""
    return ("[Unit]\n"
            "Description=pykexec kdump: the crash kernel, loaded to capture a dump on panic\n"
            f"After={after}\n"
            f"{wants}"
            "\n"
            "[Service]\n"
            "Type=oneshot\n"
            "RemainAfterExit=yes\n"
            f"ExecStart={command} kdump load\n"
            f"ExecStop={command} kdump unload\n"
            "\n"
            "[Install]\n"
            "WantedBy=multi-user.target\n")


def _live(paths: Paths, live: bool | None) -> bool:
    """Whether systemctl acts on the running systemd (default: when the root is "/")."""
    return str(paths.root) == "/" if live is None else live


def _systemctl(paths: Paths, run: Runner, *args: str, check: bool = True,
               live: bool | None = None) -> subprocess.CompletedProcess[str]:
    root = [] if _live(paths, live) else [f"--root={paths.root}"]
    try:
        proc = run(["systemctl", *root, *args], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise KexecError("systemctl not found: the kdump service needs systemd") from None
    except subprocess.TimeoutExpired:
        raise KexecError(f"systemctl {' '.join(args)} did not finish in 120 s") from None
    if check and proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip().splitlines()
        raise KexecError(f"systemctl {' '.join(args)} failed: {said[-1] if said else f'exit {proc.returncode}'}")
    return proc


def is_enabled(paths: Paths, run: Runner = subprocess.run, live: bool | None = None) -> bool:
    return _systemctl(paths, run, "is-enabled", UNIT_NAME, check=False, live=live).stdout.strip() == "enabled"


def enable(paths: Paths, config: KdumpConfig | None = None, *, now: bool = False, command: str | None = None,
           run: Runner = subprocess.run, live: bool | None = None) -> list[str]:
    """Install and enable the unit (``now``: start it too, loading the crash kernel);
    returns one line per thing done, or the one saying nothing was to do.  ``live``:
    whether systemctl acts on the running systemd (default: when the root is "/")."""
    done: list[str] = []
    text = unit_text(command or pykexec_command(), config)
    live = _live(paths, live)
    try:
        current = paths.unit_file.read_text()
    except OSError:
        current = None
    if current != text:
        paths.unit_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = paths.unit_file.with_name(paths.unit_file.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, paths.unit_file)
        done.append(f"wrote {paths.unit_file}" if current is None else f"updated {paths.unit_file}")
        if live:
            _systemctl(paths, run, "daemon-reload", live=live)
    if not is_enabled(paths, run, live):
        _systemctl(paths, run, "enable", UNIT_NAME, live=live)
        done.append(f"enabled {UNIT_NAME}: the crash kernel is loaded at every boot")
    if now and live:
        _systemctl(paths, run, "restart" if current != text else "start", UNIT_NAME, live=live)
        done.append(f"started {UNIT_NAME}: the crash kernel is loaded")
    return done or [f"{UNIT_NAME} is already installed and enabled"]


def disable(paths: Paths, *, now: bool = False, run: Runner = subprocess.run,
            live: bool | None = None) -> list[str]:
    """Disable and remove the unit (``now``: stop it first, unloading the crash kernel)."""
    if not paths.unit_file.exists():
        return [f"{UNIT_NAME} is not installed"]
    done: list[str] = []
    live = _live(paths, live)
    if now and live:
        _systemctl(paths, run, "stop", UNIT_NAME, live=live)
        done.append(f"stopped {UNIT_NAME}: the crash kernel is unloaded")
    if is_enabled(paths, run, live):
        _systemctl(paths, run, "disable", UNIT_NAME, live=live)
        done.append(f"disabled {UNIT_NAME}")
    paths.unit_file.unlink()
    done.append(f"removed {paths.unit_file}")
    if live:
        _systemctl(paths, run, "daemon-reload", live=live)
    return done
