"""Reading a real dump of a Xen 4.17 machine (and ``vmcore save --format elf`` on real dumps).

The dump (:func:`vmcore_fixture.real_xen_vmcore`, made once and cached, ~1 min) is
``/proc/vmcore`` of a 2 GiB QEMU machine running Xen 4.17 with a generic 6.1 PV dom0
that loaded its crash kernel with ``pykexec -p``, printed its own ``dmesg``, Xen's
console-ring symbols from ``/proc/xen/xensyms`` and ``xen_phys_start``, then panicked.
The serial log of that run is the reference:

* dom0's log read from the dump starts with exactly the lines dom0's ``dmesg`` printed
  just before the crash (ending with the /dev/kmsg marker), then the panic;
* Xen's console ring (``--xen-syms`` from Debian's xen-hypervisor-4.17-amd64-dbg, or
  the symbols dom0 read at load time) is exactly the run of ``(XEN)`` lines the
  hypervisor printed on the serial console, up to "Shot down all CPUs";
* ``vmcore save`` (kdump and ELF) of the Xen dump keeps both logs; the filtered ELF
  of real Linux and Xen dumps holds the same bytes wherever it holds data, and
  vmcore-dmesg prints the same log from it.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.testbed.assets import Assets
from support.testbed.cache import TestbedError
from support.vmcore_fixture import (
    DOM0_DMESG_PREFIX,
    DOM0_KMSG_MARKER,
    XENSYM_PREFIX,
    real_vmcore,
    real_xen_vmcore,
    xen_vmcore_log,
)

from pykexec.layouts.elf import PHDR64_FMT, PT_LOAD
from pykexec.vmcore import cli
from pykexec.xen_symbols import CONRING_SYMBOLS, parse_xensyms
from pykexec.vmcore import xen as X
from pykexec.vmcore.elfcore import ElfCore
from pykexec.vmcore.save import save

DBG_PACKAGE = "xen-hypervisor-4.17-amd64-dbg"
VMCORE_DMESG = "/usr/sbin/vmcore-dmesg"


@pytest.fixture(scope="module")
def xen_dump(pykexec_assets: Assets) -> tuple[Path, str]:
    from support import xen

    xen.dom0_modules(pykexec_assets)
    try:
        path = real_xen_vmcore(pykexec_assets)
    except TestbedError as err:
        pytest.fail(str(err), pytrace=False)
    return path, xen_vmcore_log(path).replace("\r", "")


@pytest.fixture(scope="module")
def xen_syms(assets: Assets) -> Path:
    hits = sorted(assets.package(DBG_PACKAGE).glob("usr/lib/debug/boot/xen-syms-*"))
    hits = [h for h in hits if not h.name.endswith(".map")]
    assert hits, f"{DBG_PACKAGE} holds no xen-syms"
    return hits[0]


def _dmesg(*argv: str) -> bytes:
    return cli.dmesg(cli.parse_dmesg_args(list(argv)))  # type: ignore[arg-type]


def _serial_xen_lines(log: str) -> list[str]:
    """Xen's own lines on the serial console, up to its last words before the crash kernel."""
    before = log[:log.index("(XEN) Shot down all CPUs") + len("(XEN) Shot down all CPUs")]
    return [line[line.index("(XEN)"):] for line in before.splitlines() if "(XEN)" in line]


def test_dom0_log_matches_what_dom0_printed(xen_dump: tuple[Path, str]) -> None:
    path, log = xen_dump
    printed = [line[line.index(DOM0_DMESG_PREFIX) + len(DOM0_DMESG_PREFIX):]
               for line in log.splitlines() if DOM0_DMESG_PREFIX in line]
    assert len(printed) > 100 and printed[-1].endswith(DOM0_KMSG_MARKER)
    ours = _dmesg(str(path)).decode().splitlines()
    assert ours[:len(printed)] == printed
    rest = "\n".join(ours[len(printed):])
    assert "Kernel panic - not syncing: sysrq triggered crash" in rest
    assert "Kernel panic - not syncing: sysrq triggered crash" in log   # dom0 printed it on hvc0


def test_xen_console_ring_with_xen_syms(xen_dump: tuple[Path, str], xen_syms: Path) -> None:
    path, log = xen_dump
    ring = _dmesg("--xen-syms", str(xen_syms), str(path)).decode().splitlines()
    serial = _serial_xen_lines(log)
    assert ring[-1] == "(XEN) Shot down all CPUs" and ring[0].startswith("(XEN) ")
    start = len(serial) - len(ring)
    assert start >= 0 and serial[start:] == ring, "the ring is not the tail of Xen's serial output"
    if len(ring) < 100:
        pytest.fail(f"ring suspiciously short ({len(ring)} lines)")


def test_xen_console_ring_with_load_time_symbols(xen_dump: tuple[Path, str], xen_syms: Path) -> None:
    path, log = xen_dump
    lines = [line.split(XENSYM_PREFIX, 1)[1].encode() for line in log.splitlines() if XENSYM_PREFIX in line]
    at_load = parse_xensyms(lines)
    assert set(at_load) == set(CONRING_SYMBOLS)
    assert at_load == X.read_elf_symbols(str(xen_syms), CONRING_SYMBOLS)
    with ElfCore(path) as core:
        assert X.xen_console_ring(core, symbols=at_load) == X.xen_console_ring(core, str(xen_syms))


def test_xen_ring_from_the_symbol_note_written_at_load_time(xen_dump: tuple[Path, str], xen_syms: Path) -> None:
    """pykexec -p in dom0 recorded Xen's console-ring symbols in the elfcorehdr: --xen
    needs no xen-syms, and gives the same ring as with it."""
    path, _ = xen_dump
    r = subprocess.run([sys.executable, "-m", "pykexec", "vmcore", "dmesg", "--xen", str(path)],
                       capture_output=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == _dmesg("--xen-syms", str(xen_syms), str(path))


def _same_bytes_where_kept(src: Path, dst: Path) -> int:
    """Every byte of DST's PT_LOAD file data equals SRC at the same physical address;
    returns how many bytes were compared."""
    compared = 0
    with ElfCore(src) as s, ElfCore(dst) as d, open(dst, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            for ld in d.loads:
                step = 64 << 20
                for off in range(0, ld.filesz, step):
                    n = min(step, ld.filesz - off)
                    if m[ld.offset + off:ld.offset + off + n] != bytes(s.read(ld.paddr + off, n, physical=True)):
                        # Only left-out (zero or free) pages may differ, and they read as zeros.
                        got = m[ld.offset + off:ld.offset + off + n]
                        want = bytes(s.read(ld.paddr + off, n, physical=True))
                        for p in range(0, n, 4096):
                            if got[p:p + 4096] != want[p:p + 4096]:
                                assert got[p:p + 4096] == bytes(4096), f"page at {ld.paddr + off + p:#x} differs"
                    compared += n
        finally:
            m.close()
    return compared


def test_save_xen_dump_keeps_both_logs(xen_dump: tuple[Path, str], xen_syms: Path, tmp_path: Path) -> None:
    path, _ = xen_dump
    dom0 = _dmesg(str(path))
    ring = _dmesg("--xen-syms", str(xen_syms), str(path))
    for fmt in ("kdump", "elf"):
        dst = tmp_path / f"xen.{fmt}"
        res = save(str(path), str(dst), fmt=fmt, progress=False)
        assert not res.incomplete and res.free_pages == 0 and res.zero_pages > 0
        assert dst.stat().st_blocks * 512 < path.stat().st_size // 2
        assert _dmesg(str(dst)) == dom0
        assert _dmesg("--xen-syms", str(xen_syms), str(dst)) == ring
        if fmt == "elf":
            assert _same_bytes_where_kept(path, dst) > 100 << 20
        dst.unlink()


def test_save_elf_real_linux_dump(assets: Assets, tmp_path: Path) -> None:
    """The filtered ELF of a real 6.1 dump: vmcore-dmesg and our reader print the same
    log as from the original; kept bytes identical; free pages left out as gaps."""
    try:
        src = real_vmcore(assets, "6.1")
    except TestbedError as err:
        pytest.fail(str(err), pytrace=False)
    dst = tmp_path / "filtered.elf"
    res = save(str(src), str(dst), fmt="elf", progress=False)
    assert not res.incomplete and res.free_pages > 1000 and res.zero_pages > 1000
    assert _dmesg(str(dst)) == _dmesg(str(src))
    if os.path.exists(VMCORE_DMESG):
        want = subprocess.run([VMCORE_DMESG, str(src)], capture_output=True, check=True).stdout
        got = subprocess.run([VMCORE_DMESG, str(dst)], capture_output=True, check=True).stdout
        assert got == want and want.count(b"\n") > 100
    assert _same_bytes_where_kept(src, dst) > 50 << 20
    with open(dst, "rb") as f:
        head = f.read(64 + 4096 * 56)
    phnum = int.from_bytes(head[56:58], "little")
    loads = [PHDR64_FMT.unpack_from(head, 64 + i * 56) for i in range(phnum)]
    assert any(p[0] == PT_LOAD and p[5] < p[6] for p in loads)
