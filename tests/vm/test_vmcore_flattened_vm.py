"""makedumpfile's flattened format (``-F``) on the real cached 6.1 / 6.12 dumps (no VM
is booted once they are cached), against makedumpfile itself:

* its stream read by us: ``vmcore dmesg`` of ``makedumpfile -F`` output (kdump and
  ELF) equals vmcore-dmesg of the original, every page equals its normal output's;
* our stream rebuilt by ``makedumpfile -R``: byte for byte the file ``vmcore save``
  writes, and ``makedumpfile --dump-dmesg`` of it equals vmcore-dmesg;
* our reassembly of its streams: byte for byte what ``makedumpfile -R`` rebuilds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pykexec.vmcore.kdump import KdumpFile
from pykexec.vmcore.open import open_dump


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{name} not installed")
    assert path is not None
    return path


def _pykexec(*args: str, stdout: object = subprocess.PIPE) -> subprocess.CompletedProcess[bytes]:
    res = subprocess.run([sys.executable, "-m", "pykexec", "vmcore", *args], stdout=stdout, stderr=subprocess.PIPE)
    assert res.returncode == 0, res.stderr
    return res


def _makedumpfile_stream(src: Path, out: Path, *options: str) -> Path:
    with open(out, "wb") as f:
        subprocess.run([_tool("makedumpfile"), "-F", *options, str(src)], stdout=f, stderr=subprocess.PIPE,
                       check=True)
    return out


def _rebuild_with_makedumpfile(stream: Path, out: Path) -> Path:
    with open(stream, "rb") as f:
        subprocess.run([_tool("makedumpfile"), "-R", str(out)], stdin=f, capture_output=True, check=True)
    return out


def test_makedumpfile_streams_read_in_place(vmcore: tuple[str, Path], tmp_path: Path) -> None:
    _kernel, src = vmcore
    reference = subprocess.run([_tool("vmcore-dmesg"), str(src)], capture_output=True, check=True).stdout
    flat = _makedumpfile_stream(src, tmp_path / "theirs.flat", "-c", "-d", "31")
    elf_flat = _makedumpfile_stream(src, tmp_path / "theirs-elf.flat", "-E", "-d", "31")
    normal = tmp_path / "theirs.kdump"
    subprocess.run([_tool("makedumpfile"), "-c", "-d", "31", str(src), str(normal)], capture_output=True, check=True)
    for dump in (flat, elf_flat):
        assert _pykexec("dmesg", str(dump)).stdout == reference, dump
        assert b'"format": "' in _pykexec("info", "--json", str(dump)).stdout
    with KdumpFile(normal) as k, open_dump(flat) as core:
        streamed = core._file  # type: ignore[union-attr]
        assert not streamed.incomplete and streamed.header.status == k.header.status
        saved = list(k.saved_pfns())
        assert saved == list(streamed.saved_pfns()) and len(saved) > 1000
        for pfn in saved:
            assert streamed.read_page(pfn) == k.read_page(pfn), hex(pfn)


@pytest.mark.parametrize("options", [("-c",), ("-E",), ()], ids=["zlib", "elf", "zstd"])
def test_our_stream_rebuilt_by_makedumpfile(vmcore: tuple[str, Path], tmp_path: Path,
                                            options: tuple[str, ...]) -> None:
    _kernel, src = vmcore
    with open(tmp_path / "ours.flat", "wb") as f:
        _pykexec("save", "-F", *options, str(src), stdout=f)
    direct = tmp_path / "direct"
    _pykexec("save", *options, str(src), str(direct))
    rebuilt = _rebuild_with_makedumpfile(tmp_path / "ours.flat", tmp_path / "rebuilt")
    assert rebuilt.read_bytes() == direct.read_bytes()
    if options != ():  # Debian's makedumpfile 1.7.2 reads no zstd
        out = tmp_path / "dmesg.txt"
        subprocess.run([_tool("makedumpfile"), "--dump-dmesg", str(rebuilt), str(out)], capture_output=True,
                       check=True)
        assert out.read_bytes() == subprocess.run([_tool("vmcore-dmesg"), str(src)], capture_output=True,
                                                  check=True).stdout


def test_our_reassembly_is_makedumpfiles(vmcore: tuple[str, Path], tmp_path: Path) -> None:
    _kernel, src = vmcore
    for name, options in (("kdump", ("-c", "-d", "31")), ("elf", ("-E", "-d", "31"))):
        stream = _makedumpfile_stream(src, tmp_path / f"{name}.flat", *options)
        theirs = _rebuild_with_makedumpfile(stream, tmp_path / f"{name}.theirs")
        _pykexec("reassemble", str(stream), str(tmp_path / f"{name}.ours"))
        assert (tmp_path / f"{name}.ours").read_bytes() == theirs.read_bytes(), name
