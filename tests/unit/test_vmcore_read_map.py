"""How ``vmcore save`` copies pages out of a dump (:meth:`ElfCore.readinto`): from maps of
windows of /proc/vmcore on x86_64 (:class:`~pykexec.vmcore.mapping.MapWindows`), with
pread(2) otherwise; both give the same dump, and a window that cannot be mapped is read
with pread."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from pykexec.vmcore import elfcore, mapping
from pykexec.vmcore.elfcore import ElfCore
from pykexec.vmcore.save import save

from test_vmcore_save_synth import PAGE, machine


def _save_bytes(src: Path, dst: Path, monkeypatch: pytest.MonkeyPatch, how: str, fmt: str) -> bytes:
    monkeypatch.setenv("PYKEXEC_VMCORE_READ", how)
    save(str(src), str(dst), progress=False, fmt=fmt, threads=1)
    return dst.read_bytes()


@pytest.fixture
def small_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows of 16 pages, 3 kept: the synthetic dump spans many, and they get dropped."""
    monkeypatch.setattr(mapping, "WINDOW", 16 * PAGE)
    monkeypatch.setattr(mapping, "KEEP", 3)


@pytest.mark.parametrize("fmt", ["kdump", "elf"])
def test_map_and_pread_write_the_same_dump(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_windows: None,
                                           fmt: str) -> None:
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


def test_windows_give_the_file_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_windows: None) -> None:
    src, _ = machine(tmp_path)
    raw = src.read_bytes()
    win = mapping.MapWindows(str(src), 64, lambda size: "small")
    try:
        assert win.size == len(raw)
        cases = [(0, 64), (16 * PAGE - 8, 16), (5 * PAGE + 3, 40 * PAGE), (len(raw) - 10, 100), (len(raw), 8)]
        for offset, size in cases * 2:   # twice: from kept windows and from dropped ones
            assert bytes(win.view(offset, size)) == raw[offset:offset + size]
            buf = bytearray(size)
            assert win.readinto(memoryview(buf), offset) == len(raw[offset:offset + size])
            assert bytes(buf[:len(raw[offset:offset + size])]) == raw[offset:offset + size]
        assert len(win._windows) <= mapping.KEEP
        held = win.view(PAGE, 8)   # a view still alive when the windows close
    finally:
        win.close()
    assert bytes(held) == raw[PAGE:PAGE + 8]


def test_window_that_cannot_be_mapped_is_read_with_pread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         small_windows: None) -> None:
    src, _ = machine(tmp_path)
    expected = _save_bytes(src, tmp_path / "pread", monkeypatch, "pread", "kdump")

    def no_map(*args: object, **kwargs: object) -> None:
        raise OSError(11, "Resource temporarily unavailable")   # mmap_vmcore's -EAGAIN

    monkeypatch.setattr(mapping.mmap, "mmap", no_map)
    assert _save_bytes(src, tmp_path / "map", monkeypatch, "map", "kdump") == expected
