"""Fuzz what describes the machine: ``--machine`` files (from_dict with arbitrary JSON
values, load with arbitrary bytes), /proc/iomem, and the sysfs readers on generated trees
(/sys/firmware/memmap, /sys/firmware/efi, crash notes and VMCOREINFO, /proc/kcore)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.fuzzlib import INTERESTING, fuzz_settings, mutated, outcome
from support.synth_images import MACHINE_1G

from pykexec import crash, machine, machine_file, probe
from pykexec.memory import MemType


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="pykexec-fuzz-") as d:
        yield Path(d)


# JSON values of every kind, numbers at the edges of 64 bits.
_SCALARS = st.one_of(st.none(), st.booleans(), st.sampled_from(INTERESTING), st.integers(-(1 << 70), 1 << 70),
                     st.floats(allow_nan=False), st.text(max_size=12),
                     st.sampled_from(("0x0", "0x100000", "0xffffffffffffffff", "0x10000000000000000", "-0x1",
                                      "0b101", "1_000", " 0x10 ", "System RAM", "reserved", "")))
JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
_ADDR = st.sampled_from(("0x0", "0x9fbff", "0x100000", "0x3ffdffff", "0x20000000", "0x2fffffff", "0xffffffffffffffff"))
_TYPES = st.sampled_from([t.label for t in MemType] + ["system ram", "RAM", "", "Crash kernel"])


@st.composite
def regions(draw: st.DrawFn) -> dict[str, object]:
    r: dict[str, object] = {"start": draw(_ADDR | JSON), "end": draw(_ADDR | JSON)}
    if draw(st.booleans()):
        r["type"] = draw(_TYPES | JSON)
    return r


@st.composite
def machine_dicts(draw: st.DrawFn) -> object:
    """MACHINE_1G with keys replaced, dropped or added; sometimes any JSON at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    d: dict[str, object] = json.loads(json.dumps(MACHINE_1G))
    for key in draw(st.lists(st.sampled_from(("memory", "crash_kernel", "xen", "cmdline", "lockdown", "acpi_rsdp",
                                              "dump", "secure_boot", "bogus")), max_size=3)):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            d.pop(key, None)
        elif key == "memory":
            d[key] = draw(st.lists(regions(), max_size=4)) if choice == 1 else list(d.get(key) or []) + [draw(regions())]
        elif key == "crash_kernel":
            d[key] = draw(regions())
        elif key == "dump":
            d[key] = {"cpu_notes": draw(st.lists(regions(), max_size=2)), "vmcoreinfo": draw(regions() | JSON),
                      "kernel_image": draw(st.fixed_dictionaries({"vaddr": _ADDR | JSON, "paddr": _ADDR,
                                                                  "size": _ADDR}) | JSON),
                      "page_offset": draw(_ADDR | JSON), "kernel_release": draw(JSON)}
        elif key == "xen":
            d[key] = draw(st.fixed_dictionaries({"version": JSON, "xen_start": _ADDR | JSON,
                                                 "xen_end": _ADDR | JSON, "cpus": JSON}) | JSON)
        else:
            d[key] = draw(JSON)
    return d


@fuzz_settings(400)
@given(data=machine_dicts())
def test_machine_from_dict(data: object) -> None:
    m = outcome(machine_file.from_dict, data, "fuzz.json")
    if isinstance(m, machine.Machine):
        assert m.memory.ram()
        outcome(machine_file.to_dict, m)


@fuzz_settings(150)
@given(raw=machine_dicts().map(lambda d: json.dumps(d).encode())
       .flatmap(lambda b: mutated(b, max_mutations=2))
       | st.binary(max_size=64))
def test_machine_load(workdir: Path, raw: bytes) -> None:
    path = workdir / "machine.json"
    path.write_bytes(raw)
    outcome(machine_file.load, path)


# --- /proc/iomem --------------------------------------------------------------------------

_HEX = st.sampled_from(("0", "9fbff", "100000", "3ffdffff", "ffffffffffffffff", "10000000000000000", "", "g"))
_IOMEM_LINE = st.builds(lambda ind, a, b, sep, name: f"{' ' * ind}{a}-{b}{sep}{name}",
                        st.integers(0, 5), _HEX, _HEX, st.sampled_from((" : ", ":", " :  ")),
                        _TYPES | st.text(max_size=10))


@fuzz_settings(300)
@given(text=st.lists(_IOMEM_LINE | st.text(max_size=20), max_size=8).map("\n".join))
def test_parse_iomem(text: str) -> None:
    outcome(probe.parse_iomem, text)


# --- sysfs trees ---------------------------------------------------------------------------

# What a sysfs attribute might hold: a number in any spelling, junk, binary, or not a file.
_ATTR = st.one_of(st.sampled_from(("0x1000\n", "1000\n", "0\n", "ffffffffffffffff\n", "0x\n", "-1\n", "",
                                   "System RAM\n", "Reserved\n", "0x1000 0x100\n", "1000 100\n", "0-3\n",
                                   "0,2-1\n", "5-\n", "a-b\n")),
                  st.text(max_size=12), st.binary(max_size=8), st.just(None), st.just("<dir>"))


def _write_tree(root: Path, files: dict[str, object]) -> None:
    """Create ``files`` (relative path -> content; None: absent; "<dir>": a directory)."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if content is None or p.exists():
            continue
        if content == "<dir>":
            p.mkdir()
        elif isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(str(content))


@fuzz_settings(100)
@given(entries=st.lists(st.tuples(st.sampled_from(("0", "1", "10", "x")), _ATTR, _ATTR, _ATTR), max_size=4))
def test_read_firmware_memmap(workdir: Path, entries: list[tuple[str, object, object, object]]) -> None:
    files = {}
    for name, start, end, kind in entries:
        files.update({f"{name}/start": start, f"{name}/end": end, f"{name}/type": kind})
    root = workdir / "memmap"
    _write_tree(root, files)
    outcome(probe.read_firmware_memmap, root)


@fuzz_settings(100)
@given(attrs=st.fixed_dictionaries({"fw_vendor": _ATTR, "runtime": _ATTR, "config_table": _ATTR,
                                    "systab": _ATTR | st.just("ACPI20=0x7fb7e014\nSMBIOS=0xnothex\n"),
                                    "runtime-map/0/type": _ATTR, "runtime-map/0/phys_addr": _ATTR,
                                    "runtime-map/0/virt_addr": _ATTR, "runtime-map/0/num_pages": _ATTR,
                                    "runtime-map/0/attribute": _ATTR, "runtime-map/x": _ATTR}),
       boot_params=st.none() | st.binary(max_size=8) | st.just(bytes(0x1C0) + b"\x01" * 32 + bytes(0xE20)))
def test_read_efi(workdir: Path, attrs: dict[str, object], boot_params: bytes | None) -> None:
    root = workdir / "efi"
    _write_tree(root, attrs)
    outcome(probe.read_efi, boot_params, root)


@fuzz_settings(100)
@given(possible=_ATTR, cpus=st.dictionaries(st.integers(0, 3), st.tuples(_ATTR, _ATTR), max_size=3),
       vmcoreinfo=_ATTR, kcore=st.binary(max_size=256))
def test_probe_dump_sources(workdir: Path, possible: object, cpus: dict[int, tuple[object, object]],
                            vmcoreinfo: object, kcore: bytes) -> None:
    files: dict[str, object] = {"devices/system/cpu/possible": possible, "kernel/vmcoreinfo": vmcoreinfo}
    for n, (notes, size) in cpus.items():
        files[f"devices/system/cpu/cpu{n}/crash_notes"] = notes
        files[f"devices/system/cpu/cpu{n}/crash_notes_size"] = size
    root = workdir / "sys"
    _write_tree(root, files)
    (workdir / "kcore").write_bytes(kcore)
    outcome(crash.probe_dump_sources, root, workdir / "kcore")


def _kcore_seed() -> bytes:
    """A /proc/kcore-like ELF header: the kernel text mapping, the direct map, vmalloc."""
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    phdrs = [(1, 0xFFFFFFFF81000000, 0x1000000, 0x2000000), (1, 0xFFFF888000000000, 0, 1 << 30),
             (1, 0xFFFFC90000000000, (1 << 64) - 1, 1 << 40)]
    out = ident + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, len(phdrs), 0, 0, 0)
    for kind, vaddr, paddr, size in phdrs:
        out += struct.pack("<IIQQQQQQ", kind, 7, 0, vaddr, paddr, size, size, 0x1000)
    return out


@fuzz_settings(200)
@given(data=mutated(_kcore_seed(), hot=(32, 54, 56) + tuple(64 + 56 * k + f for k in range(3) for f in (0, 16, 24, 40))))
def test_read_kcore_layout(workdir: Path, data: bytes) -> None:
    path = workdir / "kcore"
    path.write_bytes(data)
    result = outcome(crash.read_kcore_layout, path)
    assert isinstance(result, tuple)


def test_kcore_phoff_beyond_off_t(workdir: Path) -> None:
    """Regression (found by the fuzzer): e_phoff >= 2**63 made seek() raise ValueError."""
    path = workdir / "kcore-far"
    path.write_bytes(_kcore_seed()[:32] + struct.pack("<Q", 1 << 63) + _kcore_seed()[40:])
    assert crash.read_kcore_layout(path) == (None, None)
