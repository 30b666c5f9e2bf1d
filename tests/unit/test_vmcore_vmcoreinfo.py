"""pykexec.vmcore.vmcoreinfo: KEY=VALUE parsing."""

from __future__ import annotations

import pytest

from pykexec.vmcore.errors import VmcoreError
from pykexec.vmcore.vmcoreinfo import VmcoreInfo

RAW = (b"OSRELEASE=6.1.0-56-cloud-amd64\nPAGESIZE=4096\nSYMBOL(prb)=ffffffff912622c0\n"
       b"SIZE(printk_info)=88\nOFFSET(printk_info.text_len)=16\nLENGTH(printk_info_device)=48\n"
       b"NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)=-129\nNUMBER(phys_base)=0x1b600000\n"
       b"KERNELOFFSET=e800000\nno equals sign\nSIZE(printk_info)=99\nCRASHTIME=1795328811")


def test_kinds_of_keys() -> None:
    info = VmcoreInfo(RAW)
    assert info.osrelease == "6.1.0-56-cloud-amd64"
    assert info.symbol("prb") == 0xFFFFFFFF912622C0 and info.has_symbol("prb")
    assert not info.has_symbol("log_buf")
    assert info.size("printk_info") == 88  # first occurrence wins
    assert info.offset("printk_info.text_len") == 16
    assert info.length("printk_info_device") == 48
    assert info.number("PAGE_BUDDY_MAPCOUNT_VALUE") == -129
    assert info.number("phys_base") == 0x1B600000
    assert info.get("KERNELOFFSET") == "e800000"


def test_last_line_without_newline_and_trailing_nuls() -> None:
    assert VmcoreInfo(RAW).crashtime == 1795328811
    assert VmcoreInfo(RAW + b"\n\0\0\0").crashtime == 1795328811
    assert VmcoreInfo(b"PAGESIZE=4096\n").crashtime is None


def test_missing_and_malformed() -> None:
    info = VmcoreInfo(b"SIZE(x)=abc\nSYMBOL(y)=zz\n")
    with pytest.raises(VmcoreError, match=r"no OFFSET\(a.b\) in VMCOREINFO"):
        info.offset("a.b")
    with pytest.raises(VmcoreError, match="not a number"):
        info.size("x")
    with pytest.raises(VmcoreError, match="not a number"):
        info.symbol("y")
    with pytest.raises(VmcoreError, match=r"no SIZE\(printk_log\)"):
        info.first_size("printk_log", "log")


def test_first_size_prefers_first_present_name() -> None:
    assert VmcoreInfo(b"SIZE(log)=16\n").first_size("printk_log", "log") == 16
