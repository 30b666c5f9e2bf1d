"""`pykexec vmcore info` on a synthetic dump: notes, registers, VMCOREINFO keys."""

import ctypes
import json
import struct
from pathlib import Path

from pykexec.layouts import elf as E
from pykexec.vmcore import cli

from support.vmcore_synth import Memory, base_vmcoreinfo, write_core


def test_prstatus_layout():
    st = E.Elf64_Prstatus_x86_64
    assert ctypes.sizeof(st) == 336
    assert (st.pr_pid.offset, st.pr_reg.offset, st.pr_fpvalid.offset) == (32, 112, 328)
    assert E.X86_64_REGISTERS.index("rip") == 16 and len(E.X86_64_REGISTERS) == 27


def test_info_json_and_text(tmp_path: Path, capsys):
    st = E.Elf64_Prstatus_x86_64(pr_pid=4242)
    st.pr_reg[E.X86_64_REGISTERS.index("rip")] = 0xFFFFFFFF81234567
    st.pr_reg[E.X86_64_REGISTERS.index("rsp")] = 0xFFFFC90000123F00
    second_cpu = E.pack_note(b"CORE", E.NT_PRSTATUS, bytes(st))
    core = write_core(tmp_path / "core", Memory.standard(), "\n".join(base_vmcoreinfo()) + "\n",
                      extra_notes=second_cpu)
    assert cli.main(["info", "--json", str(core)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["machine"] == "x86_64" and doc["loads"] == 2
    assert [n["name"] for n in doc["notes"]] == ["CORE", "VMCOREINFO", "CORE"]
    assert [c["cpu"] for c in doc["cpus"]] == [0, 1]
    assert doc["cpus"][1]["pid"] == 4242
    assert doc["cpus"][1]["registers"]["rip"] == "0xffffffff81234567"
    assert doc["osrelease"] == "6.1.0-synthetic" and doc["crashtime"] == 1700000000
    assert doc["vmcoreinfo"]["PAGESIZE"] == "4096"
    assert cli.main(["info", str(core)]) == 0
    text = capsys.readouterr().out
    assert "cpu 1: pid 4242 rip 0xffffffff81234567 rsp 0xffffc90000123f00" in text


def test_info_errors(tmp_path: Path, capsys):
    assert cli.main(["info"]) == 2
    assert "expected exactly one dump file" in capsys.readouterr().err
    assert cli.main(["info", "--bogus", "x"]) == 2
    assert cli.main(["info", str(tmp_path)]) == 1
    assert "is a directory" in capsys.readouterr().err


def test_info_xen_section(tmp_path: Path, capsys):
    from pykexec.layouts import xen as X

    crash_info = struct.pack("<10Q", 4, 17, 0x7FD00000, 0, 0, 0, 0, 0, 0x7F800000, 0x12345000)
    notes = (E.pack_note(b"Xen", X.XEN_ELFNOTE_CRASH_INFO, crash_info)
             + E.pack_note(b"VMCOREINFO_XEN", 0, b"XEN_VERSION_MAJOR=4\nXEN_VERSION_MINOR=17\n")
             + E.pack_note(E.PYKEXEC_NOTE_NAME, E.NT_PYKEXEC_XEN_PHYS_START, struct.pack("<Q", 0x7F800000)))
    core = write_core(tmp_path / "core", Memory.standard(), "\n".join(base_vmcoreinfo()) + "\n", extra_notes=notes)
    assert cli.main(["info", "--json", str(core)]) == 0
    xen = json.loads(capsys.readouterr().out)["xen"]
    assert xen["version"] == "4.17" and xen["xen_phys_start"] == "0x7f800000"
    assert xen["xen_phys_start_from"] == "xen crash info" and xen["xen_phys_start_at_load"] == "0x7f800000"
    assert xen["dom0_p2m_root"] == "0x12345000" and xen["vmcoreinfo"]["XEN_VERSION_MINOR"] == "17"
    # an old Xen (64-byte crash info): xen_phys_start comes from our note
    old = E.pack_note(b"Xen", X.XEN_ELFNOTE_CRASH_INFO, crash_info[:64]) + notes[len(
        E.pack_note(b"Xen", X.XEN_ELFNOTE_CRASH_INFO, crash_info)):]
    core = write_core(tmp_path / "old", Memory.standard(), "\n".join(base_vmcoreinfo()) + "\n", extra_notes=old)
    assert cli.main(["info", "--json", str(core)]) == 0
    xen = json.loads(capsys.readouterr().out)["xen"]
    assert xen["xen_phys_start"] == "0x7f800000" and xen["xen_phys_start_from"] == "pykexec note (load time)"
    assert "dom0_p2m_root" not in xen


def test_info_on_a_dump_cut_short(tmp_path: Path, capsys):
    """PT_LOADs past the end of the file (a copy stopped by a full disk): a line on stderr says
    the dump is incomplete, where the file ends and what is missing, the description as far as
    it can be read, exit 1 (--json: the line on stderr too, and as "incomplete")."""
    core = write_core(tmp_path / "core", Memory.standard(), "\n".join(base_vmcoreinfo()) + "\n")
    data = core.read_bytes()
    (phoff,) = struct.unpack_from("<Q", data, 32)
    (phnum,) = struct.unpack_from("<H", data, 56)
    loads = [E.PHDR64_FMT.unpack_from(data, phoff + i * E.PHDR64_FMT.size) for i in range(phnum)]
    last = max((ph for ph in loads if ph[0] == E.PT_LOAD), key=lambda ph: ph[2])
    offset, filesz = last[2], last[5]
    total = sum(ph[5] for ph in loads if ph[0] == E.PT_LOAD)
    cut = offset + filesz // 2
    core.write_bytes(data[:cut])
    said = (f"pykexec: DUMP INCOMPLETE: the file ends at byte {cut}, inside PT_LOAD 2 of 2 "
            f"({(filesz - filesz // 2) / (1 << 20):.1f} of {total / (1 << 20):.1f} MiB of memory missing, "
            "in 1 of 2 PT_LOADs)\n")
    assert cli.main(["info", str(core)]) == 1
    out, err = capsys.readouterr()
    assert out.startswith(f"{core}: elf64 x86_64 dump, 2 PT_LOADs") and "vmcoreinfo:" in out and err == said
    assert cli.main(["info", "--json", str(core)]) == 1
    out, err = capsys.readouterr()
    described = json.loads(out)
    assert described["osrelease"] == "6.1.0-synthetic" and err == said and described["incomplete"] == said[26:-1]
