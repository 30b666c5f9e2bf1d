"""The kdump service's configuration: ``/etc/pykexec/kdump.toml``, read with tomllib.

Every key is optional; a missing file means the defaults.  An unknown key, a value of
the wrong type or out of its range raises :class:`ConfigError`: one line naming the
file, the key, and what is allowed::

    target = "/var/crash"              # a directory; "ssh://user@host/path"; or a raw block device "/dev/vdb"
    dump_level = 31                    # makedumpfile's -d
    compression = "zstd"               # zstd | zlib | lzo | snappy | none
    kernel = ""                        # crash kernel; default: /boot/vmlinuz-<running release>
    initrd = ""                        # crash initramfs; default: built by pykexec
    append = "irqpoll nr_cpus=1 reset_devices"   # added to the crash kernel's command line
    failure_action = "reboot"          # reboot | halt | poweroff | shell
    final_action = "reboot"            # reboot | halt | poweroff
    keep = 3                           # dumps kept on the target (0: all)
    ssh_key = "/etc/pykexec/kdump_id_ed25519"     # for ssh targets
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, fields

from pykexec.errors import UsageError
from pykexec.kdump.paths import CONFIG as DEFAULT_CONFIG

FAILURE_ACTIONS = ("reboot", "halt", "poweroff", "shell")
FINAL_ACTIONS = ("reboot", "halt", "poweroff")
#: Written by :func:`pykexec.vmcore.save.save` (its ``COMPRESSIONS``; a unit test keeps them equal:
#: importing the saver here would cost every ``kdump`` command its imports).
COMPRESSIONS = ("zstd", "zlib", "lzo", "snappy", "none")
MAX_DUMP_LEVEL = 31
#: ``ssh://[user@]host[:port]/path``
_SSH_TARGET = re.compile(r"^ssh://(?:(?P<user>[^@/:\s]+)@)?(?P<host>[^@/:\s]+|\[[0-9A-Fa-f:.]+\])"
                         r"(?::(?P<port>\d{1,5}))?(?P<path>/\S*)$")


class ConfigError(UsageError):
    """A configuration file that cannot be used, in one line naming the key."""


@dataclass(frozen=True)
class Target:
    """Where dumps go: ``kind`` is ``local`` (a directory), ``ssh`` or ``raw`` (a block
    device); ``path`` the directory (on the ssh host) or the device."""

    kind: str
    path: str
    host: str = ""
    user: str = ""
    port: int | None = None

    @property
    def ssh_destination(self) -> str:
        """``user@host`` as ssh takes it (ssh targets only)."""
        return f"{self.user}@{self.host}" if self.user else self.host


@dataclass(frozen=True)
class KdumpConfig:
    """The configuration, every value checked (see the module's docstring for the keys).
    ``kernel`` and ``initrd`` are "" for the defaults; ``source`` names the file read
    (not a key)."""

    target: str = "/var/crash"
    dump_level: int = 31
    compression: str = "zstd"
    kernel: str = ""
    initrd: str = ""
    append: str = "irqpoll nr_cpus=1 reset_devices"
    failure_action: str = "reboot"
    final_action: str = "reboot"
    keep: int = 3
    ssh_key: str = "/etc/pykexec/kdump_id_ed25519"
    source: str = DEFAULT_CONFIG

    @property
    def parsed_target(self) -> Target:
        return parse_target(self.target, self.source)

    def keys(self) -> dict[str, object]:
        """The configuration keys and their values (``source`` is not one)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "source"}


KEYS = tuple(f.name for f in fields(KdumpConfig) if f.name != "source")


def parse_target(text: str, source: str = DEFAULT_CONFIG) -> Target:
    """The target as :class:`Target`; :class:`ConfigError` if it is none of the three forms."""
    if text.startswith("ssh://"):
        m = _SSH_TARGET.match(text)
        port = int(m.group("port")) if m and m.group("port") else None
        if m is None or port is not None and not 0 < port < 65536:
            raise ConfigError(f"{source}: target = {text!r} is not an ssh target: "
                              "write ssh://user@host/path (or ssh://user@host:port/path)")
        return Target("ssh", m.group("path"), m.group("host").strip("[]"), m.group("user") or "", port)
    if "://" in text:
        raise ConfigError(f"{source}: target = {text!r}: the only URL allowed is ssh://user@host/path")
    if not text.startswith("/"):
        raise ConfigError(f"{source}: target = {text!r} must be an absolute path "
                          "(a directory or a block device), or ssh://user@host/path")
    path = os.path.normpath(text)
    return Target("raw" if path.startswith("/dev/") else "local", path)


def load_config(path: str | os.PathLike[str] = DEFAULT_CONFIG) -> KdumpConfig:
    """The configuration in ``path``; the defaults if there is no such file."""
    import tomllib

    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return KdumpConfig(source=source)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: not valid TOML: {err}") from None
    except OSError as err:
        raise ConfigError(f"cannot read {source}: {err.strerror}") from None
    return config_from(data, source)


def config_from(data: dict[str, object], source: str = DEFAULT_CONFIG) -> KdumpConfig:
    """The configuration of parsed TOML ``data``, every key and value checked."""
    for key in data:
        if key not in KEYS:
            raise ConfigError(f"{source}: unknown key {key!r} (the keys are: {', '.join(KEYS)})")
    defaults = KdumpConfig(source=source)
    values: dict[str, object] = {}
    for key, value in data.items():
        default = getattr(defaults, key)
        if isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{source}: {key} = {_show(value)} must be a whole number")
        if isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"{source}: {key} = {_show(value)} must be a string")
        values[key] = value
    config = KdumpConfig(source=source, **values)  # type: ignore[arg-type]  # types checked against the defaults
    _check_values(config)
    return config


def _show(value: object) -> str:
    """A value as TOML writes it, for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):  # TOML's basic strings take JSON's escapes, but not DEL
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (int, float)):
        return json.dumps(value)
    return f"a {type(value).__name__}"


def _check_values(c: KdumpConfig) -> None:
    src = c.source

    def choice(key: str, allowed: tuple[str, ...]) -> None:
        value = getattr(c, key)
        if value not in allowed:
            raise ConfigError(f"{src}: {key} = {_show(value)} is not one of: {', '.join(allowed)}")

    if not 0 <= c.dump_level <= MAX_DUMP_LEVEL:
        raise ConfigError(f"{src}: dump_level = {c.dump_level} is out of range: 0 to {MAX_DUMP_LEVEL} "
                          "(1 zero pages, 2 page cache, 4 private cache, 8 user data, 16 free pages)")
    choice("compression", COMPRESSIONS)
    choice("failure_action", FAILURE_ACTIONS)
    choice("final_action", FINAL_ACTIONS)
    if c.keep < 0:
        raise ConfigError(f"{src}: keep = {c.keep} must be 0 (keep every dump) or more")
    for key in ("kernel", "initrd", "ssh_key"):
        value = getattr(c, key)
        if value and not value.startswith("/"):
            raise ConfigError(f"{src}: {key} = {_show(value)} must be an absolute path"
                              + (" or \"\" for the default" if key != "ssh_key" else ""))
    if "\n" in c.append:
        raise ConfigError(f"{src}: append must be one line of kernel arguments")
    parse_target(c.target, src)


def to_toml(config: KdumpConfig) -> str:
    """The configuration as a TOML file that :func:`load_config` reads back equal (every
    key written: what the crash initramfs embeds, and what the load stamp digests)."""
    return "".join(f"{key} = {_show(value)}\n" for key, value in config.keys().items())
