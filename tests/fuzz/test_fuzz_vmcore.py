"""Fuzz the dump readers: ElfCore (headers, notes, address translation), VMCOREINFO,
the three printk formats, ``vmcore info``, and the kdump-compressed reader.

Seeds are the unit tests' synthetic dumps (vmcore_synth), so mutations land on the
fields a hostile dump would lie in: program headers, note sizes, VMCOREINFO values and
the printk structures' counts, indexes and lengths."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.fuzzlib import INTERESTING, fuzz_settings, mutated, outcome
from support.vmcore_synth import Memory, base_vmcoreinfo, legacy_log, lockless_log, make_msgs, structured_log, write_core

from pykexec.errors import KexecError
from pykexec.vmcore import info as info_mod
from pykexec.vmcore.elfcore import ElfCore
from pykexec.vmcore.printk import boot_time, format_log, read_log
from pykexec.vmcore.vmcoreinfo import VmcoreInfo


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # Module scope: hypothesis runs many examples per test function call.
    with tempfile.TemporaryDirectory(prefix="pykexec-fuzz-") as d:
        yield Path(d)


def _layout(kind: str) -> tuple[Memory, list[str], list[int]]:
    """A small dump's memory, its VMCOREINFO lines, and the kernel virtual addresses of
    the structures worth corrupting."""
    mem = Memory.standard(buf_size=0x4000)
    msgs = make_msgs(12)
    if kind == "lockless":
        lines, ring = lockless_log(mem, msgs, count_bits=3, size_bits=9)
        hot = [ring.prb + o for o in range(0, 88, 8)] + [ring.prb_ptr, ring.descs, ring.descs + 8, ring.infos + 16]
    elif kind == "structured":
        lines, slog = structured_log(mem, msgs, buf_len=512)
        hot = [slog.first_idx_sym, slog.next_idx_sym, slog.len_sym, slog.log_buf, slog.log_buf + 8]
    else:
        lines, end_sym = legacy_log(mem, b"<6>[    1.000000] hello\n<4>world\n" * 5, buf_len=128)
        hot = [end_sym, end_sym + 8]
    return mem, base_vmcoreinfo() + lines, hot


def _file_offsets(mem: Memory, notes_len: int, vaddrs: list[int]) -> list[int]:
    """File offsets of ``vaddrs`` in write_core's layout (ehdr, phdrs, notes, regions)."""
    off = 64 + 56 * (1 + len(mem.regions)) + notes_len
    starts = []
    for r in mem.regions:
        starts.append((r, off))
        off += len(r.data)
    out = []
    for v in vaddrs:
        for r, start in starts:
            if r.vaddr <= v < r.vaddr + len(r.data):
                out.append(start + v - r.vaddr)
    return out


_NUMBER = st.sampled_from(INTERESTING).map(str) | st.integers(-(1 << 64), 1 << 64).map(str) \
    | st.sampled_from(("", "x", "0x", "-1", "ffffffffffffffffffff", "1e9"))


@st.composite
def vmcoreinfo_lines(draw: st.DrawFn, lines: list[str]) -> list[str]:
    """Real VMCOREINFO lines with some values replaced, some lines dropped, junk added."""
    out = list(lines)
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(out) - 1))
        key = out[i].partition("=")[0]
        action = draw(st.sampled_from(("value", "value", "drop", "hex")))
        if action == "drop":
            out.pop(i)
        elif action == "hex":
            out[i] = f"{key}={draw(st.integers(0, (1 << 64) - 1)):x}"
        else:
            out[i] = f"{key}={draw(_NUMBER)}"
        if not out:
            break
    out += draw(st.lists(st.sampled_from(("NUMBER(PAGE_OFFSET)=0x10", "NUMBER(phys_ram_base)=-5", "=x", "noequals",
                                          "CRASHTIME=notanumber", "\0trailing")), max_size=2))
    return out


@st.composite
def vmcores(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(("lockless", "structured", "legacy")))
    mem, lines, hot_vaddrs = _layout(kind)
    lines = draw(vmcoreinfo_lines(lines))
    text = "\n".join(lines) + "\n"
    with tempfile.NamedTemporaryFile() as f:
        write_core(Path(f.name), mem, text)
        seed = Path(f.name).read_bytes()
    notes_len = len(seed) - 64 - 56 * (1 + len(mem.regions)) - sum(len(r.data) for r in mem.regions)
    hot = (16, 18, 32, 40, 54, 56, 60) + tuple(64 + 56 * k + f for k in range(3) for f in (0, 8, 16, 24, 32, 40))
    notes_at = 64 + 56 * (1 + len(mem.regions))
    hot += (notes_at, notes_at + 4, notes_at + 8, notes_at + 20 + 336, notes_at + 20 + 336 + 4)
    hot += tuple(_file_offsets(mem, notes_len, hot_vaddrs))
    return draw(mutated(seed, hot, max_mutations=3) | st.binary(max_size=512).map(lambda b: seed[:64] + b))


def _read_everything(path: Path) -> None:
    """What `vmcore dmesg` (every option) and `vmcore info` do with a file."""
    with ElfCore(path) as core:
        description = info_mod.describe(core)
        info_mod.render_text(description)
        log = read_log(core)
        format_log(log)
        format_log(log, levels=range(8), decode=True, show_caller=True)
        if core.vmcoreinfo is not None:
            format_log(log, boot=boot_time(log, core.vmcoreinfo.crashtime))


@fuzz_settings(300)
@given(data=vmcores())
def test_vmcore(workdir: Path, data: bytes) -> None:
    path = workdir / "vmcore"
    path.write_bytes(data)
    outcome(_read_everything, path)


@fuzz_settings(300)
@given(raw=st.binary(max_size=512) | st.text(max_size=300).map(str.encode))
def test_vmcoreinfo(raw: bytes) -> None:
    def parse() -> None:
        info = VmcoreInfo(raw)
        for key in list(info.entries)[:20]:
            m = re.fullmatch(r"(SYMBOL|SIZE|OFFSET|LENGTH|NUMBER)\((.*)\)", key)
            if m:
                getattr(info, m.group(1).lower())(m.group(2))
        info.crashtime
        info.osrelease

    outcome(parse)


# --- kdump-compressed ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def kdump_seed(workdir: Path) -> bytes:
    """A small kdump-compressed file written by `vmcore save` from a synthetic dump."""
    from pykexec.vmcore.save import save

    mem, lines, _ = _layout("lockless")
    src = write_core(workdir / "src.elf", mem, "\n".join(lines) + "\n")
    out = outcome(save, str(src), str(workdir / "seed.kdump"), compress="zlib", progress=False, dump_level=0)
    if isinstance(out, KexecError):
        pytest.skip(f"vmcore save cannot write a seed from a synthetic dump without page tables: {out}")
    return (workdir / "seed.kdump").read_bytes()


def _read_kdump(path: Path) -> None:
    from pykexec.vmcore.kdump import KdumpFile

    with KdumpFile(path) as k:
        for n, pfn in enumerate(k.saved_pfns()):
            k.read_page(pfn)
            if n > 64:
                break


@fuzz_settings(200)
@given(data=st.data())
def test_kdump_reader(workdir: Path, kdump_seed: bytes, data: st.DataObject) -> None:
    from pykexec.layouts import kdump as L

    # disk_dump_header's fields (block_size, sub_hdr_size, bitmap_blocks, max_mapnr, ...)
    # and the sub header's one block in (offsets and sizes of notes and VMCOREINFO).
    bs = L.DiskDumpHeader.from_buffer_copy(kdump_seed).block_size
    hot = tuple(getattr(L.DiskDumpHeader, name).offset for name, *_ in L.DiskDumpHeader._fields_)
    hot += tuple(bs * L.DISKDUMP_HEADER_BLOCKS + getattr(L.KdumpSubHeader, name).offset
                 for name, *_ in L.KdumpSubHeader._fields_)
    blob = data.draw(mutated(kdump_seed, hot, max_mutations=3))
    path = workdir / "dump.kdump"
    path.write_bytes(blob)
    outcome(_read_kdump, path)


@pytest.mark.parametrize("where,field,value", [
    ("header", "bitmap_blocks", 0xFFFFFFFF),
    ("sub", "size_note", 1 << 40),
    ("sub", "size_vmcoreinfo", 1 << 40),
])
def test_kdump_header_sizes(workdir: Path, kdump_seed: bytes, where: str, field: str, value: int) -> None:
    """The three fields the fuzzer found: each makes KdumpFile allocate what it says."""
    import ctypes

    from pykexec.layouts import kdump as L

    blob = bytearray(kdump_seed)
    layout = L.DiskDumpHeader if where == "header" else L.KdumpSubHeader
    base = 0 if where == "header" else L.DiskDumpHeader.from_buffer_copy(blob).block_size * L.DISKDUMP_HEADER_BLOCKS
    f = getattr(layout, field)
    blob[base + f.offset:base + f.offset + f.size] = value.to_bytes(f.size, "little")
    path = workdir / f"{field}.kdump"
    path.write_bytes(bytes(blob))
    assert isinstance(outcome(_read_kdump, path), KexecError)


# --- dump-level filtering (the struct page scan) ---------------------------------------------

@fuzz_settings(60)
@given(data=st.data())
def test_filtering(workdir: Path, data: st.DataObject) -> None:
    """excluded_pages on the synthetic machine with VMCOREINFO values lied about: a
    one-line error or a note, never a crash, and only RAM pfns left out."""
    from test_vmcore_filtering import NPAGES, PAGE, info_lines, layout_mem
    from test_vmcore_save_synth import machine

    from pykexec.vmcore.filtering import excluded_pages
    from pykexec.vmcore.paging import PageTables

    layout = data.draw(st.sampled_from(("6.1", "6.12")))
    lines = data.draw(vmcoreinfo_lines(info_lines(layout)))
    level = data.draw(st.integers(0, 31))
    mem, _ = layout_mem(layout)
    src, _ = machine(workdir, info=lines, mem=mem)

    def scan() -> None:
        with ElfCore(src) as core:
            info = core.require_vmcoreinfo()
            tables = PageTables(lambda a, n: core.read(a, n, physical=True), info)
            ex = excluded_pages(info, tables, [(0, NPAGES)], PAGE, level)
            assert all(0 <= s < e <= NPAGES for s, e in ex.ranges), ex.ranges
            assert "\n" not in ex.note

    outcome(scan)
