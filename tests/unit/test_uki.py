"""Unified Kernel Images: the PE layout against known bytes, PE checks, and UKIs built
by objcopy unpacked as systemd-stub unpacks them (sections, profiles, addons, initrd
order, command line rules) through the real command line's --dry-run."""

from __future__ import annotations

import ctypes
import hashlib
import json
import struct
from pathlib import Path

import pytest

from pykexec import cli, images
from pykexec.errors import ImageFormatError
from pykexec.images import pe_file, uki, uki_unpack
from pykexec.layouts import pe

from support.synth_images import MACHINE_1G, make_bzimage
from support.uki_synth import build_uki, minimal_pe_stub

KERNEL = make_bzimage()
OSREL = b'NAME=Test\nPRETTY_NAME="Test OS 1 (\\"quoted\\")"\nID=test\n'


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def plan_json(capsys, machine: Path, *argv: str) -> dict:
    code, out, err = run(capsys, "-l", *argv, "--machine", str(machine), "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def machine(tmp_path: Path) -> Path:
    path = tmp_path / "machine.json"
    path.write_text(json.dumps(MACHINE_1G))
    return path


def make(tmp_path: Path, name: str, *sections: tuple[str, bytes]) -> Path:
    return build_uki(tmp_path / name, sections)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the layout, against bytes written by hand ------------------------------------------

def test_layout_against_known_bytes():
    coff = bytes.fromhex("6486 0300 78563412 00000000 00000000 f000 2202")
    h = pe.CoffFileHeader.from_buffer_copy(coff)
    assert (h.machine, h.number_of_sections, h.time_date_stamp, h.size_of_optional_header, h.characteristics) == \
        (0x8664, 3, 0x12345678, 0xF0, 0x0222)
    sec = (b".linux\0\0" + bytes.fromhex("88130000 00000002 00140000 00180100") + bytes(12)
           + bytes.fromhex("40000040"))
    s = pe.SectionHeader.from_buffer_copy(sec)
    assert (s.name, s.virtual_size, s.virtual_address, s.size_of_raw_data, s.pointer_to_raw_data) == \
        (b".linux", 0x1388, 0x2000000, 0x1400, 0x11800)
    assert s.characteristics == 0x40000040 and ctypes.sizeof(s) == 40
    assert bytes(s) == sec


def test_minimal_stub_parses():
    f = pe_file.parse(minimal_pe_stub())
    assert f.machine == pe.MACHINE_X86_64 and [s.name for s in f.sections] == [".text"]
    assert uki.probe(minimal_pe_stub()) == "a PE file without a .linux section (not a UKI)"


# --- a plain UKI ------------------------------------------------------------------------

def test_uki_default_plan_uses_embedded_cmdline_and_initrd(capsys, tmp_path, machine):
    path = make(tmp_path, "uki.efi", (".osrel", OSREL), (".cmdline", b"console=ttyS0 uki=1\n"),
                (".linux", KERNEL), (".initrd", b"I" * 1001), (".ucode", b"U" * 10))
    assert images.select(path.read_bytes()).name == "uki"
    doc = plan_json(capsys, machine, str(path))
    assert doc["type"] == "uki" and doc["backend"] == "kexec_file_load"
    assert doc["cmdline"] == "console=ttyS0 uki=1"  # the newline mangled away, as systemd-stub does
    u = doc["uki"]
    assert u["pretty_name"] == 'Test OS 1 ("quoted")' and u["cmdline_from"] == ".cmdline (base)"
    assert {s["section"]: (s["size"], s["sha256"]) for s in u["sections"]}[".linux"] == (len(KERNEL), sha(KERNEL))
    order = [p["section"] for p in u["initrd"]]
    assert order == [".ucode", ".initrd", ".osrel as /.extra/os-release"]
    # The kernel gets .linux itself, and the parts concatenated, each padded to 4 bytes.
    segs = {s["role"]: s for s in doc["segments"]}
    assert segs["kernel"]["sha256"] == sha(KERNEL)
    extra = uki_unpack.extra_cpio("os-release", OSREL)
    assert segs["initrd"]["sha256"] == sha(b"U" * 10 + bytes(2) + b"I" * 1001 + bytes(3) + extra)
    assert b".extra/os-release\0" in extra and extra.endswith(bytes(-len(extra) % 4)) and OSREL in extra


def test_uki_through_kexec_load_and_crash(capsys, tmp_path, machine):
    path = make(tmp_path, "uki.efi", (".cmdline", b"a=1"), (".linux", KERNEL), (".initrd", b"I" * 4096))
    doc = plan_json(capsys, machine, "-c", str(path))
    assert doc["type"] == "uki" and doc["backend"] == "kexec_load" and doc["cmdline"] == "a=1"
    segs = {s["role"]: s for s in doc["segments"]}
    assert segs["initrd"]["sha256"] == sha(b"I" * 4096)
    assert segs["kernel"]["sha256"] == sha(KERNEL[(4 + 1) * 512:])  # the protected-mode part of .linux
    crash = dict(MACHINE_1G, crash_kernel={"start": "0x2c000000", "end": "0x2dffffff"})
    cm = tmp_path / "crash.json"
    cm.write_text(json.dumps(crash))
    code, out, err = run(capsys, "-p", "-c", str(path), "--machine", str(cm), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["crash"] and doc["type"] == "uki" and doc["cmdline"].startswith("a=1")


def test_given_cmdline_and_initrd(capsys, tmp_path, machine):
    path = make(tmp_path, "uki.efi", (".cmdline", b"embedded=1"), (".linux", KERNEL), (".initrd", b"B" * 8),
                (".ucode", b"U" * 4))
    mine = tmp_path / "mine.img"
    mine.write_bytes(b"M" * 8)
    doc = plan_json(capsys, machine, str(path), "--append", "given=1", "--initrd", str(mine))
    assert doc["cmdline"] == "given=1" and doc["uki"]["cmdline_from"].startswith("given")
    assert ".cmdline" not in [s["section"] for s in doc["uki"]["sections"]]
    # systemd-stub's order: .ucode, a boot loader's initrd (ours), then .initrd.
    assert [p["section"] for p in doc["uki"]["initrd"]] == [".ucode", "--initrd", ".initrd"]
    assert {s["role"]: s["sha256"] for s in doc["segments"]}["initrd"] == sha(b"U" * 4 + b"M" * 8 + b"B" * 8)


@pytest.mark.parametrize("machine_extra,why", [({"secure_boot": True}, "Secure Boot is on"),
                                               ({"lockdown": "integrity"}, "the kernel is locked down (integrity)")])
def test_locked_machine_ignores_given_cmdline(capsys, tmp_path, machine_extra, why):
    m = tmp_path / "m.json"
    m.write_text(json.dumps(dict(MACHINE_1G, **machine_extra)))
    path = make(tmp_path, "uki.efi", (".cmdline", b"embedded=1"), (".linux", KERNEL))
    code, out, err = run(capsys, "-l", str(path), "--append", "evil=1", "--machine", str(m))
    assert code == 0, err
    assert "command line: 'embedded=1'" in out and f"warning: the command line given was ignored: {why}" in out
    assert "note: the UKI's own signature is not verified" in out
    # Without a .cmdline to protect, the stub takes the given one (and so do we).
    bare = make(tmp_path, "bare.efi", (".linux", KERNEL))
    doc = plan_json(capsys, m, str(bare), "--append", "mine=1")
    assert doc["cmdline"] == "mine=1" and "warnings" not in doc
    addon = make(tmp_path, "a.addon.efi", (".cmdline", b"x=1"))
    code, _, err = run(capsys, "-l", str(path), "--uki-addon", str(addon), "--machine", str(m))
    assert code == 2 and "cannot check an addon's signature" in err and err.count("\n") == 1


# --- profiles and addons --------------------------------------------------------------------

@pytest.fixture
def profiled(tmp_path: Path) -> Path:
    return make(tmp_path, "multi.efi", (".osrel", OSREL), (".cmdline", b"base=1"), (".linux", KERNEL),
                (".initrd", b"I" * 8),
                (".profile", b"ID=default\nTITLE=Default\n"),
                (".profile", b"ID=rescue\nTITLE=Rescue\n"), (".cmdline", b"base=1 rescue=1"),
                (".profile", b"ID=other\n"), (".initrd", b"J" * 8))


def test_profiles(capsys, profiled, machine):
    doc = plan_json(capsys, machine, str(profiled))
    assert doc["cmdline"] == "base=1" and doc["uki"]["profile"] == 0 and doc["uki"]["profiles"] == 3
    assert doc["uki"]["profile_title"] == "Default"
    doc = plan_json(capsys, machine, str(profiled), "--uki-profile", "1")
    assert doc["cmdline"] == "base=1 rescue=1" and doc["uki"]["cmdline_from"] == ".cmdline (profile 1)"
    assert doc["uki"]["profile_title"] == "Rescue"
    doc = plan_json(capsys, machine, str(profiled), "--uki-profile", "2")
    assert doc["cmdline"] == "base=1"  # profile 2 overrides .initrd only
    parts = {p["section"]: p for p in doc["uki"]["initrd"]}
    assert parts[".initrd"]["from"] == "profile 2" and parts[".initrd"]["sha256"] == sha(b"J" * 8)
    assert ".profile as /.extra/profile" in parts
    code, _, err = run(capsys, "-l", str(profiled), "--uki-profile", "3", "--machine", str(machine))
    assert code == 2 and "no UKI profile 3: it has profiles 0-2" in err


def test_addons(capsys, tmp_path, profiled, machine):
    one = make(tmp_path, "one.addon.efi", (".cmdline", b"addon=1\n"), (".initrd", b"A" * 4))
    two = make(tmp_path, "two.addon.efi", (".cmdline", b"addon=2"), (".ucode", b"V" * 4),
               (".uname", b"6.1.0-test\0"))
    doc = plan_json(capsys, machine, str(profiled), "--uki-profile", "1", "--uki-addon", str(one),
                    "--uki-addon", str(two))
    assert doc["cmdline"] == "base=1 rescue=1 addon=1 addon=2"
    assert doc["uki"]["addons"] == [str(one), str(two)]
    order = [(p["section"], p["from"]) for p in doc["uki"]["initrd"]]
    assert order[0] == (".ucode", str(two)) and order[-1] == (".initrd", str(one))
    # Addons are appended to a given command line too.
    doc = plan_json(capsys, machine, str(profiled), "--append", "mine=1", "--uki-addon", str(one))
    assert doc["cmdline"] == "mine=1 addon=1"


@pytest.mark.parametrize("sections,message", [
    (((".cmdline", b"x"), (".linux", KERNEL)), "is a UKI (it has a .linux section), not an addon"),
    (((".osrel", b"ID=x"),), "has none of the sections an addon carries"),
    (((".cmdline", b"x"), (".uname", b"5.10.0")), "is for kernel '5.10.0', the UKI's .uname is '6.1.0-test'"),
])
def test_bad_addons(capsys, tmp_path, machine, sections, message):
    path = make(tmp_path, "uki.efi", (".linux", KERNEL), (".uname", b"6.1.0-test"))
    addon = make(tmp_path, "bad.addon.efi", *sections)
    code, _, err = run(capsys, "-l", str(path), "--uki-addon", str(addon), "--machine", str(machine))
    assert code == 1 and message in err and err.count("\n") == 1


def test_uki_options_need_a_uki(capsys, bzimage_file, machine):
    code, _, err = run(capsys, "-l", str(bzimage_file), "--uki-profile", "1", "--machine", str(machine))
    assert code == 2 and "are for UKIs" in err


# --- bad PE files: one line, nothing planned --------------------------------------------------

def _section_table(data: bytes) -> int:
    lfanew = struct.unpack_from("<I", data, 0x3C)[0]
    return lfanew + 24 + struct.unpack_from("<H", data, lfanew + 20)[0]


def _find(data: bytes, name: bytes) -> int:
    table = _section_table(data)
    for i in range(struct.unpack_from("<H", data, struct.unpack_from("<I", data, 0x3C)[0] + 6)[0]):
        if data[table + 40 * i:table + 40 * i + 8].rstrip(b"\0") == name:
            return table + 40 * i
    raise KeyError(name)


def _patched(data: bytes, name: bytes, field_offset: int, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<I", out, _find(data, name) + field_offset, value)
    return bytes(out)


def test_bad_pe_files(capsys, tmp_path, machine):
    good = make(tmp_path, "uki.efi", (".cmdline", b"a=1"), (".linux", KERNEL), (".initrd", b"I" * 600)).read_bytes()
    linux = _find(good, b".linux")
    initrd_off = struct.unpack_from("<I", good, _find(good, b".initrd") + 20)[0]
    cases = {
        "cut.efi": (good[:len(good) - 700], "PE section '.initrd' lies outside the file"),
        "head.efi": (good[:0x50], "cut short: its PE header"),
        "table.efi": (good[:_section_table(good) + 50], "cut short: its 4 section headers"),
        "nolinux.efi": (good[:linux] + b".linuy" + good[linux + 6:], "cannot determine the image type"),
        "outside.efi": (_patched(good, b".initrd", 20, len(good) + 0x1000), "beyond the end of the file"),
        "overlap.efi": (_patched(good, b".initrd", 20, struct.unpack_from("<I", good, linux + 20)[0]),
                        "overlap in the file"),
        "vmoverlap.efi": (_patched(good, b".initrd", 12, struct.unpack_from("<I", good, linux + 12)[0] + 0x10),
                          "overlap in memory"),
        "headers.efi": (_patched(good, b".initrd", 20, 0x10), "overlaps the headers"),
        "huge.efi": (_patched(good, b".initrd", 8, 0x7FFFFFFF), "claims 0x7fffffff bytes in memory"),
        "zeros.efi": (_patched(good, b".initrd", 8, 0x200000), "more than 1 MiB of zeros"),
    }
    assert initrd_off > 0
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        for backend in ("-s", "-c"):
            code, out, err = run(capsys, "-l", backend, "-t", "uki", str(path), "--machine", str(machine)) \
                if name != "nolinux.efi" else run(capsys, "-l", backend, str(path), "--machine", str(machine))
            assert code == 1 and message in err and err.count("\n") == 1 and not out, (name, err)
    # -t uki names what is missing.
    path = tmp_path / "nolinux.efi"
    code, _, err = run(capsys, "-l", "-t", "uki", str(path), "--machine", str(machine))
    assert code == 1 and "without a .linux section" in err


def test_pe_errors_name_the_rule():
    with pytest.raises(ImageFormatError, match="no 'MZ'"):
        pe_file.parse(b"\x7fELF" + bytes(100))
    with pytest.raises(ImageFormatError, match="not PE"):
        pe_file.parse(b"MZ" + bytes(0x3E))


def test_bzimage_is_not_taken_for_a_uki(tmp_path):
    """A bzImage is a PE file too (its EFI stub), without .linux: it stays a bzImage."""
    assert images.select(make_bzimage()).name == "bzImage64"


def test_mangle_and_os_release():
    assert uki_unpack.mangle_cmdline("a=1\nb=2\n\n") == "a=1 b=2"
    assert uki_unpack.section_text(b"a=1\0garbage") == "a=1"
    assert uki_unpack.os_release_field("ID=x\nPRETTY_NAME='Y Z'\n", "PRETTY_NAME") == "Y Z"
    assert uki_unpack.os_release_field("ID=x\n", "PRETTY_NAME") is None
