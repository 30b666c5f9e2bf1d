"""``pykexec vmcore save`` on the real cached 6.1 / 6.12 dumps (no VM is booted once
they are cached), checked against independent readers:

* drgn (PyPI wheel, bundles libkdumpfile): every saved page of the zstd output
  reads back identical to the source dump;
* makedumpfile: ``--dump-dmesg`` on the zlib output (Debian's 1.7.2 has no zstd)
  equals kexec-tools' ``vmcore-dmesg`` of the original;
* the kernel's own count of free pages (``zone.vm_stat[NR_FREE_PAGES]``) against
  the pages excluded as free;
* our reader (:class:`pykexec.vmcore.kdump.KdumpFile`) against a file made by
  ``makedumpfile -c -d 31``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pykexec.layouts import kdump as L
from pykexec.vmcore.elfcore import ElfCore
from pykexec.vmcore.kdump import KdumpFile
from pykexec.vmcore.paging import PageTables
from pykexec.vmcore.filtering import excluded_pages
from pykexec.vmcore.pfn_runs import merge
from pykexec.vmcore.save import ram_runs, save

VMCORE_DMESG = "/usr/sbin/vmcore-dmesg"


def _need(tool: str) -> str:
    path = shutil.which(tool) or (tool if os.path.exists(tool) else None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} missing in CI")
        pytest.skip(f"{tool} not installed")
    return path


def _kernel_free_pages(core: ElfCore) -> int:
    """Sum of NR_FREE_PAGES over node 0's zones, as the crashed kernel counted them."""
    info = core.require_vmcoreinfo()
    pt = PageTables(lambda a, n: core.read(a, n, physical=True), info)
    pgdat = int.from_bytes(pt.read(info.symbol("node_data"), 8), "little")
    nr_zones = int.from_bytes(pt.read(pgdat + info.offset("pglist_data.nr_zones"), 4), "little")
    total = 0
    for z in range(nr_zones):
        zone = pgdat + info.offset("pglist_data.node_zones") + z * info.size("zone")
        counter = zone + info.offset("zone.vm_stat") + 8 * info.number("NR_FREE_PAGES")
        total += int.from_bytes(pt.read(counter, 8), "little", signed=True)
    return total


def test_save_zstd_read_back_by_drgn(vmcore: tuple[str, Path], tmp_path: Path) -> None:
    kernel, src = vmcore
    before = (src.stat().st_mtime_ns, src.stat().st_size)
    dst = tmp_path / "dump.kdump"
    # -d 17 (zero and free pages): what is left out can be checked against the kernel's counter.
    res = subprocess.run([sys.executable, "-m", "pykexec.vmcore.cli", "save", "-d", "17", str(src), str(dst)],
                         capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert (src.stat().st_mtime_ns, src.stat().st_size) == before

    with ElfCore(src) as core, KdumpFile(dst) as k:
        h = k.header
        assert (h.header_version, h.status, h.block_size) == (6, L.DUMP_DH_COMPRESSED_ZSTD, 4096)
        assert h.utsname.release.decode().startswith(kernel + ".")
        assert k.vmcoreinfo is not None and k.vmcoreinfo.raw == core.require_vmcoreinfo().raw
        ram = sum(1 for p in range(k.max_mapnr) if k.is_ram(p))
        saved = list(k.saved_pfns())
        excluded = ram - len(saved)
        # Free pages: the buddy allocator's within a few pages of the kernel's counter (a
        # crashed kernel's counters may lag its lists by a pcp refill), which does not count
        # the pages on the per-CPU lists; far more than half of this idle guest.
        kernel_free = _kernel_free_pages(core)
        pt = PageTables(lambda a, n: core.read(a, n, physical=True), core.require_vmcoreinfo())
        ram_pfns = merge([(r.pfn, r.end) for r in ram_runs(core.loads, 4096)])
        counts = excluded_pages(core.require_vmcoreinfo(), pt, ram_pfns, 4096, 17).counts
        assert excluded == counts["free"] + counts["free_percpu"], (excluded, counts)
        assert abs(counts["free"] - kernel_free) <= 16, (counts, kernel_free)
        assert excluded > ram // 2
        # Compressed: how much depends on what the guest held at the crash (a fixed
        # fraction of the source's size is not a property of the tool). What is: zero
        # pages found while copying share one stored zero page (as makedumpfile's
        # pd_zero); any other page is stored raw only where zstd would not make it
        # smaller; every byte after the descriptors belongs to a page.
        import zstandard

        descs = dict((pfn, k.page_desc(pfn)) for pfn in saved)
        raw = [pfn for pfn, (_o, size, flags, _p) in descs.items() if not flags & L.DUMP_DH_COMPRESSED_ZSTD]
        assert all(descs[pfn][1] == 4096 for pfn in raw)
        page_bytes = lambda pfn: core.read(pfn * 4096, 4096, physical=True)  # noqa: E731
        first_offset = min(off for off, _s, _f, _p in descs.values())
        shared = [pfn for pfn in raw if descs[pfn][0] == first_offset]
        assert all(page_bytes(pfn) == bytes(4096) for pfn in shared)
        level1 = zstandard.ZstdCompressor(level=1)
        alone = [pfn for pfn in raw if descs[pfn][0] != first_offset]
        assert len({descs[pfn][0] for pfn in alone}) == len(alone)
        assert all(len(level1.compress(page_bytes(pfn))) >= 4096 - 32 for pfn in alone), "a page kept raw"
        assert len(alone) < len(saved) // 2
        assert max(off + size for off, size, _f, _p in descs.values()) == dst.stat().st_size

        # drgn reads kdump-compressed files through libkdumpfile: an independent reader.
        import drgn

        if not getattr(drgn, "_with_libkdumpfile", False):
            pytest.fail("this drgn build has no libkdumpfile: it cannot read kdump-compressed files")
        prog = drgn.Program()
        prog.set_core_dump(str(dst))
        read = lambda pfn: prog.read(pfn * 4096, 4096, True)  # noqa: E731
        with pytest.raises(drgn.FaultError):   # an excluded (free) page is not in the dump
            prog.read(next(p for p in range(k.max_mapnr) if k.is_ram(p) and not k.is_saved(p)) * 4096,
                      8, True)
        for pfn in saved:
            assert read(pfn) == core.read(pfn * 4096, 4096, physical=True), hex(pfn)


def test_save_zlib_makedumpfile_dmesg(vmcore: tuple[str, Path], tmp_path: Path) -> None:
    _kernel, src = vmcore
    makedumpfile = _need("makedumpfile")
    dst = tmp_path / "dump.kdump"
    result = save(str(src), str(dst), compress="zlib", progress=False)
    assert not result.incomplete
    out = tmp_path / "dmesg.txt"
    res = subprocess.run([makedumpfile, "--dump-dmesg", str(dst), str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    oracle = subprocess.run([_need(VMCORE_DMESG), str(src)], capture_output=True, check=True).stdout
    assert out.read_bytes() == oracle
    assert b"sysrq triggered crash" in oracle


def test_reader_on_makedumpfile_output(vmcore: tuple[str, Path], tmp_path: Path) -> None:
    _, src = vmcore
    makedumpfile = _need("makedumpfile")
    dst = tmp_path / "mdf.kdump"
    res = subprocess.run([makedumpfile, "-c", "-d", "31", str(src), str(dst)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    with ElfCore(src) as core, KdumpFile(dst) as k:
        assert k.header.status == L.DUMP_DH_COMPRESSED_ZLIB and not k.incomplete
        saved = list(k.saved_pfns())
        assert 1000 < len(saved) < k.max_mapnr
        for pfn in saved:
            page = k.read_page(pfn)
            assert page == core.read(pfn * 4096, 4096, physical=True), hex(pfn)


def test_dmesg_and_info_read_kdump_compressed(vmcore: tuple[str, Path], tmp_path: Path) -> None:
    """`pykexec vmcore dmesg` on our saved file and on makedumpfile's equals vmcore-dmesg
    on the original ELF dump; `info` reads both."""
    _kernel, src = vmcore
    reference = subprocess.run([_need("vmcore-dmesg"), str(src)], capture_output=True, check=True).stdout
    ours = tmp_path / "ours.kdump"
    theirs = tmp_path / "theirs.kdump"
    subprocess.run([sys.executable, "-m", "pykexec", "vmcore", "save", str(src), str(ours)], check=True)
    subprocess.run([_need("makedumpfile"), "-c", "-d", "31", str(src), str(theirs)], check=True,
                   capture_output=True)
    # Both at dump level 31 (our default): the same pages, except the slab pages that
    # makedumpfile 1.7.2 takes for user data on 6.2+ kernels (vmcore/page_rules.py), and
    # the free pages on the per-CPU lists, which it keeps (vmcore/percpu_free.py; page by
    # page in test_vmcore_filtering_real.py).
    with KdumpFile(ours) as a, KdumpFile(theirs) as b:
        assert a.sub.dump_level == b.sub.dump_level == 31
        ours_kept, theirs_kept = set(a.saved_pfns()), set(b.saved_pfns())
    with ElfCore(src) as core:
        info = core.require_vmcoreinfo()
        pt = PageTables(lambda a, n: core.read(a, n, physical=True), info)
        ram_pfns = merge([(r.pfn, r.end) for r in ram_runs(core.loads, 4096)])
        percpu = excluded_pages(info, pt, ram_pfns, 4096, 31).counts["free_percpu"]
    assert len(theirs_kept - ours_kept) == percpu > 0
    if _kernel == "6.1":
        assert ours_kept <= theirs_kept
    else:
        assert 0 < len(ours_kept - theirs_kept) < 1000
    for dump in (ours, theirs):
        out = subprocess.run([sys.executable, "-m", "pykexec", "vmcore", "dmesg", str(dump)], capture_output=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout == reference, dump
        info = subprocess.run([sys.executable, "-m", "pykexec", "vmcore", "info", "--json", str(dump)],
                              capture_output=True, text=True, check=True).stdout
        assert '"format": "kdump-compressed"' in info and '"osrelease"' in info
