"""Xen as the crash kernel of a Xen dom0 host (issue 16): the same plan as from a Linux
host (:mod:`pykexec.xen_crash_kernel`), loaded through Xen's kexec_op as KEXEC_TYPE_CRASH.

Xen 4.17's ``kimage_crash_alloc`` (xen/common/kimage.c) refuses a data segment outside
its crash area, and its kexec page tables map only the segments' pages (``kimage_load_
segment`` -> ``machine_kexec_add_page``): purgatory, entered in 64-bit mode by
``kexec_reloc``, can read the low memory it copies aside only if null-buffer segments
cover it. These tests check both on the planned load, without Xen.
"""

from __future__ import annotations

from pykexec.backends.xen.backend import XenBackend, load_type, xen_segments
from pykexec.backends.xen.rules import ARCH_PURGATORY, LOW_MEMORY_ROLE, XenRange, check_load, low_memory_fill
from pykexec.crash import DumpSources
from pykexec.images import multiboot2
from pykexec.layouts import elf as E
from pykexec.layouts import xen as L
from pykexec.layouts.purgatory import PurgatoryParamsBlock
from pykexec.machine import Machine
from pykexec.memory import MiB, Range
from pykexec.plan import BACKEND_XEN
from pykexec.purgatory import Purgatory
from pykexec.request import LoadRequest, Module
from support.multiboot_synth import qemu_bios_map, xen_like
from support.synth_images import make_bzimage

# Xen's machine map of a 2 GiB QEMU machine (XENMEM_machine_memory_map) and its crash
# area (crashkernel=512M@1G on Xen's line, get_range(MA_CRASH)).
XEN_2G = qemu_bios_map(2 << 30)
AREA = Range(0x40000000, 0x60000000)
# What probe_xen_dom0 gives: Xen's per-pCPU notes and VMCOREINFO_XEN, no Linux image.
XEN_SOURCES = DumpSources(cpu_notes=(Range.sized(0x7F0000, 0x400),), vmcoreinfo=Range.sized(0x7E5000, 0x1000),
                          kernel_release="xen-4.17.7", xen_phys_start=0x7EA00000)
DOM0_HOST = Machine(memory=XEN_2G, crash_kernel=AREA, dump=XEN_SOURCES, source="this machine (Xen dom0)")
DOM0 = Module("vmlinuz", make_bzimage(), "vmlinuz console=hvc0")  # at 16 MiB, init_size 8 MiB
INITRD = Module("initrd", b"I" * 0x3000, "initrd")
SPAN_END = 0x2200000  # 16 MiB + 8 MiB image + 8 MiB for Xen's start info + the initrd, 2 MiB aligned


def xen_host_plan(cmdline: str = "console=com1 dom0_mem=384M nosmp"):
    return multiboot2.plan(LoadRequest("xen.gz", xen_like(), DOM0_HOST, cmdline=cmdline, crash=True,
                                       modules=[DOM0, INITRD], backend=BACKEND_XEN))


def test_a_crash_xen_is_planned_for_xens_kexec_op_with_every_data_segment_in_the_crash_area():
    plan = xen_host_plan()
    assert plan.backend == BACKEND_XEN and load_type(plan) == L.KEXEC_TYPE_CRASH
    for s in plan.segments:
        assert AREA.contains(s.range), s
    assert AREA.contains(plan.entry)
    assert plan.backup_source == Range(0, SPAN_END)
    # Xen's own rules (kimage_crash_alloc, overlaps, segment count, room for its page tables).
    check_load(L.KEXEC_TYPE_CRASH, ARCH_PURGATORY, xen_segments(plan), plan.entry, XenRange(AREA.start, AREA.size))
    XenBackend().check(plan, DOM0_HOST)


def test_what_purgatory_copies_aside_is_mapped_by_null_segments_outside_the_crash_area():
    plan = xen_host_plan()
    segs = xen_segments(plan)
    nulls = [s for s in segs if s.buf is None]
    assert nulls and all(s.role == LOW_MEMORY_ROLE and s.buf_size == 0 for s in nulls)
    assert [(s.dest_maddr, s.dest_size) for s in nulls] == [(0, SPAN_END)]
    # They come after the data segments, which purgatory's digests cover, and copy nothing.
    assert segs[:len(plan.segments)] == [s for s in segs if s.buf is not None]
    params = PurgatoryParamsBlock.from_buffer_copy(
        next(s for s in plan.segments if s.role == "purgatory").data, Purgatory.load().params_offset)
    assert (params.backup_src, params.backup_size) == (0, SPAN_END)
    # JUMP_32 with the Multiboot 2 magic: purgatory leaves long mode itself, Xen enters it in 64-bit mode.
    assert params.mode == 1 and params.eax == 0x36D76289 and ARCH_PURGATORY == E.EM_X86_64


def test_the_crash_xens_dump_carries_xens_notes_and_reads_low_memory_from_the_copy():
    plan = xen_host_plan()
    hdr = next(s for s in plan.segments if s.role == "elfcorehdr").data
    ehdr = E.Elf64_Ehdr.from_buffer_copy(hdr)
    phdrs = [E.Elf64_Phdr.from_buffer_copy(hdr, ehdr.e_phoff + i * ehdr.e_phentsize) for i in range(ehdr.e_phnum)]
    copy = next(s for s in plan.segments if s.role == "backup").mem
    # Xen's per-pCPU note (at 0x7f0000, inside what is copied aside) is read from the copy.
    notes = {p.p_offset for p in phdrs if p.p_type == E.PT_NOTE}
    assert copy + 0x7F0000 in notes and 0x7F0000 not in notes, sorted(map(hex, notes))
    loads = [(p.p_paddr, p.p_offset, p.p_memsz) for p in phdrs if p.p_type == E.PT_LOAD]
    low = [x for x in loads if x[0] < SPAN_END]
    assert low and all(off == copy + paddr for paddr, off, _ in low), [tuple(map(hex, x)) for x in low]
    assert not any(AREA.overlaps(Range.sized(paddr, size)) for paddr, _, size in loads)
    assert any("BIOS data area unknown on this machine (Xen dom0)" in n for n in plan.notes), plan.notes


def test_the_low_memory_fill_reaches_the_backup_end_and_never_shrinks_below_1_mib():
    assert [(f.dest_maddr, f.dest_size) for f in low_memory_fill([], 0)] == [(0, MiB)]
    assert [(f.dest_maddr, f.dest_size) for f in low_memory_fill([], 0x7000000)] == [(0, 0x7000000)]


def test_mce_off_reads_xens_boolean_spellings_in_xens_part_only():
    from pykexec.xen_crash_kernel import mce_off

    assert mce_off("nosmp mce=0") and mce_off("no-mce") and mce_off("mce=off nosmp")
    assert not mce_off("nosmp") and not mce_off("mce=0 mce") and not mce_off("mce=1")
    assert not mce_off("console=com1 -- mce=0")  # dom0's words
