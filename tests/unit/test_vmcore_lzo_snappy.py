"""lzo and snappy kdump-compressed dumps (makedumpfile -l, -p) on synthetic machines:
written by ``vmcore save`` and read back; their pages checked against the C libraries
makedumpfile links (liblzo2's ``lzo1x_1_compress``/``lzo1x_decompress_safe``,
libsnappy's ``snappy_compress``/``snappy_uncompress``, through ctypes), libkdumpfile
(drgn) and makedumpfile itself: its ``-l`` dump read by us, ours re-compressed by it."""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pykexec.layouts import kdump as L
from pykexec.vmcore.errors import VmcoreError
from pykexec.vmcore.kdump import KdumpFile
from pykexec.vmcore.page_codecs import PageCompressor, decompressor
from pykexec.vmcore.save import save

from test_vmcore_save_synth import KTEXT, NPAGES, PAGE, PFN_PML4, RANDOM_PFNS, TEXT_PFNS, VMCOREINFO, machine, \
    physical_memory

CODECS = [("lzo", L.DUMP_DH_COMPRESSED_LZO), ("snappy", L.DUMP_DH_COMPRESSED_SNAPPY)]


def _saved_pages_equal(dump: Path, mem: bytearray) -> set[int]:
    """Every saved page of ``dump`` as in ``mem``; the page_desc flags seen."""
    flags = set()
    with KdumpFile(dump) as k:
        assert not k.incomplete
        for pfn in k.saved_pfns():
            flags.add(k.page_desc(pfn)[2])
            assert k.read_page(pfn) == bytes(mem[pfn * PAGE:(pfn + 1) * PAGE]), hex(pfn)
    return flags


@pytest.mark.parametrize("kind,flag", CODECS)
def test_round_trip_and_pages_that_do_not_shrink(tmp_path: Path, kind: str, flag: int) -> None:
    src, mem = machine(tmp_path)
    for threads in (1, 2):
        res = save(str(src), str(tmp_path / f"d{threads}"), compress=kind, dump_level=17, threads=threads,
                   progress=False)
        assert not res.incomplete and res.raw_pages == len(RANDOM_PFNS)
    assert (tmp_path / "d1").read_bytes() == (tmp_path / "d2").read_bytes()
    with KdumpFile(tmp_path / "d1") as k:
        assert k.header.status == flag
        assert {k.page_desc(p)[2] for p in TEXT_PFNS} == {flag}
        assert {k.page_desc(p)[1:3] for p in RANDOM_PFNS} == {(PAGE, 0)}  # raw, as makedumpfile stores them
    assert _saved_pages_equal(tmp_path / "d1", mem) == {0, flag}


@pytest.mark.parametrize("kind,flag", CODECS)
def test_cli_spellings_and_info(tmp_path: Path, kind: str, flag: int) -> None:
    src, _ = machine(tmp_path)
    run = [sys.executable, "-m", "pykexec.vmcore.cli"]
    for args in ([{"lzo": "-l", "snappy": "-p"}[kind]], ["--compress", kind]):
        dst = tmp_path / args[-1].lstrip("-")
        subprocess.run([*run, "save", *args, "-d", "17", str(src), str(dst)], check=True, capture_output=True)
        with KdumpFile(dst) as k:
            assert k.header.status == flag
    info = subprocess.run([*run, "info", str(dst)], capture_output=True, text=True, check=True).stdout
    assert "kdump-compressed" in info and "6.1.0-synthetic" in info
    res = subprocess.run([*run, "save", "--compress", kind, "--level", "3", str(src), str(tmp_path / "x")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and f"{kind} level 3 out of range (1 to 1)" in res.stderr


@pytest.mark.parametrize("kind,flag", CODECS)
def test_corrupt_pages_are_named(tmp_path: Path, kind: str, flag: int) -> None:
    src, _ = machine(tmp_path)
    save(str(src), str(tmp_path / "d"), compress=kind, dump_level=17, progress=False)
    with KdumpFile(tmp_path / "d") as k:
        offset, size, _, _ = k.page_desc(TEXT_PFNS[0])
    data = bytearray((tmp_path / "d").read_bytes())
    data[offset:offset + size] = b"\xff" * size   # snappy: a length prefix far past a page
    (tmp_path / "d").write_bytes(data)
    with KdumpFile(tmp_path / "d") as k, pytest.raises(VmcoreError, match=f"page {TEXT_PFNS[0]:#x} d"):
        k.read_page(TEXT_PFNS[0])


# -- the C libraries makedumpfile links ----------------------------------------------------------

def _c_library(name: str) -> ctypes.CDLL:
    """The system's lib``name``, else the copy drgn's wheel carries for libkdumpfile."""
    import drgn

    path = ctypes.util.find_library(name) or next(iter(sorted(glob.glob(
        os.path.join(os.path.dirname(os.path.dirname(drgn.__file__)), "drgn.libs", f"lib{name}-*.so*")))), None)
    if path is None:
        pytest.skip(f"no lib{name} here")
    return ctypes.CDLL(path)


def _pages(tmp_path: Path) -> list[bytes]:
    _, mem = machine(tmp_path)
    return [bytes(mem[p * PAGE:(p + 1) * PAGE]) for p in (*TEXT_PFNS, *RANDOM_PFNS[:4], 0, 16, 48)]


def test_lzo_against_liblzo2(tmp_path: Path) -> None:
    """Our pages through lzo1x_decompress_safe; lzo1x_1_compress's (makedumpfile -l) through ours."""
    lzo = _c_library("lzo2")
    pages = _pages(tmp_path)
    pool = PageCompressor("lzo", 1)
    ours = pool.compress(bytearray(b"".join(pages)), [i * PAGE for i in range(len(pages))], PAGE)
    assert ours is not None
    out = ctypes.create_string_buffer(PAGE)
    wrkmem = ctypes.create_string_buffer(1 << 17)  # LZO1X_1_MEM_COMPRESS: 16384 pointers
    dest = ctypes.create_string_buffer(PAGE + PAGE // 16 + 64 + 3)
    for page, compressed in zip(pages, ours):
        size = ctypes.c_size_t(PAGE)
        assert lzo.lzo1x_decompress_safe(bytes(compressed), ctypes.c_size_t(len(compressed)), out,
                                         ctypes.byref(size), None) == 0
        assert out.raw[:size.value] == page
        length = ctypes.c_size_t(0)
        assert lzo.lzo1x_1_compress(page, ctypes.c_size_t(PAGE), dest, ctypes.byref(length), wrkmem) == 0
        assert decompressor(L.DUMP_DH_COMPRESSED_LZO)(dest.raw[:length.value], PAGE) == page


def test_snappy_against_libsnappy(tmp_path: Path) -> None:
    """Our pages through snappy_uncompress; snappy_compress's (makedumpfile -p) through ours."""
    snappy = _c_library("snappy")
    pages = _pages(tmp_path)
    ours = PageCompressor("snappy", 1).compress(bytearray(b"".join(pages)), [i * PAGE for i in range(len(pages))],
                                                PAGE)
    assert ours is not None
    out = ctypes.create_string_buffer(PAGE)
    dest = ctypes.create_string_buffer(snappy.snappy_max_compressed_length(ctypes.c_size_t(PAGE)))
    for page, compressed in zip(pages, ours):
        size = ctypes.c_size_t(PAGE)
        assert snappy.snappy_uncompress(bytes(compressed), ctypes.c_size_t(len(compressed)),
                                        out, ctypes.byref(size)) == 0
        assert out.raw[:size.value] == page
        length = ctypes.c_size_t(len(dest))
        assert snappy.snappy_compress(page, ctypes.c_size_t(PAGE), dest, ctypes.byref(length)) == 0
        assert decompressor(L.DUMP_DH_COMPRESSED_SNAPPY)(dest.raw[:length.value], PAGE) == page


@pytest.mark.parametrize("kind,flag", CODECS)
def test_libkdumpfile_reads_them(tmp_path: Path, kind: str, flag: int) -> None:
    import drgn

    # libkdumpfile sets up address translation even for physical reads: it wants these.
    info = [*VMCOREINFO, f"SYMBOL(swapper_pg_dir)={KTEXT + PFN_PML4 * PAGE:x}", "NUMBER(pgtable_l5_enabled)=0"]
    src, mem = machine(tmp_path, info=info)
    save(str(src), str(tmp_path / "d"), compress=kind, dump_level=17, progress=False)
    prog = drgn.Program()
    prog.set_core_dump(str(tmp_path / "d"))
    with KdumpFile(tmp_path / "d") as k:
        for pfn in k.saved_pfns():
            assert prog.read(pfn * PAGE, PAGE, True) == bytes(mem[pfn * PAGE:(pfn + 1) * PAGE]), hex(pfn)


# -- makedumpfile --------------------------------------------------------------------------------

def _makedumpfile() -> tuple[str, set[str]]:
    """makedumpfile and the codecs it was built with (``-v``: ``lzo\\tenabled``)."""
    path = shutil.which("makedumpfile")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("makedumpfile missing in CI")
        pytest.skip("makedumpfile not installed")
    version = subprocess.run([path, "-v"], capture_output=True, text=True).stdout
    return path, {line.split()[0] for line in version.splitlines() if line.endswith("\tenabled")}


def _machine_makedumpfile_takes(tmp_path: Path) -> tuple[Path, bytearray]:
    """The synthetic machine, with what makedumpfile wants besides: the kernel text mapped
    by the page tables (it reads init_uts_ns through them), and struct page's flags,
    _refcount and mapping in VMCOREINFO (it tells the memory model by them)."""
    mem = physical_memory()
    pdpt, pd = 5, 6  # free pfns
    struct.pack_into("<Q", mem, PFN_PML4 * PAGE + 511 * 8, pdpt * PAGE | 3)  # __START_KERNEL_map
    struct.pack_into("<Q", mem, pdpt * PAGE + 510 * 8, pd * PAGE | 3)
    struct.pack_into("<Q", mem, pd * PAGE, 0x80 | 3)                         # one 2 MiB page at 0
    info = [*VMCOREINFO, "OFFSET(page.flags)=0", "OFFSET(page._refcount)=52", "OFFSET(page.mapping)=24"]
    return machine(tmp_path, mem=mem, info=info)


@pytest.mark.parametrize("kind,flag", CODECS)
def test_makedumpfile_reads_ours_and_we_read_its(tmp_path: Path, kind: str, flag: int) -> None:
    makedumpfile, enabled = _makedumpfile()
    if kind not in enabled:
        # Debian's makedumpfile is built without snappy: check our pages with the library
        # a snappy-enabled makedumpfile links with instead.
        assert kind == "snappy", f"this makedumpfile was built without {kind}"
        _check_with_libsnappy(tmp_path)
        return
    src, mem = _machine_makedumpfile_takes(tmp_path)
    option = {"lzo": "-l", "snappy": "-p"}[kind]
    theirs, ours, again = tmp_path / "theirs", tmp_path / "ours", tmp_path / "again"
    subprocess.run([makedumpfile, option, "-d", "1", str(src), str(theirs)], check=True, capture_output=True)
    assert _saved_pages_equal(theirs, mem) == {0, flag}
    save(str(src), str(ours), compress=kind, dump_level=1, progress=False)
    # makedumpfile takes a kdump-compressed dump as its input: every page of ours goes
    # through its decompressor (a page that fails stops it), then out as zlib.
    res = subprocess.run([makedumpfile, "-c", "-d", "1", str(ours), str(again)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert _saved_pages_equal(again, mem) == {0, L.DUMP_DH_COMPRESSED_ZLIB}
    with KdumpFile(ours) as a, KdumpFile(theirs) as b:
        assert list(a.saved_pfns()) == list(b.saved_pfns()) == list(range(NPAGES))


def _libsnappy() -> ctypes.CDLL:
    """Google's libsnappy (snappy-c.h), which makedumpfile's -p compresses with."""
    try:
        return ctypes.CDLL("libsnappy.so.1")
    except OSError:
        pytest.fail("libsnappy.so.1 missing (libsnappy1v5; run .ci/install-deps.sh)")


def _check_with_libsnappy(tmp_path: Path) -> None:
    """Every snappy page of our dump decompresses with libsnappy to the page in memory,
    and pages libsnappy compressed, put in the dump's place, read back as the memory."""
    lib = _libsnappy()
    src, mem = machine(tmp_path)
    ours = tmp_path / "ours"
    save(str(src), str(ours), compress="snappy", dump_level=1, progress=False)
    data = bytearray(ours.read_bytes())
    out, out_len = ctypes.create_string_buffer(PAGE), ctypes.c_size_t()
    replaced = 0
    with KdumpFile(ours) as k:
        for pfn in k.saved_pfns():
            offset, size, flags = k.page_desc(pfn)[:3]
            page = bytes(mem[pfn * PAGE:(pfn + 1) * PAGE])
            if flags != L.DUMP_DH_COMPRESSED_SNAPPY:
                continue
            out_len.value = PAGE
            assert lib.snappy_uncompress(bytes(data[offset:offset + size]), ctypes.c_size_t(size), out,
                                         ctypes.byref(out_len)) == 0, hex(pfn)
            assert out.raw[:out_len.value] == page, hex(pfn)
            theirs, theirs_len = ctypes.create_string_buffer(2 * PAGE), ctypes.c_size_t(2 * PAGE)
            assert lib.snappy_compress(page, ctypes.c_size_t(PAGE), theirs, ctypes.byref(theirs_len)) == 0
            if theirs_len.value == size:  # same length: it fits the dump's slot as it is
                data[offset:offset + size] = theirs.raw[:size]
                replaced += 1
    assert replaced > 0
    (tmp_path / "mixed").write_bytes(data)
    assert _saved_pages_equal(tmp_path / "mixed", mem) == {0, L.DUMP_DH_COMPRESSED_SNAPPY}
