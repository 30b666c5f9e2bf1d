"""``pykexec vmcore save --format elf``: a filtered ELF core, laid out as makedumpfile -E.

On the synthetic machine of test_vmcore_save_synth (8 MiB, two RAM PT_LOADs plus a
kernel-text one, a 512-page and a 4-page free block, mostly zero pages):

* every kept page reads back identical, every left-out page reads as zeros, by
  physical and by virtual address, through our reader;
* runs of >= 256 left-out pages split a PT_LOAD (``p_memsz`` reaching the next piece,
  ``p_filesz`` only the kept data), shorter ones stay inside as zeros; the PT_LOADs
  cover exactly what the source's did;
* vmcore-dmesg prints the same log from the filtered file as from the source;
* incomplete sources are flagged with ``e_flags = 1``; options and refusals.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest
from test_vmcore_save_synth import NPAGES, PAGE, _free_pfns, machine, physical_memory

from pykexec.layouts.elf import EHDR64_FMT, PHDR64_FMT, PT_LOAD
from pykexec.vmcore.cli import parse_save_args, save_command
from pykexec.vmcore.elf_writer import ELF_GAP_PAGES, elf_header
from pykexec.vmcore.elfcore import ElfCore
from pykexec.vmcore.save import save

from support.vmcore_synth import Memory, base_vmcoreinfo, lockless_log, make_msgs, write_core

VMCORE_DMESG = "/usr/sbin/vmcore-dmesg"


def phdrs(path: Path) -> tuple[int, list[tuple[int, ...]]]:
    data = path.read_bytes()
    eh = EHDR64_FMT.unpack_from(data)
    phoff, phnum, flags = eh[5], eh[10], eh[7]
    return flags, [PHDR64_FMT.unpack_from(data, phoff + i * 56) for i in range(phnum)]


def test_pages_kept_identical_left_out_read_as_zero(tmp_path: Path) -> None:
    src, mem = machine(tmp_path)
    dst = tmp_path / "out.elf"
    res = save(str(src), str(dst), fmt="elf", progress=False)
    free = _free_pfns()
    assert res.free_pages == len(free) and not res.incomplete
    zero = {p for p in range(NPAGES) if not any(mem[p * PAGE:(p + 1) * PAGE])}
    assert res.saved_pages >= NPAGES - len(free) - len(zero)
    with ElfCore(dst) as out:
        for pfn in range(NPAGES):
            page = bytes(out.read(pfn * PAGE, PAGE, physical=True))
            want = bytes(PAGE) if pfn in free else bytes(mem[pfn * PAGE:(pfn + 1) * PAGE])
            assert page == want, pfn
        # The kernel-text PT_LOAD is there too (virtual reads), as in the source.
        with ElfCore(src) as orig:
            for va in (0xFFFFFFFF80000000, 0xFFFFFFFF80000000 + 48 * PAGE):
                assert bytes(out.read(va, PAGE)) == bytes(orig.read(va, PAGE))
    # Far smaller than the source: zero and free runs are gaps, short runs are holes.
    assert dst.stat().st_size < src.stat().st_size // 4


def test_layout_follows_makedumpfile(tmp_path: Path) -> None:
    mem = physical_memory()
    for pfn in (600, 700, 1700):   # data after long (>= 256) and short (99) left-out runs
        mem[pfn * PAGE:pfn * PAGE + 16] = b"kept data page!!"
    src, _ = machine(tmp_path, mem=mem)
    dst = tmp_path / "out.elf"
    save(str(src), str(dst), fmt="elf", progress=False)
    flags, table = phdrs(dst)
    assert flags == 0
    assert table[0][0] == 4  # PT_NOTE first, with every source note
    loads = [p for p in table if p[0] == PT_LOAD]
    _, src_table = phdrs(src)
    src_loads = [p for p in src_table if p[0] == PT_LOAD]
    # Pieces of each source PT_LOAD tile it exactly, in order, vaddr following paddr.
    i = 0
    for s in src_loads:
        pos = s[4]
        while pos < s[4] + s[6]:
            p = loads[i]
            assert p[4] == pos and p[3] == s[3] + (pos - s[4])
            assert p[5] <= p[6]                       # filesz <= memsz
            assert p[2] % PAGE == p[4] % PAGE         # offsets congruent to addresses
            pos += p[6]
            i += 1
        assert pos == s[4] + s[6]
    assert i == len(loads)
    # (paddr, filesz, memsz) in pages of the RAM pieces (the first PT_LOAD is kernel text):
    # 161-599 are zero (>= 256: split at 600), 601-699 too (short: zeros inside the
    # piece), 701-1023 zero (p_filesz < p_memsz); 1024-1535 free + 1536-1699 zero:
    # an empty piece, then data at 1700 (the 4-page free block 1800-1803 is past it).
    ram = [(p[4] // PAGE, p[5] // PAGE, p[6] // PAGE) for p in loads[1:]]
    assert ram == [(0, 160, 600), (600, 101, 424), (1024, 0, 676), (1700, 1, 348)]
    with ElfCore(dst) as out:
        assert bytes(out.read(650 * PAGE, PAGE, physical=True)) == bytes(PAGE)
        assert bytes(out.read(700 * PAGE, 16, physical=True)) == b"kept data page!!"
        assert bytes(out.read(1801 * PAGE, PAGE, physical=True)) == bytes(PAGE)   # free: zeros
    assert ELF_GAP_PAGES == 256


def test_dump_level_zero_keeps_every_page(tmp_path: Path) -> None:
    src, mem = machine(tmp_path)
    dst = tmp_path / "d0.elf"
    res = save(str(src), str(dst), fmt="elf", dump_level=0, progress=False)
    assert res.free_pages == 0 and res.zero_pages == 0
    _, table = phdrs(dst)
    _, src_table = phdrs(src)
    assert [(p[3], p[4], p[5], p[6]) for p in table if p[0] == PT_LOAD] == \
           [(p[3], p[4], p[5], p[6]) for p in src_table if p[0] == PT_LOAD]
    with ElfCore(dst) as out:
        assert bytes(out.read(0, NPAGES * PAGE, physical=True)) == bytes(mem)


def test_vmcore_dmesg_reads_the_filtered_core(tmp_path: Path) -> None:
    if not os.path.exists(VMCORE_DMESG):
        if os.environ.get("CI"):
            pytest.fail("vmcore-dmesg (kexec-tools) missing in CI")
        pytest.skip("vmcore-dmesg (kexec-tools) not installed")
    import subprocess

    # A 1 MiB buffer region: the log in its first pages, 250-odd zero pages (stored as
    # holes: shorter than ELF_GAP_PAGES), data in its last page.  vmcore-dmesg reads the
    # whole text ring straight from the file, so the ring's zero tail must be in the file.
    mem = Memory.standard(1 << 20)
    lines, _ = lockless_log(mem, make_msgs(80), count_bits=6, size_bits=13)
    mem.regions[1].data[-16:] = b"last page data!!"
    src = write_core(tmp_path / "src.elf", mem, "\n".join(base_vmcoreinfo() + lines) + "\n")
    dst = tmp_path / "out.elf"
    res = save(str(src), str(dst), fmt="elf", progress=False)
    assert res.zero_pages > 200     # the empty buffer pages were left out (holes)
    assert dst.stat().st_blocks * 512 < 200 * 4096
    want = subprocess.run([VMCORE_DMESG, str(src)], capture_output=True, check=True).stdout
    got = subprocess.run([VMCORE_DMESG, str(dst)], capture_output=True, check=True).stdout
    assert got == want and want.count(b"\n") >= 60


def test_truncated_source_is_flagged(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    src, mem = machine(tmp_path)
    with open(src, "r+b") as f:
        f.truncate(src.stat().st_size - 600 * PAGE)
    dst = tmp_path / "out.elf"
    assert save_command(["--format", "elf", str(src), str(dst)]) == 1
    assert "INCOMPLETE" in capfdbinary.readouterr().err.decode()
    flags, table = phdrs(dst)
    assert flags == 1
    with ElfCore(dst) as out:  # what was saved is readable
        assert bytes(out.read(70 * PAGE, PAGE, physical=True)) == bytes(mem[70 * PAGE:71 * PAGE])


def test_options(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    src, _ = machine(tmp_path)
    assert save_command(["--format=bogus", str(src), str(tmp_path / "x")]) == 2
    err = capfdbinary.readouterr().err.decode()
    assert "unknown format 'bogus'" in err
    assert parse_save_args(["--format", "elf", "a", "b"]) == {"fmt": "elf", "src": "a", "dst": "b"}
    dst = tmp_path / "out.elf"
    assert save_command(["--format", "elf", str(src), str(dst)]) == 0
    assert save_command(["--format", "elf", str(src), str(dst)]) == 2          # exists
    assert "exists" in capfdbinary.readouterr().err.decode()
    assert save_command(["--format", "elf", "--force", str(src), str(dst)]) == 0


def test_pn_xnum_header() -> None:
    """65535+ program headers: e_phnum = PN_XNUM and a section header 0 follows them."""
    hdr = elf_header(62, 70000, False)
    eh = EHDR64_FMT.unpack(hdr)
    assert eh[10] == 0xFFFF and eh[6] == 64 + 70000 * 56 and eh[12] == 1 and eh[11] == 64
    hdr = elf_header(62, 3, True)
    eh = EHDR64_FMT.unpack(hdr)
    assert eh[10] == 3 and eh[6] == 0 and eh[7] == 1
    assert struct.calcsize("<IIQQQQIIQQ") == 64 and shutil is not None
