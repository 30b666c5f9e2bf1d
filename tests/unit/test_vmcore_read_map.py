"""How ``vmcore save`` copies pages out of a dump (:meth:`ElfCore.readinto`): from the
file's map for /proc/vmcore on x86_64, with pread(2) otherwise; both give the same dump."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from pykexec.vmcore import elfcore
from pykexec.vmcore.elfcore import ElfCore
from pykexec.vmcore.save import save

from test_vmcore_save_synth import PAGE, machine


def _save_bytes(src: Path, dst: Path, monkeypatch: pytest.MonkeyPatch, how: str, fmt: str) -> bytes:
    monkeypatch.setenv("PYKEXEC_VMCORE_READ", how)
    save(str(src), str(dst), progress=False, fmt=fmt, threads=1)
    return dst.read_bytes()


@pytest.mark.parametrize("fmt", ["kdump", "elf"])
def test_map_and_pread_write_the_same_dump(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    src, _ = machine(tmp_path)
    mapped = _save_bytes(src, tmp_path / "map", monkeypatch, "map", fmt)
    pread = _save_bytes(src, tmp_path / "pread", monkeypatch, "pread", fmt)
    assert mapped == pread and len(mapped) > 40 * PAGE


def test_map_copy_stops_at_the_end_of_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, _ = machine(tmp_path)
    raw = src.read_bytes()
    for how in ("map", "pread"):
        monkeypatch.setenv("PYKEXEC_VMCORE_READ", how)
        with ElfCore(src) as core:
            assert core.copy_from_map == (how == "map")
            buf = bytearray(3 * PAGE)
            assert core.readinto(memoryview(buf), len(raw) - PAGE) == PAGE
            assert bytes(buf[:PAGE]) == raw[-PAGE:] and not any(buf[PAGE:])
            assert core.readinto(memoryview(buf), len(raw) + PAGE) == 0


def test_only_procfs_on_x86_64_is_copied_from_the_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYKEXEC_VMCORE_READ", raising=False)
    regular = tmp_path / "core"
    regular.write_bytes(b"x")
    proc = "/proc/self/stat"   # any procfs file: /proc/vmcore exists only in a crash kernel
    monkeypatch.setattr(os, "uname", lambda: SimpleNamespace(machine="x86_64"))
    assert elfcore._copy_from_map(proc) and not elfcore._copy_from_map(str(regular))
    assert not elfcore._copy_from_map(str(tmp_path / "missing"))
    # s390's /proc/vmcore map has a fault handler that answers SIGBUS: pread elsewhere.
    monkeypatch.setattr(os, "uname", lambda: SimpleNamespace(machine="s390x"))
    assert not elfcore._copy_from_map(proc)
    monkeypatch.setenv("PYKEXEC_VMCORE_READ", "map")
    assert elfcore._copy_from_map(str(regular))
    monkeypatch.setenv("PYKEXEC_VMCORE_READ", "pread")
    monkeypatch.setattr(os, "uname", lambda: SimpleNamespace(machine="x86_64"))
    assert not elfcore._copy_from_map(proc)
