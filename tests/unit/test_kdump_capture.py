"""The capture (PID 1 of the crash kernel) against a synthetic dump, in a temporary
root, with mount, finit_module, sync and reboot replaced by a fake: the crash
directory and its record, a full target (the log is kept, the dump is marked
incomplete, the failure action is taken), a missing device, modules that fail."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pykexec.kdump import capture as C
from pykexec.kdump.capture_plan import CapturePlan, Device
from pykexec.kdump.config import KdumpConfig
from pykexec.kdump.records import list_records
from pykexec.vmcore.kdump import KdumpFile
from pykexec.vmcore.open import open_dump

from support.crash_dump import PANIC, RANDOM_BYTES, RANDOM_PADDR, synthetic_crash
from support.vmcore_synth import BUF_PADDR

UUID = "5f3c1d2e-8a7b-4c6d-9e0f-112233445566"


class FakeSystem:
    """What PID 1 asks of the kernel, recorded; ``fail_modules`` refuse to load."""

    def __init__(self, fail_modules: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.fail_modules = fail_modules

    def mount(self, source: str, target: str, fstype: str, options: str = "", flags: int = 0) -> None:
        Path(target).mkdir(parents=True, exist_ok=True)
        self.calls.append(("mount", source, target, fstype, options))

    def umount(self, target: str) -> None:
        self.calls.append(("umount", target))

    def load_module(self, path: str) -> bool:
        self.calls.append(("load", Path(path).name))
        if Path(path).stem in self.fail_modules:
            raise OSError(errno.ENODEV, "No such device")
        return True

    def sync(self) -> None:
        self.calls.append(("sync",))

    def reboot(self, action: str) -> None:
        self.calls.append(("reboot", action))


class Lines(C.Console):
    def __init__(self) -> None:
        super().__init__(-1)
        self.lines: list[str] = []

    def say(self, text: str) -> None:
        self.lines.append(C.PREFIX + text)


@pytest.fixture
def dump(tmp_path: Path) -> Path:
    return synthetic_crash(tmp_path / "vmcore")


def crash_root(tmp_path: Path, device: str = "vda1") -> Path:
    root = tmp_path / "root"
    (root / "sys" / "class" / "block" / device).mkdir(parents=True)
    (root / "dev").mkdir()
    (root / "dev" / device).write_bytes(b"")
    return root


def plan(wait: float = 5.0, uuid: str | None = None, name: str = "vda1") -> CapturePlan:
    return CapturePlan("6.1.0-synthetic", "local", ["virtio_pci", "virtio_blk"],
                       Device(name, 254, 1, "ext4", uuid, "", "/var/crash"), wait_seconds=wait)


def run(tmp_path: Path, dump: Path, config: KdumpConfig | None = None, system: FakeSystem | None = None,
        capture_plan: CapturePlan | None = None, root: Path | None = None) -> tuple[str, FakeSystem, Lines, Path]:
    root = root or crash_root(tmp_path)
    system = system or FakeSystem()
    console = Lines()
    capture = C.Capture(capture_plan or plan(), config or KdumpConfig(), system, console, root=str(root),
                        vmcore=str(dump))
    action = capture.run()
    return action, system, console, root / "mnt" / "target" / "var" / "crash"


def test_capture_saves_log_dump_and_record(tmp_path: Path, dump: Path) -> None:
    action, system, console, target = run(tmp_path, dump, KdumpConfig(final_action="poweroff"))
    assert action == "poweroff", console.lines
    (crash,) = list(target.iterdir())
    assert crash.name == "2023-11-14-22:13:20-6.1.0-synthetic"  # CRASHTIME=1700000000, UTC
    record = json.loads((crash / "record.json").read_text())
    assert record["complete"] is True and record["error"] is None
    assert record["panic"] == PANIC.decode() and record["kernel_release"] == "6.1.0-synthetic"
    assert record["dump_bytes"] == (crash / "vmcore").stat().st_size > 0
    assert record["dump_level"] == 31 and record["compression"] == "zstd" and record["capture_seconds"] > 0
    assert PANIC in (crash / "dmesg.txt").read_bytes()
    # the saved dump: kdump-compressed, complete, every page of the source
    with KdumpFile(crash / "vmcore") as saved:
        assert not saved.incomplete and saved.vmcoreinfo is not None
        assert saved.vmcoreinfo.osrelease == "6.1.0-synthetic"
        with open_dump(dump) as source:
            for paddr, size in ((BUF_PADDR, 1 << 20), (RANDOM_PADDR, RANDOM_BYTES)):
                assert saved.read_phys(paddr, size) == source.read(paddr, size, physical=True)
    (listed,) = list_records(target)
    assert listed.complete and listed.panic == PANIC.decode()
    # the kernel was asked for: /proc, /sys, /dev; the modules in order; the target; sync; unmount
    assert [c[3] for c in system.calls if c[0] == "mount"] == ["proc", "sysfs", "devtmpfs", "ext4"]
    assert [c[1] for c in system.calls if c[0] == "load"] == ["virtio_pci.ko", "virtio_blk.ko"]
    target_mount = [c for c in system.calls if c[0] == "mount"][-1]
    assert target_mount[1].endswith("/dev/vda1") and target_mount[2].endswith("/mnt/target")
    assert system.calls[-2:] == [("sync",), ("umount", target_mount[2])]
    assert any("pykexec-kdump: dump saved:" in line for line in console.lines)
    assert console.lines[-1].startswith("pykexec-kdump: capture complete") and "final action: poweroff" in console.lines[-1]
    assert "; peak memory: " in console.lines[-1]


def test_last_line_tells_the_peak_memory(tmp_path: Path) -> None:
    """From the crash kernel's /proc: the capture's VmHWM and the memory in use."""
    root = crash_root(tmp_path)
    (root / "proc" / "self").mkdir(parents=True)
    (root / "proc" / "self" / "status").write_text("Name:\tpython3\nVmHWM:\t   33792 kB\nVmRSS:\t 1 kB\n")
    (root / "proc" / "meminfo").write_text("MemTotal:  220672 kB\nMemFree: 1 kB\nMemAvailable:  168192 kB\n")
    capture = C.Capture(plan(), KdumpConfig(), FakeSystem(), Lines(), root=str(root))
    assert capture.peak_memory() == "capture 33.0 MiB, 51.2 of 215.5 MiB in use"
    (root / "proc" / "meminfo").unlink()
    assert C.Capture(plan(), KdumpConfig(), FakeSystem(), Lines(), root=str(tmp_path)).peak_memory() \
        == "capture unknown"


def test_full_target_keeps_the_log_and_marks_the_dump_incomplete(tmp_path: Path, dump: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The target fills up after 64 KiB of dump: ENOSPC from the writer, as a small disk gives."""
    from pykexec.vmcore import output

    write_at = output.FileOutput.write_at

    def small_disk(self: output.FileOutput, data: bytes | bytearray | memoryview, offset: int) -> None:
        if offset + len(data) > 64 << 10:
            raise OSError(errno.ENOSPC, "No space left on device")
        write_at(self, data, offset)

    monkeypatch.setattr(output.FileOutput, "write_at", small_disk)
    action, _, console, target = run(tmp_path, dump, KdumpConfig(failure_action="halt"))
    assert action == "halt"
    (crash,) = list(target.iterdir())
    record = json.loads((crash / "record.json").read_text())
    assert record["complete"] is False and "No space left on device" in record["error"]
    assert PANIC in (crash / "dmesg.txt").read_bytes()
    (listed,) = list_records(target)
    assert not listed.complete
    assert any("dump INCOMPLETE" in line for line in console.lines)
    assert "failure action: halt" in console.lines[-1]


def test_record_rewritten_in_place_when_no_block_is_left(tmp_path: Path, dump: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The provisional record exists; the final one cannot be a new file: it overwrites it."""
    from pykexec.kdump import records

    real = records.write_record
    calls = []

    def full_after_first(directory: Path, record: records.CrashRecord) -> Path:
        calls.append(record.complete)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(directory, record)

    monkeypatch.setattr(records, "write_record", full_after_first)
    _, _, _, target = run(tmp_path, dump)
    (crash,) = list(target.iterdir())
    assert json.loads((crash / "record.json").read_text())["complete"] is True and len(calls) == 2


def test_provisional_record_says_unfinished(tmp_path: Path, dump: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash kernel that dies during the dump leaves a record that says so."""
    from pykexec.kdump import records
    from pykexec.vmcore import save

    def dies(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # not an Exception: nothing after it runs, as when the machine stops

    monkeypatch.setattr(save, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, dump)
    (crash,) = list((tmp_path / "root" / "mnt" / "target" / "var" / "crash").iterdir())
    record = json.loads((crash / "record.json").read_text())
    assert record["complete"] is False and record["error"] == records.NOT_FINISHED and record["dump"] is None
    assert PANIC in (crash / "dmesg.txt").read_bytes()


def test_module_failure_is_no_capture_failure(tmp_path: Path, dump: Path) -> None:
    action, system, console, target = run(tmp_path, dump, system=FakeSystem(fail_modules=("virtio_pci",)))
    assert action == "reboot" and "pykexec-kdump: module virtio_pci not loaded: No such device" in console.lines
    assert "pykexec-kdump: loaded 1 of 2 modules" in console.lines
    assert json.loads(next(target.iterdir()).joinpath("record.json").read_text())["complete"] is True


def test_missing_device_takes_the_failure_action(tmp_path: Path, dump: Path) -> None:
    action, system, console, _ = run(tmp_path, dump, KdumpConfig(failure_action="poweroff"),
                                     capture_plan=plan(wait=0.3, name="vdz1"))
    assert action == "poweroff"
    failed = [line for line in console.lines if "FAILED mount the target" in line]
    assert failed and "no block device vdz1" in failed[0] and "found: vda1" in failed[0]
    assert not any(c[0] == "umount" for c in system.calls)
    # the panic line still reached the console
    assert any(PANIC.decode() in line for line in console.lines)


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs mkfs.ext4")
def test_device_found_by_uuid_under_another_name(tmp_path: Path, dump: Path) -> None:
    """The crash kernel named the disk vdb: the file system's UUID finds it."""
    root = crash_root(tmp_path, "vdb1")
    (root / "sys" / "class" / "block" / "vda1").mkdir()
    (root / "dev" / "vda1").write_bytes(bytes(1 << 20))
    subprocess.run(["mkfs.ext4", "-q", "-F", "-U", UUID, str(root / "dev" / "vdb1"), "2M"], check=True,
                   capture_output=True)
    action, system, _, _ = run(tmp_path, dump, capture_plan=plan(uuid=UUID), root=root)
    target_mount = [c for c in system.calls if c[0] == "mount"][-1]
    assert action == "reboot" and target_mount[1].endswith("/dev/vdb1")


def test_unreadable_dump_still_ends_in_the_failure_action(tmp_path: Path) -> None:
    bad = tmp_path / "vmcore"
    bad.write_bytes(b"not a dump")
    action, _, console, target = run(tmp_path, bad, KdumpConfig(failure_action="halt"))
    assert action == "halt" and any("FAILED read /proc/vmcore" in line for line in console.lines)
    assert not target.exists() or not list(target.iterdir())


def test_finish_shell_without_a_shell_reboots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(C, "SHELL", "/nonexistent/sh")
    system, console = FakeSystem(), Lines()
    C.finish(system, "shell", console)
    assert system.calls == [("reboot", "reboot")] and "no /nonexistent/sh" in console.lines[0]


def test_finish_reports_a_refused_reboot() -> None:
    class Refuses(FakeSystem):
        def reboot(self, action: str) -> None:
            raise OSError(errno.EPERM, "reboot (halt): Operation not permitted")

    console = Lines()
    C.finish(Refuses(), "halt", console)
    assert console.lines == ["pykexec-kdump: FAILED halt: [Errno 1] reboot (halt): Operation not permitted"]


def ssh_capture(tmp_path: Path, dump: Path, monkeypatch: pytest.MonkeyPatch,
                fake_ssh: str) -> tuple[str, Path, Lines, Path]:
    """A capture to ssh://kdump@backup.example<tmp>/remote whose ssh is ``fake_ssh`` (a
    shell script that gets ssh's arguments, the remote command last, and runs it here)."""
    from pykexec.kdump import capture_ssh
    from pykexec.kdump.capture_plan import Network

    root = crash_root(tmp_path)
    (root / "sys" / "class" / "net" / "eth0").mkdir(parents=True)
    (root / "sys" / "class" / "net" / "eth0" / "address").write_text("52:54:00:12:34:56\n")
    ssh = root / "usr" / "bin" / "ssh"
    ssh.parent.mkdir(parents=True)
    ssh.write_text(fake_ssh)
    ssh.chmod(0o755)
    raised: list[tuple[str, str]] = []
    monkeypatch.setattr(capture_ssh, "bring_up", lambda name, network: raised.append((name, network.address)))
    remote = tmp_path / "remote"
    network = Network("52:54:00:12:34:56", "10.0.2.15", 24, "10.0.2.2", "10.0.2.2")
    ssh_plan = CapturePlan("6.1.0-synthetic", "ssh", [], network=network, wait_seconds=1)
    config = KdumpConfig(target=f"ssh://kdump@backup.example{remote}", failure_action="halt",
                         final_action="poweroff")
    console = Lines()
    action = C.Capture(ssh_plan, config, FakeSystem(), console, root=str(root), vmcore=str(dump)).run()
    assert raised == [("eth0", "10.0.2.15")]
    return action, remote, console, ssh.parent / "ssh.log"


#: ssh that runs the remote command here, logging its arguments.
FAKE_SSH = '#!/bin/sh\nfor last; do :; done\necho "$@" >> "$(dirname "$0")/ssh.log"\nexec sh -c "$last"\n'


def test_ssh_target_gets_the_dump_as_a_flattened_stream(tmp_path: Path, dump: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The dump streams through ``ssh HOST 'cat > .../vmcore.flat.part'``, renamed once
    complete: the stream rebuilds the very file a local capture writes, and kdump list,
    show and vmcore read it where it lies."""
    from pykexec.kdump.crashes import describe
    from pykexec.vmcore.reassemble import reassemble
    from pykexec.vmcore.save import save

    action, remote, console, log = ssh_capture(tmp_path, dump, monkeypatch, FAKE_SSH)
    assert action == "poweroff", console.lines
    (crash,) = list(remote.iterdir())
    assert sorted(p.name for p in crash.iterdir()) == ["dmesg.txt", "record.json", "vmcore.flat"]
    assert PANIC in (crash / "dmesg.txt").read_bytes()
    (listed,) = list_records(remote)
    assert listed.complete and listed.error is None and listed.dump == "vmcore.flat"
    assert listed.dump_bytes == (crash / "vmcore.flat").stat().st_size and listed.panic == PANIC.decode()
    direct = tmp_path / "direct"
    save(str(dump), str(direct), progress=False)   # what a local capture writes (zstd, -d 31)
    with open(crash / "vmcore.flat", "rb") as s, open(tmp_path / "rebuilt", "wb") as d:
        assert reassemble(s.fileno(), d.fileno()).complete
    assert (tmp_path / "rebuilt").read_bytes() == direct.read_bytes()
    with open_dump(crash / "vmcore.flat") as saved, open_dump(dump) as source:
        assert saved.format == "kdump-compressed"
        assert saved.read(RANDOM_PADDR, RANDOM_BYTES, physical=True) == source.read(RANDOM_PADDR, RANDOM_BYTES,
                                                                                     physical=True)
    assert describe(listed, 5)["panicking_cpu"] is not None   # kdump show reads the registers from the stream
    calls = log.read_text().splitlines()
    stream = [c for c in calls if c.endswith("vmcore.flat.part")]
    assert len(stream) == 1 and stream[0].endswith(f"cat > {crash}/vmcore.flat.part")
    assert "kdump@10.0.2.2" in calls[0] and "BatchMode=yes" in calls[0] and "StrictHostKeyChecking=no" in calls[0]
    assert "ServerAliveInterval=15" in calls[0]
    assert any(f"saving the dump to kdump@10.0.2.2:{crash}/vmcore.flat.part" in line for line in console.lines)


def test_ssh_stream_cut_short_stays_part_and_incomplete(tmp_path: Path, dump: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection drops after 100 KB of dump: the host keeps vmcore.flat.part, the
    record says incomplete and why, the failure action is taken."""
    dropping = FAKE_SSH.replace('exec sh -c "$last"',
                                'case "$last" in *vmcore.flat.part) exec head -c 100000 > "${last#cat > }";; esac\n'
                                'exec sh -c "$last"')
    action, remote, console, _ = ssh_capture(tmp_path, dump, monkeypatch, dropping)
    assert action == "halt", console.lines
    (crash,) = list(remote.iterdir())
    assert (crash / "vmcore.flat.part").stat().st_size == 100000 and not (crash / "vmcore.flat").exists()
    (listed,) = list_records(remote)
    assert not listed.complete and listed.dump == "vmcore.flat.part"
    assert "Broken pipe" in (listed.error or "")
    with open_dump(crash / "vmcore.flat.part") as saved:   # what arrived is readable, flagged
        assert saved._file.incomplete  # type: ignore[union-attr]
