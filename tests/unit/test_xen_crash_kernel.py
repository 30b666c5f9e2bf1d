"""Xen as a crash kernel: the pure plan pieces (docs/xen-crash-kernel.md), against
values worked out by hand from Xen 4.17's head.S and against known bytes."""

from __future__ import annotations

import struct

import pytest

from pykexec import crash, xen_crash_kernel as xck
from pykexec.errors import ImageFormatError, UsageError
from pykexec.images import multiboot_common as common
from pykexec.images.multiboot2 import build_mbi
from pykexec.memory import MemoryMap, MemType, Range, Region
from support.multiboot_synth import qemu_bios_map

# SeaBIOS' map of a 1 GiB QEMU guest, and a 256 MiB crash region.
QEMU_1G = qemu_bios_map(1 << 30)
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


# --- the whole crash plan (xen_crash_kernel.plan through multiboot2.plan) -------------------

from pykexec.crash import DumpSources, KernelImage  # noqa: E402
from pykexec.images import multiboot2  # noqa: E402
from pykexec.layouts import elf as E  # noqa: E402
from pykexec.layouts.purgatory import PurgatoryParamsBlock  # noqa: E402
from pykexec.machine import Machine  # noqa: E402
from pykexec.purgatory import Purgatory  # noqa: E402
from pykexec.request import LoadRequest, Module  # noqa: E402
from support.multiboot_synth import xen_like  # noqa: E402
from support.synth_images import make_bzimage  # noqa: E402

SOURCES = DumpSources(cpu_notes=(Range.sized(0x3F000000, 0x400),), vmcoreinfo=Range.sized(0x3E000000, 0x1000),
                      kernel_image=KernelImage(0xFFFFFFFF81000000, 0x1000000, 0x2000000), kernel_release="6.1.0")
HOST = Machine(memory=QEMU_1G, crash_kernel=CRASH, dump=SOURCES, source="test machine")
DOM0 = Module("vmlinuz", make_bzimage(), "vmlinuz console=hvc0")  # at 16 MiB, init_size 8 MiB
# What purgatory copies aside: 0 through the crashed kernel's image (16-48 MiB), which
# covers dom0's span too (16 MiB + 8 MiB + 8 MiB for Xen's start info, 2 MiB aligned).
BACKED_UP = Range(0, 0x3000000)
INITRD = Module("initrd", b"I" * 0x3000, "initrd")


def crash_plan(cmdline="console=com1 nosmp", modules=(DOM0, INITRD), machine=HOST, kernel=None, **kw):
    return multiboot2.plan(LoadRequest("xen.gz", kernel or xen_like(), machine, cmdline=cmdline, crash=True,
                                       modules=list(modules), **kw))


def _seg(plan, role):
    (seg,) = [s for s in plan.segments if s.role == role]
    return seg


def _mbi_tags(mbi: bytes) -> list[tuple[int, bytes]]:
    total, _ = struct.unpack_from("<II", mbi)
    out, pos = [], 8
    while pos < total:
        kind, size = struct.unpack_from("<II", mbi, pos)
        out.append((kind, mbi[pos + 8:pos + size]))
        pos += (size + 7) & ~7
    return out


def test_every_segment_of_the_crash_xen_lies_in_the_crash_region():
    plan = crash_plan()
    assert plan.crash and plan.backend == "kexec_load"
    assert sorted(s.role for s in plan.segments) == sorted(
        ["kernel", "module", "module", "backup", "elfcorehdr", "mbi", "purgatory"])
    for s in plan.segments:
        assert CRASH.contains(s.range), s
    assert CRASH.contains(plan.entry) and CRASH.contains(plan.kernel_entry)
    ordered = plan.sorted_segments()
    assert all(a.range.end <= b.mem for a, b in zip(ordered, ordered[1:]))  # no overlaps
    backup = _seg(plan, "backup")
    assert backup.bufsz == 0 and backup.memsz == BACKED_UP.size


def test_purgatory_copies_low_memory_into_the_backup_segment_before_entering_xen():
    plan = crash_plan()
    purg = _seg(plan, "purgatory")
    params = PurgatoryParamsBlock.from_buffer_copy(purg.data, Purgatory.load().params_offset)
    backup = (params.backup_src, params.backup_dst, params.backup_size)
    assert backup == (0, _seg(plan, "backup").mem, BACKED_UP.size)
    assert params.mode == 1 and params.eax == 0x36D76289 and params.ebx == _seg(plan, "mbi").mem
    assert params.entry == plan.kernel_entry


def test_the_elfcorehdr_reads_the_backed_up_memory_from_the_copy_and_leaves_the_crash_region_out():
    plan = crash_plan()
    hdr = _seg(plan, "elfcorehdr").data
    ehdr = E.Elf64_Ehdr.from_buffer_copy(hdr)
    phdrs = [E.Elf64_Phdr.from_buffer_copy(hdr, ehdr.e_phoff + i * ehdr.e_phentsize) for i in range(ehdr.e_phnum)]
    loads = [(p.p_paddr, p.p_offset, p.p_memsz) for p in phdrs
             if p.p_type == E.PT_LOAD and p.p_vaddr < 0xFFFFFFFF80000000]
    copy = _seg(plan, "backup").mem
    assert loads == [(0x0, copy, 0x9FC00), (0x100000, copy + 0x100000, BACKED_UP.end - 0x100000),
                     (BACKED_UP.end, BACKED_UP.end, CRASH.start - BACKED_UP.end),
                     (CRASH.end, CRASH.end, 0x3FFE0000 - CRASH.end)]
    (image,) = [p for p in phdrs if p.p_type == E.PT_LOAD and p.p_vaddr >= 0xFFFFFFFF80000000]
    assert (image.p_paddr, image.p_offset) == (0x1000000, copy + 0x1000000)  # the crashed kernel's text, saved


def test_xen_gets_no_real_mode_and_dom0_the_elfcorehdr_on_its_module_string():
    plan = crash_plan(cmdline="console=com1 nosmp -- loglevel=8")
    tags = _mbi_tags(_seg(plan, "mbi").data)
    assert [t for k, t in tags if k == 1] == [b"xen.gz console=com1 nosmp no-real-mode -- loglevel=8\0"]
    modules = [t for k, t in tags if k == 3]
    hdr = _seg(plan, "elfcorehdr").mem
    starts = [struct.unpack_from("<II", m) for m in modules]
    assert [m[8:] for m in modules] == [f"vmlinuz console=hvc0 elfcorehdr={hdr:#x}\0".encode(), b"initrd\0"]
    mods = [s for s in plan.segments if s.role == "module"]
    assert starts == [(mods[0].mem, mods[0].mem + len(DOM0.data)), (mods[1].mem, mods[1].mem + 0x3000)]
    assert plan.cmdline == "xen.gz console=com1 nosmp no-real-mode -- loglevel=8"


def test_the_mbi_memory_map_is_low_ram_plus_the_crash_region_minus_the_kept_pieces():
    plan = crash_plan()
    tags = dict(_mbi_tags(_seg(plan, "mbi").data))
    assert struct.unpack("<II", tags[4]) == (639, (BACKED_UP.end >> 10) - 1024)
    entries = [struct.unpack_from("<QQII", tags[6], 8 + 24 * i)[:3] for i in range((len(tags[6]) - 8) // 24)]
    kept = [_seg(plan, "backup").range, _seg(plan, "elfcorehdr").range]
    ram = [(b, n) for b, n, t in entries if t == 1]
    assert ram[:2] == [(0, 0x9FC00), (0x100000, BACKED_UP.end - 0x100000)]  # saved by purgatory first
    crash_ram = [Range.sized(b, n) for b, n in ram[2:]]
    assert sum(r.size for r in crash_ram) == CRASH.size - sum(k.size for k in kept)
    assert all(CRASH.contains(r) and not any(r.overlaps(k) for k in kept) for r in crash_ram)
    assert [(b, n, t) for b, n, t in entries if t != 1] == [
        (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2), (0x3FFE0000, 0x20000, 2), (0xFFFC0000, 0x40000, 2)]


def test_the_crash_plan_is_refused_when_xens_trampoline_would_miss_the_backup(monkeypatch):
    monkeypatch.setattr(xck, "bios_data_area", lambda machine: (0, 0))  # UEFI without CSM: a zeroed BDA
    with pytest.raises(UsageError, match=r"trampoline at 0xffff0000-0xffffffff .*outside the low memory"):
        crash_plan()


def test_the_crash_plan_uses_the_bda_when_it_is_known(monkeypatch):
    monkeypatch.setattr(xck, "bios_data_area", lambda machine: (0x9000, 600))
    plan = crash_plan()
    assert any("trampoline 0x80000-0x8ffff inside the backup" in n for n in plan.notes), plan.notes
    assert not any("BIOS data area unknown" in n for n in plan.notes)


def test_other_crash_loads_of_multiboot_images_are_refused():
    with pytest.raises(UsageError, match="dom0's kernel must be the first --module"):
        crash_plan(modules=())
    with pytest.raises(UsageError, match="through kexec_load .* or Xen's kexec_op .*, not kexec_file_load"):
        crash_plan(backend="kexec_file_load")
    with pytest.raises(UsageError, match="--initrd is for Linux"):
        crash_plan(initrd=b"x")
    from pykexec.images import multiboot
    with pytest.raises(UsageError, match="multiboot-x86 image cannot be a crash kernel"):
        multiboot.plan(LoadRequest("xen", xen_like(), HOST, crash=True, modules=[DOM0]))
    no_low = Machine(memory=MemoryMap([r for r in QEMU_1G if r.range.start >= 0x100000]), crash_kernel=CRASH)
    with pytest.raises(UsageError, match="no RAM below 640 KiB"):
        crash_plan(machine=no_low)


def test_dom0s_span_comes_from_its_header_and_must_stay_below_the_crash_region():
    assert xck.dom0_span(make_bzimage(init_size=0x3F98000), "dom0") == Range(0x1000000, 0x5800000)
    # and room to move a 25 MiB initrd to (16 + 0x3f98000 + 8 + 25 MiB, 2 MiB aligned)
    assert xck.dom0_span(make_bzimage(init_size=0x3F98000), "dom0", 25 << 20) == Range(0x1000000, 0x7200000)
    low_crash = Machine(memory=QEMU_1G, crash_kernel=Range(0x1000000, 0x11000000), dump=SOURCES)
    with pytest.raises(UsageError, match="dom0's kernel needs RAM up to 0x2200000, which overlaps the crash"):
        crash_plan(machine=low_crash)
    with pytest.raises(ImageFormatError, match="dom0 kernel initrd: no 'HdrS'"):
        crash_plan(modules=(INITRD, DOM0))


def test_dry_run_json_shows_the_crash_plan(tmp_path, capsys):
    import json

    from pykexec import cli

    (tmp_path / "xen.gz").write_bytes(xen_like())
    (tmp_path / "vmlinuz").write_bytes(DOM0.data)
    (tmp_path / "initrd").write_bytes(INITRD.data)
    machine = {"memory": [{"start": hex(r.range.start), "end": hex(r.range.end - 1),
                           "type": "System RAM" if r.type is MemType.RAM else "Reserved"} for r in QEMU_1G],
               "crash_kernel": {"start": hex(CRASH.start), "end": hex(CRASH.end - 1)}}
    (tmp_path / "m.json").write_text(json.dumps(machine))
    rc = cli.main(["--dry-run", "--json", "--machine", str(tmp_path / "m.json"), "-p", str(tmp_path / "xen.gz"),
                   "--command-line", "console=com1 nosmp", "--module", f"{tmp_path}/vmlinuz console=hvc0",
                   "--module", str(tmp_path / "initrd")])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["crash"] is True and out["type"] == "multiboot2-x86"
    assert out["cmdline"].endswith("console=com1 nosmp no-real-mode")
    assert {s["role"] for s in out["segments"]} == {"kernel", "module", "backup", "elfcorehdr", "mbi", "purgatory"}
    assert all(CRASH.contains(Range.sized(int(s["mem"], 16), int(s["memsz"], 16))) for s in out["segments"])
    assert any("inside the backup 0x0-0x21fffff" in n for n in out["notes"]), out["notes"]


def test_notes_inside_the_backed_up_range_are_read_from_the_copy():
    # VMCOREINFO in low RAM (seen in QEMU: "no VMCOREINFO note" until the notes followed the copy).
    sources = SOURCES._replace(vmcoreinfo=Range.sized(0x2000000, 0x1000))
    plan = crash_plan(machine=HOST._replace(dump=sources))
    hdr = _seg(plan, "elfcorehdr").data
    ehdr = E.Elf64_Ehdr.from_buffer_copy(hdr)
    notes = [E.Elf64_Phdr.from_buffer_copy(hdr, ehdr.e_phoff + i * ehdr.e_phentsize) for i in range(ehdr.e_phnum)]
    notes = [(p.p_paddr, p.p_offset) for p in notes if p.p_type == E.PT_NOTE]
    copy = _seg(plan, "backup").mem
    assert notes == [(0x3F000000, 0x3F000000), (0x2000000, copy + 0x2000000)]


def test_a_crash_xen_for_several_cpus_without_nosmp_is_warned_about():
    two = HOST._replace(dump=SOURCES._replace(cpu_notes=(Range.sized(0x3F000000, 0x400),
                                                          Range.sized(0x3F001000, 0x400))))
    assert any("has no nosmp" in w for w in crash_plan(cmdline="console=com1", machine=two).warnings)
    # nosmp alone: Xen 4.17 still parks (so first wakes) every CPU unless mce is off
    assert any("not mce=0" in w for w in crash_plan(cmdline="console=com1 nosmp", machine=two).warnings)
    assert not crash_plan(cmdline="console=com1 nosmp mce=0", machine=two).warnings
    assert not crash_plan(cmdline="console=com1 maxcpus=1 no-mce -- quiet", machine=two).warnings
    assert not crash_plan(cmdline="console=com1", machine=HOST).warnings  # one CPU
