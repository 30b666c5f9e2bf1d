"""lzo and snappy kdump-compressed dumps of the real cached 6.1 / 6.12 dumps (no VM is
booted once they are cached):

* makedumpfile's ``-l`` dump (RHEL's and Fedora's default) read by ``pykexec vmcore
  dmesg`` and ``info`` as it is: the log equals kexec-tools' ``vmcore-dmesg`` of the
  original, every saved page equals the original's;
* ours (``vmcore save -l`` / ``-p``): ``makedumpfile --dump-dmesg`` (where it was
  built with the codec: Debian's 1.7.2 has lzo, not snappy) equals ``vmcore-dmesg``,
  and libkdumpfile (drgn) reads every saved page as the original holds it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pykexec.layouts import kdump as L
from pykexec.vmcore.elfcore import ElfCore
from pykexec.vmcore.kdump import KdumpFile

from test_vmcore_save import VMCORE_DMESG, _need

CODECS = [("-l", "lzo", L.DUMP_DH_COMPRESSED_LZO), ("-p", "snappy", L.DUMP_DH_COMPRESSED_SNAPPY)]


def _pykexec(*args: str) -> bytes:
    res = subprocess.run([sys.executable, "-m", "pykexec", "vmcore", *args], capture_output=True)
    assert res.returncode == 0, res.stderr
    return res.stdout


def _built_with(makedumpfile: str, codec: str) -> bool:
    version = subprocess.run([makedumpfile, "-v"], capture_output=True, text=True).stdout
    return f"{codec}\tenabled" in version


def test_makedumpfile_lzo_dump_read_as_it_is(vmcore: tuple[str, Path], tmp_path: Path) -> None:
    _kernel, src = vmcore
    makedumpfile = _need("makedumpfile")
    dump = tmp_path / "mdf.kdump"
    subprocess.run([makedumpfile, "-l", "-d", "31", str(src), str(dump)], check=True, capture_output=True)
    reference = subprocess.run([_need(VMCORE_DMESG), str(src)], capture_output=True, check=True).stdout
    assert _pykexec("dmesg", str(dump)) == reference
    assert b'"format": "kdump-compressed"' in _pykexec("info", "--json", str(dump))
    with ElfCore(src) as core, KdumpFile(dump) as k:
        assert k.header.status == L.DUMP_DH_COMPRESSED_LZO and not k.incomplete
        flags = set()
        for pfn in k.saved_pfns():
            flags.add(k.page_desc(pfn)[2])
            assert k.read_page(pfn) == core.read(pfn * 4096, 4096, physical=True), hex(pfn)
        assert flags == {0, L.DUMP_DH_COMPRESSED_LZO}


@pytest.mark.parametrize("option,codec,flag", CODECS)
def test_ours_read_by_makedumpfile_and_libkdumpfile(vmcore: tuple[str, Path], tmp_path: Path, option: str,
                                                    codec: str, flag: int) -> None:
    _kernel, src = vmcore
    dump = tmp_path / "ours.kdump"
    _pykexec("save", option, str(src), str(dump))
    reference = subprocess.run([_need(VMCORE_DMESG), str(src)], capture_output=True, check=True).stdout
    assert _pykexec("dmesg", str(dump)) == reference
    makedumpfile = _need("makedumpfile")
    if _built_with(makedumpfile, codec):
        out = tmp_path / "dmesg.txt"
        res = subprocess.run([makedumpfile, "--dump-dmesg", str(dump), str(out)], capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
        assert out.read_bytes() == reference
    import drgn

    prog = drgn.Program()
    prog.set_core_dump(str(dump))
    with ElfCore(src) as core, KdumpFile(dump) as k:
        assert k.header.status == flag
        saved = list(k.saved_pfns())
        assert {k.page_desc(pfn)[2] for pfn in saved} == {0, flag}
        for pfn in saved:
            assert prog.read(pfn * 4096, 4096, True) == core.read(pfn * 4096, 4096, physical=True), hex(pfn)
