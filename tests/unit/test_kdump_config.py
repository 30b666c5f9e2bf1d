"""The kdump configuration file: defaults, every rule, one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pykexec.errors import UsageError
from pykexec.kdump.config import (
    COMPRESSIONS,
    ConfigError,
    KdumpConfig,
    Target,
    load_config,
    parse_target,
    to_toml,
)


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kdump.toml"
    path.write_text(text)
    return path


def test_missing_file_means_the_defaults(tmp_path: Path) -> None:
    config = load_config(tmp_path / "absent.toml")
    assert config == KdumpConfig(source=str(tmp_path / "absent.toml"))
    assert config.keys() == {
        "target": "/var/crash", "dump_level": 31, "compression": "zstd", "kernel": "", "initrd": "",
        "append": "irqpoll nr_cpus=1 reset_devices", "failure_action": "reboot", "final_action": "reboot",
        "keep": 3, "ssh_key": "/etc/pykexec/kdump_id_ed25519"}
    assert config.parsed_target == Target("local", "/var/crash")


def test_every_key_read(tmp_path: Path) -> None:
    path = config_file(tmp_path, """
        # comments and any order
        keep = 0
        target = "ssh://kdump@10.0.2.2:2222/srv/crash"
        dump_level = 1
        compression = "zlib"
        kernel = "/boot/vmlinuz-crash"
        initrd = "/boot/initrd-crash"
        append = "nr_cpus=1"
        failure_action = "shell"
        final_action = "poweroff"
        ssh_key = "/root/.ssh/id_ed25519"
    """)
    config = load_config(path)
    assert config.dump_level == 1 and config.compression == "zlib" and config.keep == 0
    assert config.failure_action == "shell" and config.final_action == "poweroff"
    assert config.parsed_target == Target("ssh", "/srv/crash", "10.0.2.2", "kdump", 2222)
    assert config.parsed_target.ssh_destination == "kdump@10.0.2.2"


def test_compressions_are_the_savers() -> None:
    from pykexec.vmcore import save

    assert COMPRESSIONS == save.COMPRESSIONS


@pytest.mark.parametrize("text, message", [
    ("colour = 1", "unknown key 'colour' (the keys are: target, dump_level, compression, kernel, initrd, append, "
                   "failure_action, final_action, keep, ssh_key)"),
    ("dump_level = 32", "dump_level = 32 is out of range: 0 to 31"),
    ("dump_level = -1", "dump_level = -1 is out of range: 0 to 31"),
    ("dump_level = \"31\"", "dump_level = \"31\" must be a whole number"),
    ("dump_level = true", "dump_level = true must be a whole number"),
    ("dump_level = 3.5", "dump_level = 3.5 must be a whole number"),
    ("compression = \"lz4\"", "compression = \"lz4\" is not one of: zstd, zlib, lzo, snappy, none"),
    ("failure_action = \"dump\"", "failure_action = \"dump\" is not one of: reboot, halt, poweroff, shell"),
    ("final_action = \"shell\"", "final_action = \"shell\" is not one of: reboot, halt, poweroff"),
    ("keep = -2", "keep = -2 must be 0 (keep every dump) or more"),
    ("keep = [1]", "keep = a list must be a whole number"),
    ("kernel = \"vmlinuz\"", "kernel = \"vmlinuz\" must be an absolute path or \"\" for the default"),
    ("initrd = 3", "initrd = 3 must be a string"),
    ("ssh_key = \"id\"", "ssh_key = \"id\" must be an absolute path"),
    ("append = \"a\\nb\"", "append must be one line of kernel arguments"),
    ("target = \"crash\"", "target = 'crash' must be an absolute path"),
    ("target = \"nfs://server/crash\"", "the only URL allowed is ssh://user@host/path"),
    ("target = \"ssh://host\"", "target = 'ssh://host' is not an ssh target"),
    ("target = \"ssh://u@host:99999/x\"", "is not an ssh target"),
    ("[section]\nkey = 1", "unknown key 'section'"),
    ("target = ", "not valid TOML"),
])
def test_bad_value_is_one_line_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = config_file(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text_of_error = str(caught.value)
    assert message in text_of_error
    assert text_of_error.startswith(f"{path}: ")
    assert "\n" not in text_of_error
    assert isinstance(caught.value, UsageError)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read .*: Is a directory"):
        load_config(tmp_path)


@pytest.mark.parametrize("text, target", [
    ("/var/crash/", Target("local", "/var/crash")),
    ("/dev/vdb", Target("raw", "/dev/vdb")),
    ("ssh://host/crash", Target("ssh", "/crash", "host")),
    ("ssh://root@[::1]/crash", Target("ssh", "/crash", "::1", "root")),
])
def test_targets(text: str, target: Target) -> None:
    assert parse_target(text) == target


def test_to_toml_reads_back_equal(tmp_path: Path) -> None:
    config = KdumpConfig(target="ssh://u@h/p", append='quiet "x" \\ é \x7f', keep=0, dump_level=0,
                         source=str(tmp_path / "kdump.toml"))
    path = config_file(tmp_path, to_toml(config))
    assert load_config(path) == config
    assert to_toml(load_config(path)) == to_toml(config)
