"""elfcorehdr bytes, the crash kernel's memory map, and probing what a dump needs."""

import json
import struct
from pathlib import Path

import pytest

from pykexec import crash
from pykexec import machine_file
from pykexec.errors import PlacementError
from pykexec.images import bzimage
from pykexec.request import LoadRequest
from pykexec.memory import MemType, Range

from support.synth_images import MACHINE_1G, make_bzimage

CRASH = Range(0x2C000000, 0x3C000000)
SOURCES = crash.DumpSources(cpu_notes=(Range.sized(0x3FC1D000, 0x400), Range.sized(0x3FC5D000, 0x400)),
                            vmcoreinfo=Range.sized(0x2A00000, 0x1000),
                            kernel_image=crash.KernelImage(0xFFFFFFFF81000000, 0x1000000, 0x2000000),
                            page_offset=0xFFFF888000000000, kernel_release="6.1.0-56-cloud-amd64")


def phdrs(hdr: bytes):
    phoff, phnum = struct.unpack_from("<Q", hdr, 32)[0], struct.unpack_from("<H", hdr, 56)[0]
    return [struct.unpack_from("<IIQQQQQQ", hdr, phoff + 56 * i) for i in range(phnum)]


def test_elfcorehdr_known_bytes():
    ranges = [Range(0x1000, 0x9FC00), Range(0x100000, 0x2C000000)]
    hdr = crash.build_elfcorehdr(SOURCES, ranges)
    assert len(hdr) == crash.elfcorehdr_size(SOURCES, ranges, False) == 64 + 6 * 56
    # ELF64 LSB core for x86_64, program headers right after the 64-byte header
    assert hdr[:16] == b"\x7fELF\x02\x01\x01" + bytes(9)
    assert struct.unpack_from("<HHIQQQIHHHHHH", hdr, 16) == (4, 62, 1, 0, 64, 0, 0, 64, 56, 6, 0, 0, 0)
    rwx = 7
    assert phdrs(hdr) == [
        (4, 0, 0x3FC1D000, 0, 0x3FC1D000, 0x400, 0x400, 0),                        # CPU 0 notes
        (4, 0, 0x3FC5D000, 0, 0x3FC5D000, 0x400, 0x400, 0),                        # CPU 1 notes
        (4, 0, 0x2A00000, 0, 0x2A00000, 0x1000, 0x1000, 0),                        # VMCOREINFO
        (1, rwx, 0x1000000, 0xFFFFFFFF81000000, 0x1000000, 0x2000000, 0x2000000, 0),  # kernel image
        (1, rwx, 0x1000, 0xFFFF888000001000, 0x1000, 0x9EC00, 0x9EC00, 0),        # low RAM
        (1, rwx, 0x100000, 0xFFFF888000100000, 0x100000, 0x2BF00000, 0x2BF00000, 0),
    ]


def test_elfcorehdr_with_backup_reads_low_memory_from_the_copy():
    ranges = [Range(0x1000, 0x9FC00), Range(0x100000, 0x2C000000)]
    hdr = crash.build_elfcorehdr(SOURCES, ranges, backup=(Range(0x1000, 0x9FC00), 0x3B000000))
    loads = [p for p in phdrs(hdr) if p[0] == 1]
    assert (loads[1][2], loads[1][4], loads[1][5]) == (0x3B000000, 0x1000, 0x9EC00)  # offset = the copy


def test_backup_only_for_old_kernels():
    assert crash.DumpSources(kernel_release="4.19.0-26-amd64").needs_backup
    assert crash.DumpSources(kernel_release="5.5.19").needs_backup
    assert not crash.DumpSources(kernel_release="5.6.0").needs_backup
    assert not crash.DumpSources(kernel_release="6.12.117+deb12-cloud-amd64").needs_backup
    mm = machine_file.from_dict(MACHINE_1G).memory
    assert crash.backup_source(mm) == Range(0x1000, 0x9FC00)


def test_crash_memory_map_and_memmap_cmdline():
    mm = machine_file.from_dict(MACHINE_1G).memory
    cm = crash.crash_memory_map(mm, CRASH, [Range(0x3BFFF000, 0x3C000000)])
    assert cm.ram() == [Range(0x1000, 0x9FC00), Range(0x2C000000, 0x3BFFF000)]
    assert cm.of_type(MemType.RESERVED) == mm.of_type(MemType.RESERVED)
    line = crash.memmap_cmdline(cm)
    assert line == "memmap=exactmap memmap=635K@4K memmap=262140K@720896K"


def test_dump_ranges_exclude_crash_region():
    mm = machine_file.from_dict(MACHINE_1G).memory
    assert crash.dump_ranges(mm, CRASH) == [Range(0x1000, 0x9FC00), Range(0x100000, 0x2C000000),
                                            Range(0x3C000000, 0x3FFE0000)]


def test_probe_dump_sources(tmp_path: Path):
    cpu = tmp_path / "devices/system/cpu"
    for n, addr in ((0, 0x3FC1D000), (1, 0x3FC5D000)):
        (cpu / f"cpu{n}").mkdir(parents=True)
        (cpu / f"cpu{n}/crash_notes").write_text(f"{addr:x}\n")
        (cpu / f"cpu{n}/crash_notes_size").write_text("1024\n")
    (cpu / "possible").write_text("0-2\n")  # cpu2 possible but absent: skipped
    (tmp_path / "kernel").mkdir()
    (tmp_path / "kernel/vmcoreinfo").write_text("2a00000 1000\n")
    # a /proc/kcore with: vmalloc (no paddr), the kernel text, and one RAM mapping (KASLR'd)
    loads = [(0xFFFFC90000000000, (1 << 64) - 1, 0x1000), (0xFFFFFFFF9A000000, 0x19000000, 0x2400000),
             (0xFFFF9E0000100000, 0x100000, 0x3FEE0000)]
    kcore = bytearray(64 + 56 * len(loads))
    kcore[:4] = b"\x7fELF"
    struct.pack_into("<Q", kcore, 32, 64)
    struct.pack_into("<H", kcore, 56, len(loads))
    for i, (vaddr, paddr, size) in enumerate(loads):
        struct.pack_into("<IIQQQQQQ", kcore, 64 + 56 * i, 1, 7, 0, vaddr, paddr, size, size, 0x1000)
    (tmp_path / "kcore").write_bytes(bytes(kcore))
    src = crash.probe_dump_sources(tmp_path, tmp_path / "kcore")
    assert src.cpu_notes == (Range.sized(0x3FC1D000, 1024), Range.sized(0x3FC5D000, 1024))
    assert src.vmcoreinfo == Range(0x2A00000, 0x2A01000)
    assert src.kernel_image == crash.KernelImage(0xFFFFFFFF9A000000, 0x19000000, 0x2400000)
    assert src.page_offset == 0xFFFF9E0000000000
    nothing = crash.probe_dump_sources(tmp_path / "none", tmp_path / "none")
    assert nothing.cpu_notes == () and nothing.kernel_image is None
    assert nothing.page_offset == crash.DEFAULT_PAGE_OFFSET


def crash_machine(**dump):
    data = dict(MACHINE_1G, crash_kernel={"start": hex(CRASH.start), "end": hex(CRASH.last)},
                dump={"cpu_notes": [{"start": "0x3fc1d000", "end": "0x3fc1d3ff"}],
                      "vmcoreinfo": {"start": "0x2a00000", "end": "0x2a00fff"}, **dump})
    return machine_file.from_dict(json.loads(json.dumps(data)))


def test_crash_plan_stays_in_region_and_hands_over_elfcorehdr():
    machine = crash_machine()
    req = LoadRequest(kernel_path=Path("k"), kernel=make_bzimage(), machine=machine, cmdline="irqpoll",
                      initrd=b"i" * 5000, crash=True)
    plan = bzimage.plan(req)
    segs = {s.role: s for s in plan.segments}
    assert set(segs) == {"kernel", "initrd", "elfcorehdr", "cmdline", "boot_params", "purgatory"}
    assert all(CRASH.contains(s.range) for s in plan.segments)
    assert plan.cmdline == f"irqpoll elfcorehdr={segs['elfcorehdr'].mem:#x}"
    assert segs["elfcorehdr"].data[:4] == b"\x7fELF"
    # the crash kernel's e820: low RAM, the crash region minus the elfcorehdr, reserved ranges
    page = segs["boot_params"].data
    e820 = [struct.unpack_from("<QQI", page, 0x2D0 + 20 * i) for i in range(page[0x1E8])]
    ram = [(a, a + s) for a, s, t in e820 if t == 1]
    eh = segs["elfcorehdr"].range
    assert (0x1000, 0x9FC00) in ram
    assert sum(e - s for s, e in ram if s >= CRASH.start) == CRASH.size - eh.size
    assert not any(s < eh.end and eh.start < e for s, e in ram)


def test_crash_region_too_small_says_how_much():
    data = dict(MACHINE_1G, crash_kernel={"start": "0x2c000000", "end": "0x2dffffff"})
    req = LoadRequest(kernel_path=Path("k"), kernel=make_bzimage(init_size=0x2000000), machine=machine_file.from_dict(data),
                      initrd=b"i" * (8 << 20), crash=True)
    with pytest.raises(PlacementError, match=r"holds 32 MiB.*need 41 MiB: reserve more with crashkernel="):
        bzimage.plan(req)


def test_xen_elfcorehdr_carries_dom0_vmcoreinfo_and_xen_phys_start():
    from pykexec.layouts import elf as E

    xen = crash.DumpSources(cpu_notes=(Range.sized(0x789C0780, 500), Range.sized(0x7FFCF180, 404)),
                            vmcoreinfo=Range.sized(0x7FD7C540, 0x1000),
                            extra_notes=(Range.sized(0x12345000, 0x1000),), xen_phys_start=0x7F800000)
    assert xen.needs_backup  # Xen keeps its trampoline in low memory
    addr = 0x4FFF0000
    ranges = [Range(0x100000, 0x40000000)]
    hdr = crash.build_elfcorehdr(xen, ranges, address=addr)
    assert len(hdr) == crash.elfcorehdr_size(xen, ranges, False)
    ph = phdrs(hdr)
    notes = [p for p in ph if p[0] == 4]
    assert [(p[2], p[5]) for p in notes[:4]] == [(0x789C0780, 500), (0x7FFCF180, 404), (0x7FD7C540, 0x1000),
                                                  (0x12345000, 0x1000)]
    # our own note sits inside this very segment, right after the program headers
    own = notes[4]
    assert own[2] == own[4] == addr + 64 + 56 * len(ph)
    # Every PT_NOTE before the first PT_LOAD: /proc/vmcore merges the notes into one PT_NOTE
    # and keeps the program headers after the first N (merge_note_headers_elf64); the
    # PT_NOTE last, after the PT_LOADs, cost a real Xen dump its first PT_LOAD.
    assert ph[:len(notes)] == notes and all(p[0] == 1 for p in ph[len(notes):])
    body = hdr[own[2] - addr:own[2] - addr + own[5]]
    (note,) = list(E.iter_notes(body))
    assert note == (b"PYKEXEC", E.NT_PYKEXEC_XEN_PHYS_START, (0x7F800000).to_bytes(8, "little"))
    assert not any(p[0] == 1 and p[3] >= 0xFFFFFFFF80000000 for p in ph)  # no kernel image under Xen
