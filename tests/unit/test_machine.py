import json

import pytest

from pykexec import machine_file, probe
from pykexec.errors import InputError, MachineError
from pykexec.memory import MemType, Range

IOMEM = """\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-0009ffff : Reserved
000a0000-000bffff : PCI Bus 0000:00
000f0000-000fffff : Reserved
  000f0000-000fffff : System ROM
00100000-3ffdffff : System RAM
  01000000-01e00e76 : Kernel code
  2c000000-3bffffff : Crash kernel
3ffe0000-3fffffff : Reserved
fee00000-fee00fff : Local APIC
"""


def test_parse_iomem_top_level_and_nested():
    mm, entries = probe.parse_iomem(IOMEM)
    assert mm.ram() == [Range(0x1000, 0x9FC00), Range(0x100000, 0x3FFE0000)]
    assert mm.type_at(0xA0000) is None  # PCI windows are not memory
    crash = [r for depth, r, name in entries if name == "Crash kernel"]
    assert crash == [Range(0x2C000000, 0x3C000000)] and entries[7] == (1, Range(0x1000000, 0x1E00E77), "Kernel code")


def test_parse_iomem_errors():
    with pytest.raises(MachineError, match="as root"):
        probe.parse_iomem("00000000-00000000 : System RAM\n00000000-00000000 : Reserved\n")
    with pytest.raises(InputError, match="line 2"):
        probe.parse_iomem("00000000-00000fff : Reserved\nnonsense\n")


def test_firmware_memmap(tmp_path):
    for i, (s, e, t) in enumerate([(0, 0x9FBFF, "System RAM"), (0x9FC00, 0x9FFFF, "Reserved"),
                                   (0x100000, 0x3FFDFFFF, "System RAM"), (0x3FFE0000, 0x3FFFFFFF, "ACPI Tables")]):
        d = tmp_path / str(i)
        d.mkdir()
        (d / "start").write_text(hex(s) + "\n")
        (d / "end").write_text(hex(e) + "\n")
        (d / "type").write_text(t + "\n")
    mm = probe.read_firmware_memmap(tmp_path)
    assert mm is not None and len(mm) == 4 and mm.type_at(0x3FFE0000) is MemType.ACPI
    assert probe.read_firmware_memmap(tmp_path / "missing") is None


def test_lockdown_parse():
    assert probe.parse_lockdown("none [integrity] confidentiality\n") == "integrity"
    assert probe.parse_lockdown("[none] integrity confidentiality") == "none"
    assert probe.parse_lockdown(None) == "none"


def test_machine_file_round_trip(tmp_path):
    data = {"memory": [{"start": "0x1000", "end": "0x9fbff", "type": "System RAM"},
                       {"start": "0x100000", "end": "0x3fffffff", "type": "System RAM"}],
            "crash_kernel": {"start": "0x20000000", "end": "0x2fffffff"},
            "xen": {"version": "4.17", "xen_start": "0x200000", "cpus": 2},
            "cmdline": "console=ttyS0", "lockdown": True}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    m = machine_file.load(path)
    assert m.crash_kernel == Range(0x20000000, 0x30000000)
    assert m.xen.xen_start == 0x200000 and m.xen.cpus == 2 and m.lockdown == "integrity"
    again = machine_file.from_dict(machine_file.to_dict(m))
    assert again.memory.regions == m.memory.regions and again.crash_kernel == m.crash_kernel


@pytest.mark.parametrize("data,message", [
    ([], "top level must be a JSON object"),
    ({}, "non-empty list"),
    ({"memory": [{"start": "0x0"}]}, "expected"),
    ({"memory": [{"start": "zz", "end": "0x10"}]}, "not a number"),
    ({"memory": [{"start": "0x10", "end": "0x0"}]}, "below start"),
    ({"memory": [{"start": "0x0", "end": "0xfff", "type": "Banana"}]}, "not a memory type"),
    ({"memory": [{"start": "0x0", "end": "0xfff", "type": "Reserved"}]}, "no System RAM"),
    ({"memory": [{"start": "0x0", "end": "0xffff"}], "crash_kernel": {"start": "0x10000", "end": "0x1ffff"}},
     "not inside System RAM"),
    ({"memory": [{"start": "0x0", "end": "0xffff"}, {"start": "0x800", "end": "0x1ffff", "type": "ACPI Tables"}]},
     "overlap"),
    ({"memory": [{"start": "0x0", "end": "0xffff"}], "bogus": 1}, "unknown key"),
    ({"memory": [{"start": "0x0", "end": "0xffff"}], "lockdown": "maybe"}, "lockdown must be"),
    ({"memory": [{"start": -1, "end": "0xffff"}]}, "outside the 64-bit"),
])
def test_machine_file_errors(data, message):
    with pytest.raises(InputError, match=message):
        machine_file.from_dict(data)


def test_machine_file_unreadable(tmp_path):
    with pytest.raises(InputError, match="cannot read machine file"):
        machine_file.load(tmp_path / "nope.json")
    with pytest.raises(InputError, match="is a directory"):
        machine_file.load(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="invalid JSON at line 1"):
        machine_file.load(bad)
