"""Xen as a crash kernel: the pure plan pieces (docs/xen-crash-kernel.md), against
values worked out by hand from Xen 4.17's head.S and against known bytes."""

from __future__ import annotations

import struct

import pytest

from pykexec import crash, xen_crash_kernel as xck
from pykexec.errors import UsageError
from pykexec.images import multiboot_common as common
from pykexec.images.multiboot2 import build_mbi
from pykexec.memory import MemoryMap, MemType, Range, Region

# SeaBIOS' map of a 1 GiB QEMU guest, and a 256 MiB crash region.
QEMU_1G = MemoryMap([
    Region(Range(0x0, 0x9FC00), MemType.RAM),
    Region(Range(0x9FC00, 0xA0000), MemType.RESERVED),
    Region(Range(0xF0000, 0x100000), MemType.RESERVED),
    Region(Range(0x100000, 0x3FFE0000), MemType.RAM),
    Region(Range(0x3FFE0000, 0x40000000), MemType.RESERVED),
    Region(Range(0xFFFC0000, 0x100000000), MemType.RESERVED),
])
CRASH = Range(0x2B000000, 0x3B000000)
ELFCOREHDR = Range(0x3AFFF000, 0x3B000000)
BACKUP_COPY = Range(0x3AF5F000, 0x3AFFF000)  # 0x9fc00 bytes, page-rounded


def test_trampoline_below_the_ebda_as_head_s_computes_it():
    # EBDA segment 0x9fc0: (0x9fc0 - 0x1000) & ~0xff = 0x8f00 -> 0x8f000.
    assert xck.trampoline(0x9FC0, 639) == Range(0x8F000, 0x9F000)


def test_trampoline_from_base_memory_when_the_ebda_segment_is_implausible():
    # 0x2000 is below the 0x4000 sanity bound: 0x413's 512 KiB is used, 0x8000 - 0x1000.
    assert xck.trampoline(0x2000, 512) == Range(0x70000, 0x80000)
    assert xck.trampoline(0xA000, 600) == Range(0x86000, 0x96000)  # 600 KiB = seg 0x9600


def test_mem_lower_wins_only_when_smaller_and_at_least_256_kib():
    assert xck.trampoline(0x9FC0, 639, mem_lower_kib=576) == Range(0x80000, 0x90000)
    assert xck.trampoline(0x9FC0, 639, mem_lower_kib=255) == Range(0x8F000, 0x9F000)
    assert xck.trampoline(0x9FC0, 639, mem_lower_kib=639) == Range(0x8F000, 0x9F000)


def test_a_zeroed_bda_wraps_the_trampoline_above_1_mib_whatever_mem_lower_says():
    # UEFI without CSM: 0x40e and 0x413 read 0; mem_lower only wins when smaller, so
    # 0 - 0x1000 wraps: 0xfffff000 & ~0xff << 4 = 0xffff0000 (flash), outside any backup.
    tramp = xck.trampoline(0, 0, mem_lower_kib=639)
    assert tramp == Range(0xFFFF0000, 0x100000000)
    assert xck.uncovered(xck.low_writes(tramp), Range(0, 0xA0000)) == [tramp]


def test_the_640k_backup_covers_what_xen_writes_on_qemu():
    backup = crash.backup_source(QEMU_1G)
    assert backup == Range(0, 0x9FC00)
    writes = xck.low_writes(xck.trampoline(0x9FC0, 639, mem_lower_kib=639))
    assert writes == [Range(0xFFC, 0x1000), Range(0x8F000, 0x9F000)]
    assert xck.uncovered(writes, backup) == []


def test_uncovered_names_what_a_short_backup_misses():
    writes = xck.low_writes(Range(0x8F000, 0x9F000))
    assert xck.uncovered(writes, Range(0x1000, 0x90000)) == [Range(0xFFC, 0x1000), Range(0x90000, 0x9F000)]
    assert xck.uncovered(writes, None) == writes


def test_no_real_mode_is_added_to_xens_part_only_once():
    assert xck.xen_cmdline("console=com1") == "console=com1 no-real-mode"
    assert xck.xen_cmdline("no-real-mode console=com1") == "no-real-mode console=com1"
    assert xck.xen_cmdline("nosmp -- quiet") == "nosmp no-real-mode -- quiet"
    assert xck.xen_cmdline("") == "no-real-mode"


def test_dom0_gets_elfcorehdr_on_its_module_string():
    assert xck.dom0_module_cmdline("vmlinuz console=hvc0", 0x3AFFF000) == \
        "vmlinuz console=hvc0 elfcorehdr=0x3afff000"


def test_dom0_cmdline_refuses_a_second_elfcorehdr_and_an_overlong_line():
    with pytest.raises(UsageError, match="already have elfcorehdr"):
        xck.dom0_module_cmdline("vmlinuz elfcorehdr=0x1000", 0x2000)
    # Xen drops the file name; " elfcorehdr=0x3afff000" is 22 bytes: 1001 + 22 fits 1023, 1002 + 22 does not.
    assert len(xck.dom0_module_cmdline("vmlinuz " + "a" * 1001, 0x3AFFF000)) == 8 + 1001 + 22
    with pytest.raises(UsageError, match="1024 bytes"):
        xck.dom0_module_cmdline("vmlinuz " + "a" * 1002, 0x3AFFF000)
    with pytest.raises(UsageError, match="1024 bytes"):  # " -- " words count too
        xck.dom0_module_cmdline("vmlinuz " + "a" * 1000, 0x3AFFF000, kextra="b")


def test_crash_xen_memory_map_as_multiboot2_bytes():
    crash_map = xck.memory_map(QEMU_1G, CRASH, [ELFCOREHDR, BACKUP_COPY])
    entries = xck.multiboot_mmap(crash_map)
    expected = [
        (0x0, 0x9FC00, 1),                      # low RAM, copied aside by purgatory
        (0x9FC00, 0x400, 2),                    # EBDA
        (0xF0000, 0x10000, 2),                  # BIOS
        (0x2B000000, 0xFF5F000, 1),             # crash region minus backup copy and elfcorehdr
        (0x3FFE0000, 0x20000, 2),
        (0xFFFC0000, 0x40000, 2),
    ]
    assert entries == expected
    mbi = build_mbi(cmdline=b"xen", loader_name=b"pykexec", modules=[],
                    meminfo=common.basic_meminfo(crash_map), mmap=entries)
    tags = _tags(mbi)
    assert struct.unpack("<II", tags[4]) == (639, 0)  # mem_lower: Xen's trampoline stays below 639 KiB
    mmap = tags[6]
    assert mmap[:8] == struct.pack("<II", 24, 0)
    assert mmap[8:] == b"".join(struct.pack("<QQII", b, n, t, 0) for b, n, t in expected)


def test_a_map_xen_would_ignore_is_refused():
    lone = MemoryMap([Region(CRASH, MemType.RAM)])
    with pytest.raises(UsageError, match="fewer than 2 entries"):
        xck.multiboot_mmap(lone)


def _tags(mbi: bytes) -> dict[int, bytes]:
    """Tag type -> payload of a Multiboot 2 information structure."""
    total, _ = struct.unpack_from("<II", mbi)
    assert total == len(mbi)
    out, pos = {}, 8
    while pos < total:
        kind, size = struct.unpack_from("<II", mbi, pos)
        out[kind] = mbi[pos + 8:pos + size]
        pos += (size + 7) & ~7
    return out
