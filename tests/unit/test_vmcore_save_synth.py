"""``pykexec vmcore save`` on synthetic dumps: exact headers, bitmaps and descriptors,
page contents, free-page exclusion through page tables + mem_section, incomplete dumps,
refusals.

The synthetic machine (:func:`machine`) has 8 MiB of RAM in two PT_LOADs plus a
kernel-text PT_LOAD that repeats part of it (as x86_64 cores do), real 4-level
page tables (a 1 GiB direct map, a vmemmap mapped with 4 KiB pages), a
SPARSEMEM_EXTREME ``mem_section`` and a ``struct page`` array with two buddy
blocks, laid out with the VMCOREINFO values of a real 6.1 kernel.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from pykexec.errors import UsageError
from pykexec.layouts import kdump as L
from pykexec.vmcore.errors import VmcoreError
from pykexec.vmcore.filtering import excluded_pages
from pykexec.vmcore.kdump import KdumpFile
from pykexec.vmcore.pfn_runs import merge, set_bits, subtract
from pykexec.vmcore.save import save

from support.vmcore_synth import Memory, Region, write_core

PAGE = 4096
NPAGES = 2048                      # 8 MiB of RAM
DIRECT = 0xFFFF888000000000
VMEMMAP = 0xFFFFEA0000000000
KTEXT = 0xFFFFFFFF80000000         # __START_KERNEL_map; phys_base 0
PFN_PML4, PFN_PDPT_DM, PFN_PDPT_VM, PFN_PD_VM, PFN_PT_VM = 0, 1, 2, 3, 4
PFN_ROOTS, PFN_SECTIONS, PFN_STRUCT_PAGES, PFN_UTS = 8, 12, 16, 48
BUDDIES = ((1024, 9), (1800, 2))   # (head pfn, order): pfns 1024-1535 and 1800-1803 are free
RANDOM_PFNS = range(64, 96)        # incompressible: stored raw
TEXT_PFNS = range(96, 160)         # compressible
BUDDY_MAPCOUNT = -129              # NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE) of 6.1


def _free_pfns() -> set[int]:
    return {p for head, order in BUDDIES for p in range(head, head + (1 << order))}


def physical_memory(*, buddy_value: int = BUDDY_MAPCOUNT) -> bytearray:
    mem = bytearray(NPAGES * PAGE)

    def u64(pfn: int, index: int, value: int) -> None:
        struct.pack_into("<Q", mem, pfn * PAGE + index * 8, value)

    # Page tables: PML4 -> direct map (one 1 GiB page) and -> vmemmap (4 KiB pages).
    u64(PFN_PML4, (DIRECT >> 39) & 511, PFN_PDPT_DM * PAGE | 3)
    u64(PFN_PDPT_DM, 0, 0 | 0x80 | 3)
    u64(PFN_PML4, (VMEMMAP >> 39) & 511, PFN_PDPT_VM * PAGE | 3)
    u64(PFN_PDPT_VM, (VMEMMAP >> 30) & 511, PFN_PD_VM * PAGE | 3)
    u64(PFN_PD_VM, (VMEMMAP >> 21) & 511, PFN_PT_VM * PAGE | 3)
    for i in range(NPAGES * 64 // PAGE):   # the struct page array: 32 pages
        u64(PFN_PT_VM, i, (PFN_STRUCT_PAGES + i) * PAGE | 3)
    # mem_section (EXTREME): roots[0] -> section array; section 0's mem_map = vmemmap.
    u64(PFN_ROOTS, 0, DIRECT + PFN_SECTIONS * PAGE)
    u64(PFN_SECTIONS, 0, VMEMMAP | 0x7)    # present | has mem_map | online
    for head, order in BUDDIES:
        base = PFN_STRUCT_PAGES * PAGE + head * 64
        struct.pack_into("<Q", mem, base + 40, order)
        struct.pack_into("<i", mem, base + 48, buddy_value)
    # init_uts_ns.name
    for i, field in enumerate((b"Linux", b"synth", b"6.1.0-synthetic", b"#1 SMP", b"x86_64", b"(none)")):
        mem[PFN_UTS * PAGE + 4 + 65 * i:PFN_UTS * PAGE + 4 + 65 * i + len(field)] = field
    rng = random.Random(7)
    for pfn in RANDOM_PFNS:
        mem[pfn * PAGE:(pfn + 1) * PAGE] = rng.randbytes(PAGE)
    for pfn in TEXT_PFNS:
        line = f"page {pfn}: the quick brown fox jumps over the lazy dog\n".encode()
        mem[pfn * PAGE:(pfn + 1) * PAGE] = (line * (PAGE // len(line) + 1))[:PAGE]
    for pfn in sorted(_free_pfns()):        # garbage in free pages: must not be saved
        mem[pfn * PAGE:pfn * PAGE + 16] = b"stale free data!"
    return mem


VMCOREINFO = [
    "OSRELEASE=6.1.0-synthetic", "PAGESIZE=4096", f"SYMBOL(init_uts_ns)={KTEXT + PFN_UTS * PAGE:x}",
    "OFFSET(uts_namespace.name)=4", f"SYMBOL(init_top_pgt)={KTEXT + PFN_PML4 * PAGE:x}", "NUMBER(phys_base)=0",
    f"SYMBOL(mem_section)={DIRECT + PFN_ROOTS * PAGE:x}", "LENGTH(mem_section)=2048", "SIZE(mem_section)=16",
    "OFFSET(mem_section.section_mem_map)=0", "NUMBER(SECTION_SIZE_BITS)=27", "NUMBER(MAX_PHYSMEM_BITS)=46",
    "SIZE(page)=64", "OFFSET(page._mapcount)=48", "OFFSET(page.private)=40",
    f"NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)={BUDDY_MAPCOUNT}", "LENGTH(zone.free_area)=11",
    "CRASHTIME=1700000000",
]


def machine(tmp_path: Path, *, info: list[str] | None = None, mem: bytearray | None = None,
            name: str = "vmcore.elf") -> tuple[Path, bytearray]:
    mem = physical_memory() if mem is None else mem
    half = NPAGES * PAGE // 2
    regions = [
        # kernel text: pfns 0-63 again, at their __START_KERNEL_map addresses
        Region(KTEXT, 0, bytearray(mem[:64 * PAGE]), 64 * PAGE),
        Region(DIRECT, 0, bytearray(mem[:half]), half),
        Region(DIRECT + half, half, bytearray(mem[half:]), half),
    ]
    text = "\n".join(VMCOREINFO if info is None else info) + "\n"
    return write_core(tmp_path / name, Memory(regions), text), mem


def _bits(bitmap: bytes, n: int) -> set[int]:
    return {p for p in range(n) if bitmap[p >> 3] >> (p & 7) & 1}


# -- helpers -------------------------------------------------------------------------------------

def test_range_helpers() -> None:
    assert merge([(5, 7), (0, 2), (1, 3), (7, 9)]) == [(0, 3), (5, 9)]
    assert subtract([(0, 10), (20, 30)], [(2, 4), (8, 22), (29, 40)]) == [(0, 2), (4, 8), (22, 29)]
    assert subtract([(0, 10)], []) == [(0, 10)]
    bm = bytearray(4)
    set_bits(bm, 3, 21)
    assert _bits(bm, 32) == set(range(3, 21))


# -- the format, exactly ---------------------------------------------------------------------

@pytest.mark.parametrize("compress,flag", [("zstd", L.DUMP_DH_COMPRESSED_ZSTD),
                                           ("zlib", L.DUMP_DH_COMPRESSED_ZLIB), ("none", 0)])
def test_save_layout_exact(tmp_path: Path, compress: str, flag: int) -> None:
    src, mem = machine(tmp_path)
    dst = tmp_path / "dump.kdump"
    res = save(str(src), str(dst), compress=compress, progress=False)
    assert not res.incomplete
    free = _free_pfns()
    nonzero = {p for p in range(NPAGES) if any(mem[p * PAGE:(p + 1) * PAGE])} - free
    assert res.ram_pages == NPAGES and res.free_pages == len(free)
    assert res.saved_pages == NPAGES - len(free)
    assert res.zero_pages == NPAGES - len(free) - len(nonzero)

    raw = dst.read_bytes()
    h = L.DiskDumpHeader.from_buffer_copy(raw)
    assert (h.signature, h.header_version, h.status, h.block_size) == (b"KDUMP   ", 6, flag, PAGE)
    assert (h.utsname.sysname, h.utsname.nodename, h.utsname.release, h.utsname.machine) == (
        b"Linux", b"synth", b"6.1.0-synthetic", b"x86_64")
    assert h.timestamp.tv_sec == 1700000000 and h.nr_cpus == 1
    assert h.sub_hdr_size == 1 and h.bitmap_blocks == 2 and h.max_mapnr == NPAGES
    s = L.KdumpSubHeader.from_buffer_copy(raw, PAGE)
    assert (s.phys_base, s.dump_level, s.split, s.max_mapnr_64) == (0, 31, 0, NPAGES)
    assert s.offset_note == PAGE + 104
    notes = raw[s.offset_note:s.offset_note + s.size_note]
    assert notes.startswith(struct.pack("<III", 5, 336, 1) + b"CORE\0\0\0\0")
    assert raw[s.offset_vmcoreinfo:s.offset_vmcoreinfo + s.size_vmcoreinfo].startswith(
        b"OSRELEASE=6.1.0-synthetic\nPAGESIZE=4096\n")
    bitmap1 = raw[2 * PAGE:3 * PAGE]
    bitmap2 = raw[3 * PAGE:4 * PAGE]
    assert _bits(bitmap1, 8 * PAGE) == set(range(NPAGES))
    assert _bits(bitmap2, 8 * PAGE) == set(range(NPAGES)) - free
    pd_off = 4 * PAGE
    data_off = pd_off + 24 * res.saved_pages
    assert raw[data_off:data_off + PAGE] == bytes(PAGE)   # the shared zero page
    pos = data_off + PAGE
    for i, pfn in enumerate(sorted(set(range(NPAGES)) - free)):
        off, size, flags, page_flags = L.PAGE_DESC_FMT.unpack_from(raw, pd_off + 24 * i)
        assert page_flags == 0
        page = bytes(mem[pfn * PAGE:(pfn + 1) * PAGE])
        if pfn not in nonzero:
            assert (off, size, flags) == (data_off, PAGE, 0)
            continue
        assert off == pos, pfn     # data in pfn order, packed
        pos += size
        stored = raw[off:off + size]
        if pfn in RANDOM_PFNS or compress == "none":
            assert (size, flags) == (PAGE, 0) and stored == page
        else:
            assert flags == flag and size < PAGE
            if compress == "zlib":
                assert zlib.decompress(stored) == page
            else:
                import zstandard
                assert zstandard.ZstdDecompressor().decompress(stored) == page
    assert pos == len(raw)


def test_every_saved_page_reads_back(tmp_path: Path) -> None:
    src, mem = machine(tmp_path)
    dst = tmp_path / "d"
    save(str(src), str(dst), progress=False)
    with KdumpFile(dst) as k:
        assert not k.incomplete and k.max_mapnr == NPAGES
        assert k.vmcoreinfo is not None and k.vmcoreinfo.osrelease == "6.1.0-synthetic"
        saved = list(k.saved_pfns())
        assert saved == sorted(set(range(NPAGES)) - _free_pfns())
        for pfn in saved:
            assert k.read_page(pfn) == bytes(mem[pfn * PAGE:(pfn + 1) * PAGE])
        assert k.read_page(1024) is None and k.is_ram(1024)


def test_dump_levels(tmp_path: Path) -> None:
    src, mem = machine(tmp_path)
    res = save(str(src), str(tmp_path / "d1"), dump_level=1, progress=False)
    assert res.free_pages == 0 and res.saved_pages == NPAGES and res.zero_pages > 0
    res = save(str(src), str(tmp_path / "d0"), dump_level=0, progress=False)
    assert res.zero_pages == 0 and res.saved_pages == NPAGES
    with KdumpFile(tmp_path / "d0") as k:
        assert k.read_page(1500) == bytes(mem[1500 * PAGE:1501 * PAGE])
        assert k.page_desc(2000)[1] < PAGE  # a zero page, compressed on its own
    res = save(str(src), str(tmp_path / "d16"), dump_level=16, progress=False)
    assert res.zero_pages == 0 and res.saved_pages == NPAGES - len(_free_pfns())


def test_free_pages_6_12_page_type(tmp_path: Path) -> None:
    """6.12 encodes the buddy type as PGTY_buddy << 24 (NUMBER = -268435456)."""
    value = -268435456
    info = [k for k in VMCOREINFO if not k.startswith("NUMBER(PAGE_BUDDY")]
    info.append(f"NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)={value}")
    src, _ = machine(tmp_path, info=info, mem=physical_memory(buddy_value=value))
    res = save(str(src), str(tmp_path / "d"), progress=False)
    assert res.free_pages == len(_free_pfns())


def test_free_pages_ignore_misaligned_marker(tmp_path: Path) -> None:
    mem = physical_memory()
    # The marker's bytes inside some other field of a struct page: not a buddy head.
    struct.pack_into("<i", mem, PFN_STRUCT_PAGES * PAGE + 300 * 64 + 8, BUDDY_MAPCOUNT)
    src, _ = machine(tmp_path, mem=mem)
    assert save(str(src), str(tmp_path / "d"), progress=False).free_pages == len(_free_pfns())


def test_without_free_page_keys_zero_pages_only(tmp_path: Path) -> None:
    info = [k for k in VMCOREINFO if "mem_section" not in k]
    src, _ = machine(tmp_path, info=info)
    res = save(str(src), str(tmp_path / "d"), dump_level=17, progress=False)
    assert res.free_pages == 0 and "mem_section" in res.filter_note and "free pages kept" in res.filter_note
    assert res.saved_pages == NPAGES


def test_free_pages_direct(tmp_path: Path) -> None:
    from pykexec.vmcore.elfcore import ElfCore
    from pykexec.vmcore.paging import PageTables

    src, _ = machine(tmp_path)
    with ElfCore(src) as core:
        info = core.require_vmcoreinfo()
        tables = PageTables(lambda a, n: core.read(a, n, physical=True), info)
        assert tables.translate(VMEMMAP + 5000)[0] == PFN_STRUCT_PAGES * PAGE + 5000
        assert tables.translate(DIRECT + 0x123456)[0] == 0x123456
        with pytest.raises(VmcoreError, match="not mapped"):
            tables.translate(0xFFFFC90000000000)
        assert excluded_pages(info, tables, [(0, NPAGES)], PAGE, 16).ranges == [(1024, 1536), (1800, 1804)]


# -- incomplete dumps ---------------------------------------------------------------------------

def test_truncated_source_is_flagged_incomplete(tmp_path: Path) -> None:
    src, mem = machine(tmp_path)
    size = src.stat().st_size
    with open(src, "r+b") as f:
        f.truncate(size - 3 * PAGE * 100)      # the last 300 pages of RAM are gone
    dst = tmp_path / "d"
    res = subprocess.run([sys.executable, "-m", "pykexec.vmcore.cli", "save", "-d", "17", str(src), str(dst)],
                         capture_output=True, text=True)
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and "INCOMPLETE" in lines[0] and "truncated" in lines[0], res.stderr
    with KdumpFile(dst) as k:
        assert k.incomplete
        assert k.header.status == L.DUMP_DH_COMPRESSED_ZSTD | L.DUMP_DH_COMPRESSED_INCOMPLETE
        assert k.read_page(100) == bytes(mem[100 * PAGE:101 * PAGE])     # before the break
        assert k.is_saved(NPAGES - 1) and k.read_page(NPAGES - 1) is None  # descriptor left zero


def test_disk_full_is_one_line(tmp_path: Path) -> None:
    src, _ = machine(tmp_path)
    res = subprocess.run([sys.executable, "-m", "pykexec.vmcore.cli", "save", "--force", str(src),
                          "/dev/full"], capture_output=True, text=True)
    assert res.returncode == 1
    assert len(res.stderr.splitlines()) == 1 and "No space left" in res.stderr, res.stderr


# -- refusals and the CLI ------------------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pykexec.vmcore.cli", "save", *args],
                          capture_output=True, text=True)


def test_refusals(tmp_path: Path) -> None:
    src, _ = machine(tmp_path)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    dst = tmp_path / "exists"
    dst.write_bytes(b"keep me")
    for args, msg in [((str(src), str(dst)), "exists (use --force"),
                      ((str(src), str(src)), "same file as SRC"),
                      ((str(src), str(tmp_path / ".." / tmp_path.name / "vmcore.elf")), "same file"),
                      (("-d", "32", str(src), str(tmp_path / "x")), "dump level 32 out of range"),
                      (("--compress", "lz5", str(src), str(tmp_path / "x")), "unknown compression"),
                      ((str(src),), "expected SRC and DST"),
                      (("--bogus", str(src), str(tmp_path / "x")), "unknown option")]:
        res = _cli(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert msg in res.stderr.splitlines()[0] and "Traceback" not in res.stderr
    assert dst.read_bytes() == b"keep me" and not (tmp_path / "x").exists()
    notelf = tmp_path / "notelf"
    notelf.write_bytes(b"hello" * 100)
    res = _cli(str(notelf), str(tmp_path / "y"))
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "not an ELF" in res.stderr
    assert not (tmp_path / "y").exists()
    # --force overwrites; the source is untouched throughout
    res = _cli("--force", "--compress=zlib", "-d17", str(src), str(dst))
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert dst.read_bytes()[:8] == b"KDUMP   "
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest


def test_api_refusals(tmp_path: Path) -> None:
    src, _ = machine(tmp_path)
    with pytest.raises(UsageError):
        save(str(src), str(src))
    with pytest.raises(UsageError, match="out of range"):
        save(str(src), str(tmp_path / "d"), dump_level=64)


def test_help() -> None:
    res = _cli("--help")
    assert res.returncode == 0 and "kdump-compressed" in res.stdout


def test_progress_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pykexec.vmcore.save import Progress

    bar = Progress(100 << 20, True)
    bar._next = 0
    bar.update(50 << 20)
    bar.finish()
    err = capsys.readouterr().err
    assert err.startswith("\rpykexec: saving  50%") and "MB/s" in err and "\n" not in err


def test_threads_same_output(tmp_path: Path) -> None:
    src, _ = machine(tmp_path)
    save(str(src), str(tmp_path / "t1"), threads=1, progress=False)
    save(str(src), str(tmp_path / "t2"), threads=2, progress=False)
    assert (tmp_path / "t1").read_bytes() == (tmp_path / "t2").read_bytes()


@pytest.mark.parametrize("truncate", [False, True])
def test_threads_same_output_small_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            truncate: bool) -> None:
    # Many small batches, each split over 2 compression threads, and a truncated source
    # that stops in the middle of one: the same bytes as with 1 thread.
    from pykexec.vmcore import kdump_writer

    monkeypatch.setattr(kdump_writer, "CHUNK_PAGES", 64)
    src, _ = machine(tmp_path)
    if truncate:
        with open(src, "r+b") as f:
            f.truncate(src.stat().st_size - 300 * PAGE)
    one = save(str(src), str(tmp_path / "t1"), threads=1, progress=False)
    two = save(str(src), str(tmp_path / "t2"), threads=2, progress=False)
    assert bool(one.incomplete) == truncate and two.incomplete == one.incomplete
    assert (one.saved_pages, one.zero_pages) == (two.saved_pages, two.zero_pages)
    assert (tmp_path / "t1").read_bytes() == (tmp_path / "t2").read_bytes()


@pytest.mark.parametrize("compress,level", [("zstd", -5), ("zstd", 3), ("zlib", 9)])
def test_levels_change_bytes_not_pages(tmp_path: Path, compress: str, level: int) -> None:
    src, mem = machine(tmp_path)
    save(str(src), str(tmp_path / "default"), compress=compress, progress=False)
    save(str(src), str(tmp_path / "other"), compress=compress, level=level, progress=False)
    assert (tmp_path / "default").read_bytes() != (tmp_path / "other").read_bytes()
    with KdumpFile(tmp_path / "other") as k:
        saved = list(k.saved_pfns())
        assert saved == sorted(set(range(NPAGES)) - _free_pfns())
        for pfn in saved:
            assert k.read_page(pfn) == bytes(mem[pfn * PAGE:(pfn + 1) * PAGE])


def test_level_refusals(tmp_path: Path) -> None:
    src, _ = machine(tmp_path)
    for args, msg in [(("--level", "20"), "zstd level 20 out of range (-50 to 19)"),
                      (("--compress", "zlib", "--level=0"), "zlib level 0 out of range (1 to 9)"),
                      (("--level", "fast"), "--level needs a number")]:
        res = _cli(*args, str(src), str(tmp_path / "x"))
        assert res.returncode == 2 and msg in res.stderr.splitlines()[0], res.stderr
    assert not (tmp_path / "x").exists()


def test_default_level_31_says_what_it_kept(tmp_path: Path) -> None:
    """The synthetic kernel exports no page flags: cache and user pages cannot be
    judged, so they are kept, free pages still go, and one line says so."""
    src, _ = machine(tmp_path)
    res = _cli(str(src), str(tmp_path / "d"))
    assert res.returncode == 0
    assert res.stderr == "pykexec: VMCOREINFO has no OFFSET(page.flags): cache and user pages kept\n"
    with KdumpFile(tmp_path / "d") as k:
        assert k.sub.dump_level == 31
        assert list(k.saved_pfns()) == sorted(set(range(NPAGES)) - _free_pfns())


def test_zstandard_that_does_not_load_is_named(tmp_path: Path) -> None:
    """An installed zstandard whose library is missing fails to import: one line that
    says so and offers zlib; nothing written."""
    src, _ = machine(tmp_path)
    code = ("import sys; sys.modules['zstandard'] = None; from pykexec.vmcore.cli import main; "
            f"sys.exit(main(['save', '-d', '17', {str(src)!r}, {str(tmp_path / 'd')!r}]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 1 and len(res.stderr.splitlines()) == 1, res.stderr
    assert "zstandard module, which does not load (" in res.stderr and "--compress zlib" in res.stderr
    assert not (tmp_path / "d").exists()


def test_makedumpfile_spellings(tmp_path: Path) -> None:
    """A kdump configuration's `makedumpfile -c -d 31 SRC DST` works with the command
    swapped; -l and -p write lzo and snappy; -E writes ELF."""
    from pykexec.vmcore.cli import parse_save_args

    src, _ = machine(tmp_path)
    assert parse_save_args(["-c", "-d", "31", "a", "b"]) == {"compress": "zlib", "dump_level": 31, "src": "a", "dst": "b"}
    assert parse_save_args(["-z", "-E", "a", "b"]) == {"compress": "zstd", "fmt": "elf", "src": "a", "dst": "b"}
    assert parse_save_args(["-l", "a", "b"]) == {"compress": "lzo", "src": "a", "dst": "b"}
    assert parse_save_args(["-p", "a", "b"]) == {"compress": "snappy", "src": "a", "dst": "b"}
    res = _cli("-c", "-d", "17", str(src), str(tmp_path / "z"))
    assert res.returncode == 0, res.stderr
    with KdumpFile(tmp_path / "z") as k:
        assert k.header.status == L.DUMP_DH_COMPRESSED_ZLIB
    res = _cli("-E", "-d", "17", str(src), str(tmp_path / "e"))
    assert res.returncode == 0 and (tmp_path / "e").read_bytes()[:4] == b"\x7fELF", res.stderr


def test_summary_line_names_what_was_left_out(tmp_path: Path) -> None:
    from pykexec.vmcore.save import summary

    src, _ = machine(tmp_path)
    res = save(str(src), str(tmp_path / "d"), dump_level=17, progress=False)
    line = summary(res, "d")
    assert line.startswith(f"pykexec: saved d: {res.saved_pages} of {NPAGES} pages ({res.zero_pages} of them zero; "
                           f"left out: {len(_free_pfns())} free), ")
    assert line.endswith("MB/s)\n") and line.count("\n") == 1
    res = save(str(src), str(tmp_path / "d0"), dump_level=0, progress=False)
    assert "left out: none)" in summary(res, "d0")


def test_save_is_lazy_about_imports() -> None:
    code = ("import sys, pykexec.vmcore.save; "
            "bad = [m for m in ('dataclasses', 'typing', 'pathlib', 'zstandard') if m in sys.modules]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={
        **os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}).stdout.strip()
    assert out == "[]"
