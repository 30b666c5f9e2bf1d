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
* ``vmcore save`` (kdump and ELF) of the Xen dump, filtered by Xen's frame table
  (VMCOREINFO_XEN alone), keeps both logs, Xen's console-ring page and dom0's pages,
  and leaves Xen's free frames out; the filtered ELF of real Linux and Xen dumps
  holds the same bytes wherever it holds data, and vmcore-dmesg prints the same log;
* the same dump as kexec-tools leaves it (no dom0 VMCOREINFO, no pykexec notes) still
  gives dom0's log: its VMCOREINFO is found in dom0's memory through the p2m;
* makedumpfile's Xen mode (``-X``, notes only) takes the dump for a Xen dump and our
  reader reads what it writes.
"""

from __future__ import annotations

import json
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

from pykexec.layouts.elf import (
    EHDR64_FMT,
    PHDR64_FMT,
    PT_LOAD,
    PT_NOTE,
    PYKEXEC_NOTE_NAME,
    iter_notes,
    pack_note,
)
from pykexec.vmcore import cli
from pykexec.xen_symbols import CONRING_SYMBOLS, parse_xensyms
from pykexec.vmcore import xen as X
from pykexec.vmcore.elfcore import ElfCore
from pykexec.vmcore.errors import VmcoreError
from pykexec.vmcore.kdump import KdumpCore
from pykexec.vmcore.pfn_runs import merge
from pykexec.vmcore.save import ram_runs, save
from pykexec.vmcore.xen_filter import dom0_excluded_frames, xen_excluded_pages

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


def _kept_in(dst: Path, fmt: str, maddr: int) -> bool:
    """Whether a saved dump holds the page at machine address ``maddr``."""
    if fmt == "kdump":
        with KdumpCore(dst) as k:
            try:
                k.read(maddr, 8, physical=True)
            except VmcoreError:
                return False
            return True
    with ElfCore(dst) as e:
        return any(ld.paddr <= maddr < ld.paddr + ld.filesz for ld in e.loads)


def _landmarks(path: Path, xen_syms: Path) -> dict[str, int]:
    """Machine addresses of Xen's console ring, of dom0's init_uts_ns, of a Xen free
    frame and of a dom0 free or cache frame, both with data on them (so that leaving
    them out shrinks the dump)."""
    with ElfCore(path) as core:
        syms = X.read_elf_symbols(str(xen_syms), CONRING_SYMBOLS)
        mem = X.XenMemory(core)
        dom0 = X.Dom0Memory(core)
        ram = merge([(r.pfn, r.end) for r in ram_runs(core.loads, 4096)])
        xen_out = xen_excluded_pages(core, ram, drop_free=True, drop_guests=True).ranges
        dom0_out, counts, note = dom0_excluded_frames(core, 31)
        assert not note and counts["free"] > 50_000 and counts["cache"] > 1_000, (counts, note)

        def with_data(runs: list[tuple[int, int]]) -> int:
            return next(pfn << 12 for s, e in runs for pfn in range(s, e)
                        if any(core.read(pfn << 12, 4096, physical=True)))

        return {"ring": mem.translate(mem.u64(syms["conring"]))[0],
                "dom0 uts": dom0.translate(dom0.require_vmcoreinfo().symbol("init_uts_ns"))[0],
                "xen free": with_data(xen_out), "dom0 free or cache": with_data(dom0_out)}


def test_save_xen_dump_keeps_both_logs(xen_dump: tuple[Path, str], xen_syms: Path, tmp_path: Path) -> None:
    """The default save keeps Xen's frames and dom0's kernel, leaves Xen's free frames
    and dom0's free and cache pages out (the test machine runs no other domain: there
    are no guest frames to drop): the logs read the same; sizes against keeping every
    non-zero frame (-d 1)."""
    path, _ = xen_dump
    dom0 = _dmesg(str(path))
    ring = _dmesg("--xen-syms", str(xen_syms), str(path))
    marks = _landmarks(path, xen_syms)
    sizes = {"source": path.stat().st_size, "source allocated": path.stat().st_blocks * 512}
    for fmt in ("kdump", "elf"):
        for level in (31, 1):
            dst = tmp_path / f"xen-{level}.{fmt}"
            res = save(str(path), str(dst), fmt=fmt, dump_level=level, progress=False)
            assert not res.incomplete and res.zero_pages > 0 and res.excluded.get("guest", 0) == 0
            assert (res.free_pages > 300_000) == (level == 31), res.excluded
            assert _dmesg(str(dst)) == dom0
            assert _dmesg("--xen-syms", str(xen_syms), str(dst)) == ring
            kept = {name: _kept_in(dst, fmt, maddr) for name, maddr in marks.items()}
            assert kept == {"ring": True, "dom0 uts": True, "xen free": level == 1,
                            "dom0 free or cache": level == 1}, kept
            if fmt == "elf" and level == 31:
                assert _same_bytes_where_kept(path, dst) > 20 << 20
            sizes[f"{fmt} -d {level}"] = dst.stat().st_blocks * 512
            dst.unlink()
    print("\nXen dump sizes (bytes on disk):", sizes)
    for fmt in ("kdump", "elf"):
        assert sizes[f"{fmt} -d 31"] < sizes[f"{fmt} -d 1"] // 2 < sizes["source"]
    # Compressed, against the source's non-zero blocks (a fixed fraction would be a guess
    # about what the machine held at the crash).
    assert sizes["kdump -d 1"] < sizes["source allocated"]


def _without_pykexec_notes(src: Path, dst: Path) -> list[bytes]:
    """A copy of ``src`` whose PT_NOTEs lack what only pykexec records (dom0's VMCOREINFO,
    its xen_phys_start and symbol notes): what a kexec-tools load leaves.  Returns the
    names of the notes kept."""
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
    kept: list[bytes] = []
    with open(dst, "r+b") as f:
        head = f.read(EHDR64_FMT.size)
        ehdr = EHDR64_FMT.unpack(head)
        phoff, phentsize, phnum = ehdr[5], ehdr[9], ehdr[10]
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            ph = list(PHDR64_FMT.unpack(f.read(PHDR64_FMT.size)))
            if ph[0] != PT_NOTE:
                continue
            f.seek(ph[2])
            notes = [n for n in iter_notes(f.read(ph[5]))
                     if n.name not in (b"VMCOREINFO", PYKEXEC_NOTE_NAME)]
            body = b"".join(pack_note(n.name, n.type, n.desc) for n in notes)
            f.seek(ph[2])
            f.write(body + bytes(ph[5] - len(body)))
            ph[5] = ph[6] = len(body)
            f.seek(phoff + i * phentsize)
            f.write(PHDR64_FMT.pack(*ph))
            kept += [n.name for n in notes]
    return kept


def test_dom0_log_without_pykexec_notes(xen_dump: tuple[Path, str], tmp_path: Path) -> None:
    """A Xen dump as kexec-tools leaves it (no dom0 VMCOREINFO, no pykexec notes): dom0's
    VMCOREINFO is found in dom0's memory, byte for byte the note pykexec recorded, and
    dmesg and info give what they give on the original."""
    path, _ = xen_dump
    bare = tmp_path / "kexec-tools.elf"
    kept = _without_pykexec_notes(path, bare)
    assert b"VMCOREINFO_XEN" in kept and b"VMCOREINFO" not in kept and PYKEXEC_NOTE_NAME not in kept
    with ElfCore(bare) as core, ElfCore(path) as orig:
        assert core.vmcoreinfo is None and orig.vmcoreinfo is not None
        dom0 = X.Dom0Memory(core)
        assert dom0.vmcoreinfo_from == "dom0 memory"
        assert dom0.require_vmcoreinfo().raw == orig.vmcoreinfo.raw
        release = orig.vmcoreinfo.osrelease
    assert _dmesg(str(bare)) == _dmesg(str(path))
    r = subprocess.run([sys.executable, "-m", "pykexec", "vmcore", "info", "--json", str(bare)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    described = json.loads(r.stdout)
    assert described["osrelease"] == release and described["xen"]["dom0_vmcoreinfo_from"] == "dom0 memory"
    bare.unlink()


def _program_headers(path: Path) -> list[tuple[int, ...]]:
    with open(path, "rb") as f:
        ehdr = EHDR64_FMT.unpack(f.read(EHDR64_FMT.size))
        f.seek(ehdr[5])
        return [PHDR64_FMT.unpack(f.read(ehdr[9])[:PHDR64_FMT.size]) for _ in range(ehdr[10])]


def test_makedumpfile_xen_mode_reads_it(xen_dump: tuple[Path, str], tmp_path: Path) -> None:
    """The crash kernel's /proc/vmcore kept every PT_LOAD of pykexec's elfcorehdr (one
    merged PT_NOTE first, low memory included: a PT_NOTE placed after the PT_LOADs once cost
    the first PT_LOAD), so makedumpfile's Xen mode takes it for a Xen dump and filters it from
    the notes alone; our reader reads its output: dom0's log as from the original.  Sizes
    against our default save, both zlib."""
    import shutil
    import time

    path, _ = xen_dump
    ph = _program_headers(path)
    assert [p[0] for p in ph].count(PT_NOTE) == 1 and ph[0][0] == PT_NOTE, ph
    loads = sorted((p[4], p[4] + p[5]) for p in ph if p[0] == PT_LOAD)
    assert loads[0][0] < 0x100000, loads  # low memory is in the dump
    makedumpfile = shutil.which("makedumpfile") or "/usr/sbin/makedumpfile"
    theirs, ours = tmp_path / "mdf-X.kdump", tmp_path / "ours.kdump"
    t = time.monotonic()
    res = subprocess.run([makedumpfile, "-X", "-c", "-d", "31", str(path), str(theirs)],
                         capture_output=True, text=True)
    mdf_s = time.monotonic() - t
    assert res.returncode == 0, res.stdout + res.stderr
    t = time.monotonic()
    assert not save(str(path), str(ours), compress="zlib", progress=False).incomplete
    ours_s = time.monotonic() - t
    assert _dmesg(str(theirs)) == _dmesg(str(path)) == _dmesg(str(ours))
    # makedumpfile's Xen mode keeps dom0 whole; ours filters dom0's pages as a Linux dump's.
    assert ours.stat().st_size < theirs.stat().st_size
    print(f"\nmakedumpfile -X -c -d 31: {mdf_s:.2f} s, {theirs.stat().st_size} bytes; "
          f"pykexec vmcore save -c: {ours_s:.2f} s, {ours.stat().st_size} bytes")


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
