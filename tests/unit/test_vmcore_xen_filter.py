"""Filtering a Xen dump by Xen's frame table (VMCOREINFO_XEN only), on synthetic machine memory.

The machine of :mod:`test_vmcore_xen_synth` (1024 frames) gets a frame table in Xen's
page tables, three domains (dom0, domU 1, dom_xen) in the direct map, and page_infos
of every kind; the expected frames are written out by hand, per Xen release layout
(4.16's count_info bits differ from 4.17's).
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from test_vmcore_xen_synth import (
    DOMAIN_LIST_VA,
    IMG,
    MACHINE_FRAMES,
    PAGE,
    PGD_L4_VA,
    XEN_PHYS_START,
    Machine,
    write_machine_core,
)

from pykexec.layouts.elf import pack_note
from pykexec.layouts.xen import DIRECTMAP_VIRT_START, DOMID_XEN, XEN_ELFNOTE_CRASH_INFO
from pykexec.vmcore import cli
from pykexec.vmcore.elfcore import ElfCore
from pykexec.vmcore.errors import VmcoreError
from pykexec.vmcore.kdump import KdumpCore
from pykexec.vmcore.save import save
from pykexec.vmcore.xen_filter import xen_excluded_pages

FT_VA = 0xFFFF82E000000000       # the frame table (FRAMETABLE_VIRT_START of Xen 4.17)
FT_FRAMES = range(0x1F0, 0x1F8)  # 1024 page_infos of 32 bytes: 8 frames
FRAME_TABLE_VAR, MAX_PAGE_VAR = IMG + 0x400, IMG + 0x408
DOM0_MFN, DOMU_MFN, DOMXEN_MFN = 0x3F1, 0x3F2, 0x3F3
PGD_MFN = (XEN_PHYS_START + PGD_L4_VA - IMG) // PAGE
INFO = (f"PAGESIZE=4096\nSYMBOL(domain_list)={DOMAIN_LIST_VA:x}\nSYMBOL(frame_table)={FRAME_TABLE_VAR:x}\n"
        f"SYMBOL(max_page)={MAX_PAGE_VAR:x}\nSIZE(page_info)=32\nSIZE(domain)=2304\n"
        "OFFSET(page_info.count_info)=8\nOFFSET(page_info._domain)=24\nOFFSET(domain.domain_id)=0\n"
        f"OFFSET(domain.next_in_list)=136\nSYMBOL(pgd_l4)={PGD_L4_VA:x}\n").encode()
ALLOCATED, XEN_HEAP = 1 << 63, 1 << 62
#: (broken, state shift) per layout
LAYOUTS = {(4, 17): (1 << 60, 58), (4, 16): (1 << 57, 55)}

# The frames, by kind (everything else: in use by Xen, unowned -> kept).
DOM0_FRAMES = range(0x100, 0x180)
DOMU_FRAMES = range(0x180, 0x1F0)
FREE_FRAMES = range(0x300, 0x310)
HEAP_FREE, BROKEN, OFFLINED, OFFLINING, NO_OWNER, DOMXEN_OWNED, OWNER_UNMAPPED = range(0x310, 0x317)


def xen_machine(tmp_path: Path, version: tuple[int, int] = (4, 17), info: bytes = INFO) -> Path:
    m = Machine()
    broken, shift = LAYOUTS[version]

    def page_info(mfn: int, count_info: int, owner_pdx: int = 0) -> None:
        va_off = mfn * 32
        frame = FT_FRAMES[va_off // PAGE]
        struct.pack_into("<QI", m.mem, frame * PAGE + va_off % PAGE + 8, count_info, 0)
        struct.pack_into("<I", m.mem, frame * PAGE + va_off % PAGE + 24, owner_pdx)

    for i, frame in enumerate(FT_FRAMES):
        m.map4k(PGD_MFN, FT_VA + i * PAGE, frame)
    for mfn in (DOM0_MFN, DOMU_MFN, DOMXEN_MFN, MACHINE_FRAMES - 1):
        m.map4k(PGD_MFN, DIRECTMAP_VIRT_START + mfn * PAGE, mfn)
    for mfn, domid, nxt in ((DOM0_MFN, 0, DOMU_MFN), (DOMU_MFN, 1, 0), (DOMXEN_MFN, DOMID_XEN, 0)):
        struct.pack_into("<H", m.mem, mfn * PAGE, domid)
        m.u64(mfn * PAGE + 136, DIRECTMAP_VIRT_START + nxt * PAGE if nxt else 0)
    img = XEN_PHYS_START
    m.u64(img + DOMAIN_LIST_VA - IMG, DIRECTMAP_VIRT_START + DOM0_MFN * PAGE)
    m.u64(img + FRAME_TABLE_VAR - IMG, FT_VA)
    m.u64(img + MAX_PAGE_VAR - IMG, MACHINE_FRAMES)
    for mfn in range(MACHINE_FRAMES):
        page_info(mfn, 1)   # in use by Xen, one reference
    for mfn in DOM0_FRAMES:
        page_info(mfn, ALLOCATED | 1, DOM0_MFN)
    for mfn in DOMU_FRAMES:
        page_info(mfn, ALLOCATED | 1, DOMU_MFN)
    for mfn in FREE_FRAMES:
        page_info(mfn, 3 << shift)
    page_info(HEAP_FREE, XEN_HEAP | 3 << shift)
    page_info(BROKEN, broken | 1)
    page_info(OFFLINED, 2 << shift)
    page_info(OFFLINING, 1 << shift | 1)
    page_info(NO_OWNER, ALLOCATED | 1, 0)
    page_info(DOMXEN_OWNED, ALLOCATED | 1, DOMXEN_MFN)
    page_info(OWNER_UNMAPPED, ALLOCATED | 1, 0x3000)
    for mfn in list(DOMU_FRAMES) + list(FREE_FRAMES):   # data that must go
        m.mem[mfn * PAGE:(mfn + 1) * PAGE] = bytes([mfn & 0xFF | 1]) * PAGE
    crash = struct.pack("<10Q", version[0], version[1], 0, 0, 0, 0, 0, 0, XEN_PHYS_START, 0)
    notes = pack_note(b"Xen", XEN_ELFNOTE_CRASH_INFO, crash) + pack_note(b"VMCOREINFO_XEN", 0, info)
    return write_machine_core(tmp_path / "xen.elf", m, notes)


def _runs(*frames: range | int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for f in sorted(frames, key=lambda r: r.start if isinstance(r, range) else r):
        s, e = (f.start, f.stop) if isinstance(f, range) else (f, f + 1)
        if out and out[-1][1] == s:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


@pytest.mark.parametrize("version", sorted(LAYOUTS))
def test_free_and_guest_frames_left_out(tmp_path: Path, version: tuple[int, int]) -> None:
    core = xen_machine(tmp_path, version)
    ram = [(0, MACHINE_FRAMES)]
    with ElfCore(core) as c:
        ex = xen_excluded_pages(c, ram, drop_free=True, drop_guests=True)
        assert ex.note == "" and ex.domains == [0, 1]
        assert ex.ranges == _runs(DOMU_FRAMES, FREE_FRAMES, BROKEN, OFFLINED)
        assert ex.counts == {"free": len(FREE_FRAMES) + 2, "guest": len(DOMU_FRAMES)}
        assert ex.by_domain == {1: len(DOMU_FRAMES)}
        assert xen_excluded_pages(c, ram, drop_free=True, drop_guests=True, keep_domains=[1]).ranges == \
            _runs(FREE_FRAMES, BROKEN, OFFLINED)
        assert xen_excluded_pages(c, ram, drop_free=False, drop_guests=True).ranges == _runs(DOMU_FRAMES)
        with pytest.raises(VmcoreError, match="no domain 7 in this Xen dump \\(its domains: 0, 1\\)"):
            xen_excluded_pages(c, ram, drop_free=True, drop_guests=True, keep_domains=[7])


def test_save_leaves_them_out(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    core = xen_machine(tmp_path)
    res = save(str(core), str(tmp_path / "d.kdump"), progress=False)
    assert res.excluded["free"] == len(FREE_FRAMES) + 2 and res.excluded["guest"] == len(DOMU_FRAMES)
    with KdumpCore(tmp_path / "d.kdump") as k:
        for left_out in (DOMU_FRAMES.start, FREE_FRAMES.stop - 1, BROKEN):
            with pytest.raises(VmcoreError, match="page excluded"):
                k.read(left_out * PAGE, 16, physical=True)
        assert bytes(k.read(DOM0_FRAMES.start * PAGE, 16, physical=True)) == bytes(16)   # kept (zero)
        ft = FT_FRAMES.start * PAGE + 8
        assert bytes(k.read(ft, 8, physical=True)) == struct.pack("<Q", 1)   # Xen's own frame kept
    res = save(str(core), str(tmp_path / "all.kdump"), dump_level=1, progress=False)
    assert res.excluded["free"] == 0 and res.saved_pages == MACHINE_FRAMES
    assert cli.main(["save", "--xen-keep-domain", "1", str(core), str(tmp_path / "k.kdump")]) == 0
    assert cli.main(["save", "--xen-keep-domain", "9", str(core), str(tmp_path / "n.kdump")]) == 1
    err = capfdbinary.readouterr().err.decode()
    assert "no domain 9 in this Xen dump" in err and "Traceback" not in err
    assert cli.main(["save", "--xen-keep-domain", "dom1", str(core), str(tmp_path / "x.kdump")]) == 2
    assert "--xen-keep-domain needs a domain id" in capfdbinary.readouterr().err.decode()


@pytest.mark.parametrize("drop,why", [(b"SYMBOL(max_page)", "VMCOREINFO_XEN has no SYMBOL(max_page)"),
                                      (b"SYMBOL(pgd_l4)", "VMCOREINFO_XEN has no SYMBOL(pgd_l4)")])
def test_missing_keys_keep_everything(tmp_path: Path, drop: bytes, why: str) -> None:
    info = b"\n".join(line for line in INFO.split(b"\n") if not line.startswith(drop))
    core = xen_machine(tmp_path, info=info)
    with ElfCore(core) as c:
        ex = xen_excluded_pages(c, [(0, MACHINE_FRAMES)], drop_free=True, drop_guests=True)
    assert ex.ranges == [] and ex.note.startswith(why) and ex.note.endswith("kept")


def test_keep_domain_on_a_linux_dump_is_a_usage_error(tmp_path: Path,
                                                      capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    from test_vmcore_save_synth import machine

    src, _ = machine(tmp_path)
    assert cli.main(["save", "--xen-keep-domain", "1", str(src), str(tmp_path / "o.kdump")]) == 2
    err = capfdbinary.readouterr().err.decode()
    assert "applies to dumps of a Xen machine only" in err and err.count("\n") == 1
    assert not (tmp_path / "o.kdump").exists()


def test_p2m_machine_runs_and_frames() -> None:
    """Dom0 pfn runs -> machine frame runs, through a 3-level p2m: FOREIGN entries (other
    domains' frames) and missing ones are not dom0's; IDENTITY's flag is masked."""
    from pykexec.vmcore.xen_dom0 import P2m

    mem: dict[int, bytes] = {}
    root, mid, leaf0, leaf1 = 1, 2, 3, 4
    missing = b"\xff" * PAGE
    mem[root] = struct.pack("<Q", mid) + missing[8:]
    mem[mid] = struct.pack("<QQ", leaf0, leaf1) + missing[16:]
    entries = [0x1000 + p for p in range(512)]          # pfns 0-511: contiguous machine frames
    entries[10] = (1 << 63) | 0x9999                     # FOREIGN: a guest's frame
    entries[20] = (1 << 64) - 1                          # missing
    entries[30] = (1 << 62) | 0x2000                     # IDENTITY
    mem[leaf0] = struct.pack("<512Q", *entries)
    mem[leaf1] = struct.pack("<512Q", *[0x5000 - p for p in range(512)])   # pfns 512-1023: descending

    def read(maddr: int, size: int) -> bytes:
        page = mem.get(maddr >> 12)
        if page is None:
            raise VmcoreError(f"{maddr:#x} not in the dump")
        return page[maddr & 0xFFF:(maddr & 0xFFF) + size]

    p2m = P2m(read, root)
    assert p2m.machine_runs([(8, 32)]) == [(0x1008, 0x100A), (0x100B, 0x1014), (0x1015, 0x101E),
                                           (0x101F, 0x1020), (0x2000, 0x2001)]
    assert p2m.machine_runs([(512, 515)]) == [(0x4FFE, 0x5001)]
    frames = dict(p2m.frames())
    assert len(frames) == 1024 - 2 and 10 not in frames and 20 not in frames and frames[30] == 0x2000
    assert p2m.runs() == [(0, 10), (11, 20), (21, 1024)]


def test_a_value_that_is_not_a_number_keeps_everything(tmp_path: Path) -> None:
    core = xen_machine(tmp_path, info=INFO.replace(b"SIZE(page_info)=32", b"SIZE(page_info)=x"))
    with ElfCore(core) as c:
        ex = xen_excluded_pages(c, [(0, MACHINE_FRAMES)], drop_free=True, drop_guests=True)
    assert ex.ranges == [] and "is not a number" in ex.note and ex.note.endswith("kept")


def test_dom0_frames_filtered_as_a_linux_dump(tmp_path: Path) -> None:
    """The Linux machine of test_vmcore_save_synth as a PV dom0: its memory at machine
    frames 1 GiB up (page-table entries rewritten to machine addresses, as PV's are), a
    p2m, Xen's crash-info note.  Dom0's left-out frames are exactly the Linux ones,
    moved by the p2m."""
    from test_vmcore_save_synth import (
        NPAGES,
        PFN_PD_VM,
        PFN_PDPT_DM,
        PFN_PDPT_VM,
        PFN_PML4,
        PFN_PT_VM,
        VMCOREINFO,
        machine,
        physical_memory,
    )

    from pykexec.layouts.elf import EHDR64_FMT, PHDR64_FMT, PT_LOAD, PT_NOTE
    from pykexec.vmcore.filtering import excluded_pages
    from pykexec.vmcore.paging import PageTables
    from pykexec.vmcore.pfn_runs import merge
    from pykexec.vmcore.vmcoreinfo import VmcoreInfo
    from pykexec.vmcore.xen_filter import dom0_excluded_frames

    off = 1 << 18                                   # machine frame of dom0's pfn 0: 1 GiB
    mem = physical_memory()
    plain, _ = machine(tmp_path, mem=bytearray(mem))
    info = VmcoreInfo(("\n".join(VMCOREINFO) + "\n").encode())
    with ElfCore(plain) as c:
        want = excluded_pages(info, PageTables(lambda a, n: c.read(a, n, physical=True), info),
                              [(0, NPAGES)], PAGE, 31)
    assert want.counts["free"] == 516

    def rebase(pfn: int, index: int) -> None:   # a table entry: physical -> machine address
        at = pfn * PAGE + index * 8
        struct.pack_into("<Q", mem, at, struct.unpack_from("<Q", mem, at)[0] + (off << 12))

    for pfn in (PFN_PML4, PFN_PDPT_DM, PFN_PDPT_VM, PFN_PD_VM, PFN_PT_VM):
        for i in range(512):
            if struct.unpack_from("<Q", mem, pfn * PAGE + i * 8)[0] & 1:
                rebase(pfn, i)
    leaves = NPAGES // 512
    root, mid = off + NPAGES, off + NPAGES + 1      # the p2m after dom0's memory
    p2m = bytearray(b"\xff" * (2 + leaves) * PAGE)
    struct.pack_into("<Q", p2m, 0, mid)
    for k in range(leaves):
        struct.pack_into("<Q", p2m, PAGE + 8 * k, root + 2 + k)
        struct.pack_into("<512Q", p2m, (2 + k) * PAGE, *(off + k * 512 + j for j in range(512)))
    crash = struct.pack("<10Q", 4, 17, 0, 0, 0, 0, 0, 0, XEN_PHYS_START, root)
    notes = pack_note(b"Xen", XEN_ELFNOTE_CRASH_INFO, crash) + pack_note(b"VMCOREINFO", 0, info.raw)
    body = bytes(mem) + bytes(p2m)
    start = EHDR64_FMT.size + 2 * PHDR64_FMT.size
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    core = tmp_path / "dom0.elf"
    core.write_bytes(EHDR64_FMT.pack(ident, 4, 62, 1, 0, 64, 0, 0, 64, 56, 2, 0, 0, 0)
                     + PHDR64_FMT.pack(PT_NOTE, 0, start, 0, 0, len(notes), len(notes), 0)
                     + PHDR64_FMT.pack(PT_LOAD, 7, start + len(notes), 0, off << 12, len(body), len(body), 0)
                     + notes + body)
    with ElfCore(core) as c:
        runs, counts, note = dom0_excluded_frames(c, 31)
    assert note == f"dom0: {want.note}" and counts == want.counts
    assert runs == merge([(s + off, e + off) for s, e in want.ranges])
