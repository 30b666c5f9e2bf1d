"""The command line: kexec-tools' options, dry-run output, and one-line errors."""

import json
import subprocess
import sys

import pytest

from pykexec import cli, kexec

from support.synth_images import make_bzimage, make_elf_vmlinux


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and "pykexec 0.1.0" in capsys.readouterr().out


def test_dry_run_json_kexec_load(capsys, bzimage_file, machine_file, tmp_path):
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"i" * 1000)
    code, out, err = run(capsys, "-c", "-l", str(bzimage_file), "--initrd", str(initrd), "--append", "a=1",
                         "--machine", str(machine_file), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["type"] == "bzImage64" and doc["backend"] == "kexec_load" and doc["cmdline"] == "a=1"
    assert sorted(s["role"] for s in doc["segments"]) == ["boot_params", "cmdline", "initrd", "kernel", "purgatory"]
    for s in doc["segments"]:
        assert int(s["mem"], 16) % 4096 == 0 and len(s["sha256"]) == 64 and int(s["bufsz"], 16) <= int(s["memsz"], 16)
    entry = int(doc["entry"], 16)
    (purg,) = [s for s in doc["segments"] if s["role"] == "purgatory"]
    assert int(purg["mem"], 16) <= entry < int(purg["mem"], 16) + int(purg["memsz"], 16)


def test_dry_run_default_is_file_load_for_bzimage(capsys, bzimage_file, machine_file):
    code, out, _ = run(capsys, "-l", str(bzimage_file), "--machine", str(machine_file), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["backend"] == "kexec_file_load"
    assert [s["role"] for s in doc["segments"]] == ["kernel", "cmdline"] and doc["segments"][0]["mem"] is None


def test_elf_goes_to_kexec_load_by_default(capsys, machine_file, tmp_path):
    k = tmp_path / "vmlinux"
    k.write_bytes(make_elf_vmlinux([(0x1000000, b"x" * 100, 0x2000)], 0x1000000))
    code, out, err = run(capsys, "-l", str(k), "--machine", str(machine_file), "--json")
    assert code == 0, err
    assert json.loads(out)["backend"] == "kexec_load" and json.loads(out)["type"] == "elf-x86_64"
    code, _, err = run(capsys, "-s", "-l", str(k), "--machine", str(machine_file))
    assert code == 2 and "kexec_file_load cannot load elf-x86_64" in err


def test_text_plan_shows_memory_map(capsys, bzimage_file, machine_file):
    code, out, _ = run(capsys, "-c", "-l", str(bzimage_file), "--machine", str(machine_file))
    assert code == 0
    assert "System RAM" in out and "purgatory" in out and "memory map of" in out


@pytest.mark.parametrize("reuse_from,append,expect", [
    ("BOOT_IMAGE=/vmlinuz root=/dev/sda crashkernel=256M quiet", None, "root=/dev/sda quiet"),
    ("BOOT_IMAGE=/vmlinuz root=/dev/sda kexec_jump_back_entry=0x1234", "x=1", "root=/dev/sda x=1"),
    ('a="b c" crashkernel=1G,high d', None, 'a="b c" d'),
])
def test_reuse_cmdline(reuse_from, append, expect):
    assert kexec.compose_cmdline(reuse_from, True, append) == expect


def test_last_append_wins(capsys, bzimage_file, machine_file):
    code, out, _ = run(capsys, "-c", "-l", str(bzimage_file), "--append", "first", "--command-line", "second",
                       "--machine", str(machine_file), "--json")
    assert json.loads(out)["cmdline"] == "second"


@pytest.mark.parametrize("argv_tail,message,code", [
    ([], "nothing to do", 2),
    (["-l"], "no kernel image given", 2),
    (["-l", "/nonexistent/kernel"], "does not exist", 1),
    (["-l", "/"], "is a directory", 1),
    (["-l", "KERNEL", "--mem-min", "banana"], "not a number", 2),
    (["-l", "KERNEL", "--mem-min", "0x2000000", "--mem-max", "0x1000000"], "is above --mem-max", 2),
    (["-l", "KERNEL", "-t", "nbi-x86"], "unknown image type", 2),
    (["-l", "KERNEL", "--module", "foo"], "--module is for multiboot", 2),
    (["-l", "KERNEL", "-s", "-c"], "not allowed with", 2),
    (["-l", "-p", "KERNEL"], "exclusive", 2),
    (["-c", "-l", "KERNEL", "--append", "x" * 3000], "accepts at most 2047", 2),
    (["-p", "-c", "KERNEL"], "crash kernel region", 2),
    (["-c", "-l", "KERNEL", "--mem-max", "0x200000"], "no room for the kernel", 1),
])
def test_errors_are_one_line(capsys, bzimage_file, machine_file, argv_tail, message, code):
    argv = [str(bzimage_file) if a == "KERNEL" else a for a in argv_tail]
    if argv:
        argv += ["--machine", str(machine_file)]
    rc, out, err = run(capsys, *argv)
    assert rc == code
    assert message in err
    assert err.count("\n") == 1 and err.startswith("pykexec: ") and "Traceback" not in err


def test_garbage_image(capsys, tmp_path, machine_file):
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x7fELF" + b"\xff" * 200)
    rc, _, err = run(capsys, "-l", str(junk), "--machine", str(machine_file))
    assert rc == 1 and "cannot determine the image type" in err and err.count("\n") == 1


def test_no_traceback_from_the_console_script(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pykexec", "-l", str(tmp_path / "missing")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip().endswith("does not exist")
    assert "Traceback" not in proc.stderr


class _Recorder:
    """Stands in for the kernel's syscalls to test -a's decisions (the syscalls
    themselves are exercised in the VM tests)."""

    def __init__(self, file_errno: int) -> None:
        self.file_errno = file_errno
        self.calls: list[str] = []

    def kexec_file_load(self, kernel, initrd, cmdline, crash, *in_memory):
        self.calls.append("kexec_file_load")
        return self.file_errno

    def kexec_load(self, plan):
        self.calls.append(f"kexec_load:{plan.image_type}")


@pytest.mark.parametrize("file_errno,lockdown,expect_calls,rc,message", [
    (0, "none", ["kexec_file_load"], 0, None),
    (8, "none", ["kexec_file_load", "kexec_load:bzImage64"], 0, None),        # ENOEXEC: fall back
    (38, "none", ["kexec_file_load", "kexec_load:bzImage64"], 0, None),       # ENOSYS: fall back
    (129, "none", ["kexec_file_load"], 1, "signature was rejected"),         # EKEYREJECTED: never
    (8, "integrity", ["kexec_file_load"], 1, "not an option under lockdown"),
])
def test_auto_falls_back_only_when_allowed(monkeypatch, capsys, bzimage_file, tmp_path, file_errno, lockdown,
                                           expect_calls, rc, message):
    import json as _json

    from pykexec import machine_file
    from pykexec.backends import linux

    from support.synth_images import MACHINE_1G

    rec = _Recorder(file_errno)
    monkeypatch.setattr(linux, "kexec_file_load", rec.kexec_file_load)
    monkeypatch.setattr(linux, "kexec_load", rec.kexec_load)
    monkeypatch.setattr(kexec, "this_machine", lambda: machine_file.from_dict(dict(MACHINE_1G, lockdown=lockdown)))
    # -d too: the plan is printed on stderr before a kexec_load
    code, _, err = run(capsys, "-d", "-l", str(bzimage_file), "--append", "x")
    assert (code, rec.calls) == (rc, expect_calls), err
    if "kexec_load:bzImage64" in rec.calls:
        assert "backend: kexec_load" in err and "purgatory" in err
    if message:
        assert message in err and err.count("\n") == 1


def test_einval_names_the_segment():
    from pykexec.backends.linux import diagnose_einval, explain
    from pykexec.plan import LoadPlan, Segment

    plan = LoadPlan("bzImage64", "kexec_load", entry=0x100000, segments=[
        Segment("kernel", 0x1000000, 0x2000000, b"k"), Segment("initrd", 0x3F000000, 0x100000, b"i")])
    iomem = "00001000-0009fbff : System RAM\n00100000-3effffff : System RAM\n3f000000-3fffffff : Reserved\n"
    assert "initrd segment 0x3f000000-0x3f0fffff is not all System RAM" in diagnose_einval(plan, iomem, "")
    ok_iomem = "00100000-3fffffff : System RAM\n"
    assert "more than half" in diagnose_einval(plan, ok_iomem, "MemTotal:   60000 kB\n")
    assert "no segment breaks" in diagnose_einval(plan, ok_iomem, "MemTotal: 1000000 kB\n")
    assert explain(22, "kexec_load", plan).startswith("kexec_load failed: the kernel rejected the segments (EINVAL): ")


def test_machine_file_never_acts_on_this_machine(capsys, machine_file):
    rc, out, _ = run(capsys, "-e", "--machine", str(machine_file))
    assert rc == 0 and "would execute" in out
    rc, out, _ = run(capsys, "-u", "--machine", str(machine_file))
    assert rc == 0 and "would unload" in out
    rc, _, err = run(capsys, "-S", "--machine", str(machine_file))
    assert rc == 2 and "--machine only describes" in err
