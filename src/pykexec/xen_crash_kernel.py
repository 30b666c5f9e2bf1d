"""Xen as a crash kernel (issue 16): ``pykexec -p xen.gz --module="vmlinuz ..." --module=initrd``
from a Linux host (kexec_load) or a Xen PV dom0 (Xen's kexec_op, KEXEC_TYPE_CRASH: the same
plan; the Xen backend maps what purgatory copies aside). See docs/xen-crash-kernel.md.

Xen 4.17's early boot writes low memory it never checks against the Multiboot map: 4
bytes of stack just below 0x1000, and a 64 KiB trampoline area whose place it derives
from the BIOS data area and Multiboot ``mem_lower`` (xen/arch/x86/boot/head.S,
``trampoline_bios_setup``); and a PV dom0 Linux needs RAM in the machine map where its
image and initrd sit pseudo-physically (from 16 MiB). So purgatory copies 0 through
dom0's span aside, the crash Xen gets that RAM and the crash region only, ``no-real-mode``
keeps Xen from asking the BIOS for the whole machine's E820 instead, the elfcorehdr reads
the copied range from the copy, and dom0 learns the elfcorehdr from its module string.
"""

from __future__ import annotations

from collections.abc import Callable

from pykexec import crash
from pykexec.errors import UsageError
from pykexec.images import multiboot_common as common
from pykexec.layouts.kexec import KEXEC_SEGMENT_MAX
from pykexec.layouts.x86_paging import PAGE_SIZE
from pykexec.linux_boot import window_for
from pykexec.machine import Machine
from pykexec.memory import Allocator, MemoryMap, MemType, MiB, Range, Region, align_up, subtract
from pykexec.plan import BACKEND_KEXEC_LOAD, BACKEND_XEN, LoadPlan, Segment
from pykexec.request import LoadRequest

TRAMPOLINE_AREA = 64 * 1024  # TRAMPOLINE_SPACE + TRAMPOLINE_STACK_SPACE (asm/config.h)
EARLY_STACK = Range(0xFFC, 0x1000)  # head.S __start: esp = 0x1000, one call/pop
NO_REAL_MODE = "no-real-mode"
DOM0_CMDLINE_MAX = 1023  # MAX_GUEST_CMDLINE (1024) with its NUL; Xen truncates silently
_U32 = 0xFFFFFFFF
# Xen's start info, boot page tables and stack follow dom0's image (dom0_build.c): a bound.
DOM0_START_INFO_ROOM = 8 * MiB
BDA_EBDA_SEGMENT = 0x40E  # u16: the EBDA's real-mode segment
BDA_BASE_MEMORY = 0x413  # u16: conventional memory in KiB


def trampoline(ebda_segment: int, base_memory_kib: int, mem_lower_kib: int = 0) -> Range:
    """Where Xen 4.17 puts its trampoline on a BIOS boot, computed as head.S does: the
    EBDA segment (BDA 0x40e) if within [0x4000, 0xa000), else base memory (BDA 0x413,
    KiB); the Multiboot ``mem_lower`` instead when it is at least 256 KiB and smaller;
    minus 64 KiB, rounded down to a page. 32-bit arithmetic, wrap-around included."""
    seg = ebda_segment if 0x4000 <= ebda_segment < 0xA000 else (base_memory_kib << 6) & _U32
    if mem_lower_kib >= 0x100:
        seg = min(seg, (mem_lower_kib << 6) & _U32)
    seg = ((seg - (TRAMPOLINE_AREA >> 4)) & _U32) & ~0xFF
    start = (seg << 4) & _U32
    return Range.sized(start, TRAMPOLINE_AREA)


def low_writes(tramp: Range) -> list[Range]:
    """What Xen writes below 1 MiB outside any memory map: the early stack bytes and
    the trampoline area (code, boot information copy, low stack, AP entry)."""
    return [EARLY_STACK, tramp]


def uncovered(writes: list[Range], backup: Range | None) -> list[Range]:
    """The parts of ``writes`` the low-memory backup does not cover (empty = safe)."""
    out: list[Range] = []
    for w in writes:
        out.extend(w.minus(backup) if backup is not None else [w])
    return out


def xen_cmdline(cmdline: str) -> str:
    """The crash Xen's command line with ``no-real-mode`` in Xen's part (before any
    ``--``, after which words go to dom0): without it Xen takes the BIOS E820, i.e. the
    whole machine, over our Multiboot map."""
    xen_part, sep, dom0_part = cmdline.partition(" -- ")
    if NO_REAL_MODE not in xen_part.split():
        xen_part = f"{xen_part} {NO_REAL_MODE}".strip()
    return f"{xen_part}{sep}{dom0_part}"


def mce_off(cmdline: str) -> bool:
    """Whether Xen's part of ``cmdline`` turns machine-check handling off (``mce=0`` and the
    other spellings of Xen's boolean parameters). With it on, Xen 4.17 on a non-AMD CPU
    parks offline CPUs (``park_offline_cpus``, cpu/common.c) and so wakes every CPU even
    under ``nosmp``."""
    words = cmdline.partition(" -- ")[0].split()
    value = None
    for w in words:  # the last one wins, as in Xen
        if w == "no-mce":
            value = False
        elif w == "mce" or w.startswith("mce="):
            value = w.partition("=")[2] not in ("0", "no", "false", "off", "disable")
    return value is False


def dom0_module_cmdline(module_cmdline: str, elfcorehdr: int, *, kextra: str = "") -> str:
    """Module 0's string with ``elfcorehdr=`` for dom0 (Xen drops the first word, the
    file name, and appends ``kextra``, the words after `` -- ``); refuses a string that
    would not fit Xen's 1024-byte buffer, or one that already names an elfcorehdr."""
    if any(w.startswith("elfcorehdr=") for w in module_cmdline.split()):
        raise UsageError("-p: the dom0 module's arguments already have elfcorehdr=; pykexec sets it")
    out = f"{module_cmdline} elfcorehdr={elfcorehdr:#x}"
    words = out.split(None, 1)
    seen = len(words[1] if len(words) > 1 else "") + (1 + len(kextra) if kextra else 0)
    if seen > DOM0_CMDLINE_MAX:
        raise UsageError(f"-p: dom0's command line would be {seen} bytes with elfcorehdr=; Xen keeps "
                         f"{DOM0_CMDLINE_MAX}")
    return out


def memory_map(memory: MemoryMap, crash_region: Range, kept: list[Range],
               backed_up: Range = Range(0, crash.BACKUP_END)) -> MemoryMap:
    """The crash Xen's memory map: the RAM in ``backed_up`` (copied aside by purgatory),
    the crash region minus ``kept`` (elfcorehdr, backup copy: left out so Xen does not
    reuse them and dom0 may map them as I/O), firmware regions as they are, the rest of
    the crashed kernel's RAM absent."""
    saved = [r for r in (x.intersect(backed_up) for x in memory.ram()) if r]
    regions = [Region(r, MemType.RAM) for r in subtract(saved + [crash_region], kept)]
    regions += [reg for reg in memory if reg.type is not MemType.RAM]
    return MemoryMap(regions)


def dom0_span(kernel: bytes, what: str, initrd_size: int = 0) -> Range:
    """The pseudo-physical range a PV dom0 Linux needs as RAM in the machine map: from
    its load address (the bzImage's pref_address, or the ELF's lowest PT_LOAD) through
    its init_size (or last PT_LOAD), room for what Xen puts right after it (start info,
    boot page tables, boot stack), and then room for its initrd. Linux's
    ``xen_memory_setup()`` (arch/x86/xen/setup.c) stops with "Xen hypervisor allocated
    kernel memory conflicts with E820 map" unless the image is RAM there; and since Xen
    puts the initrd at pseudo-physical ``dom0_mem`` (a hole in a crash map), Linux moves
    it to a free stretch of one RAM entry (``xen_find_free_area()``) or stops with "Can't
    find new memory area for initrd needed due to E820 map conflict"."""
    if kernel[:4] == b"\x7fELF":
        from pykexec.images.elf import load_segments

        loads, _ = load_segments(kernel)
        start, end = min(p for p, _, _ in loads), max(p + n for p, n, _ in loads)
    else:
        from pykexec.images.bzimage import check_bzimage

        header = check_bzimage(kernel, what)
        start, end = header.pref_address, header.pref_address + header.init_size
    return Range(start, align_up(end + DOM0_START_INFO_ROOM + initrd_size, 2 * MiB))


def multiboot_mmap(crash_map: MemoryMap) -> list[tuple[int, int, int]]:
    """The map as Multiboot (base, length, type) entries, refused when Xen would
    ignore it (``copy_e820_map`` drops maps of fewer than 2 entries)."""
    entries = common.memory_map(crash_map)
    if len(entries) < 2:
        raise UsageError("-p: the crash Xen's memory map has fewer than 2 entries, which Xen 4.17 ignores")
    return entries


# --- the BIOS data area Xen reads ---------------------------------------------------------

def bios_data_area(machine: Machine) -> tuple[int, int] | None:
    """(EBDA segment, base memory KiB) as Xen's head.S will read them at 0x40e/0x413,
    from /dev/mem (the first MiB is readable even under STRICT_DEVMEM); None when
    unknown (a --machine file, no /dev/mem)."""
    if machine.source != "this machine":
        return None
    try:
        with open("/dev/mem", "rb", buffering=0) as f:
            f.seek(BDA_EBDA_SEGMENT)
            seg = int.from_bytes(f.read(2), "little")
            f.seek(BDA_BASE_MEMORY)
            kib = int.from_bytes(f.read(2), "little")
    except OSError:
        return None
    return seg, kib


def assumed_bda(memory: MemoryMap) -> tuple[int, int]:
    """What a PC BIOS puts in the BDA for this map: the EBDA right after the low RAM."""
    low = crash.backup_source(memory)
    end = low.end if low is not None else 0
    return end >> 4, end >> 10


# --- the plan ------------------------------------------------------------------------------

#: Builds the MBI: (command line, modules as (start, end, string), (mem_lower, mem_upper),
#: mmap entries, image base) -> bytes. The Multiboot 2 loader supplies it.
MbiBuilder = Callable[[bytes, list[tuple[int, int, bytes]], tuple[int, int], list[tuple[int, int, int]], int],
                      bytes]


def plan(req: LoadRequest, type_name: str, image: common.ImageLoad, reloc: common.Relocation | None,
         build_mbi: MbiBuilder, magic: int) -> LoadPlan:
    """Xen (a Multiboot 2 image) as the crash kernel: every segment in the crash region,
    low memory copied aside by purgatory, a map of only the backed-up low RAM and the
    crash region, ``no-real-mode``, and dom0's module string with ``elfcorehdr=``."""
    machine, path = req.machine, str(req.kernel_path)
    if req.backend not in (BACKEND_KEXEC_LOAD, BACKEND_XEN):
        raise UsageError(f"-p with {type_name}: through kexec_load (a Linux host) or Xen's kexec_op (a dom0), "
                         f"not {req.backend}: purgatory must copy low memory aside")
    if req.initrd is not None:
        raise UsageError("--initrd is for Linux images; pass a multiboot kernel's initrd with --module")
    if not req.modules:
        raise UsageError(f"-p with {type_name}: dom0's kernel must be the first --module (it gets elfcorehdr=)")
    region = machine.crash_kernel
    assert region is not None  # the core refuses -p without one
    low = crash.backup_source(machine.memory)
    if low is None:
        raise UsageError(f"-p with {type_name}: no RAM below 640 KiB on {machine.source} to copy aside, and "
                         "Xen writes its trampoline there")
    # From 0 (Xen's first stack bytes are at 0xffc) through dom0's image: a PV dom0
    # needs its own span to be RAM in the map (see dom0_span), so that RAM is given to
    # the crash Xen after purgatory copies the crashed kernel's content aside.
    initrd_size = len(req.modules[1].data) if len(req.modules) > 1 else 0
    span = dom0_span(req.modules[0].data, f"dom0 kernel {req.modules[0].path}", initrd_size)
    sources = machine.dump or crash.DumpSources()
    end = max(low.end, span.end)
    image_span = sources.kernel_image
    if image_span is not None and image_span.paddr < end:  # the crashed kernel's image: all or nothing
        end = max(end, align_up(image_span.paddr + image_span.size, PAGE_SIZE))
    backup_src = Range(0, end)
    if backup_src.overlaps(region):
        raise UsageError(f"-p with {type_name}: dom0's kernel needs RAM up to {span.end:#x}, which overlaps "
                         f"the crash kernel region {region}; reserve it higher (crashkernel=SIZE@OFFSET)")
    xen_args = xen_cmdline(req.cmdline)
    one_cpu = {"nosmp", "maxcpus=1"} & set(xen_args.partition(" -- ")[0].split())
    kextra = xen_args.partition(" -- ")[2]

    needed = len(image.chunks) + len(req.modules) + 4  # + backup, elfcorehdr, MBI, purgatory
    if needed > KEXEC_SEGMENT_MAX:
        raise UsageError(f"-p: {needed} segments (image, modules, backup, elfcorehdr, boot information, "
                         f"purgatory); kexec_load takes at most {KEXEC_SEGMENT_MAX}")
    alloc = Allocator(machine.memory.ram(), window_for(req))
    linked_at = image.base
    image = common.place_image(alloc, image, path, reloc)
    modules = common.place_modules(alloc, req.modules)
    plan = LoadPlan(image_type=type_name, backend=req.backend, crash=True, kernel_entry=image.entry,
                    cmdline=f"{path} {xen_args}")
    plan.segments.extend(Segment("kernel", s, n, b) for s, n, b in image.chunks)

    copy = alloc.allocate(backup_src.size, what="low-memory backup")
    backup = (backup_src, copy)
    ranges = crash.dump_ranges(machine.memory, region)
    size = crash.elfcorehdr_size(sources, ranges, True)
    hdr_addr = alloc.allocate(size, what="elfcorehdr")
    header = crash.build_elfcorehdr(sources, ranges, backup=backup, address=hdr_addr)
    kept = [Range.sized(copy, align_up(backup_src.size, PAGE_SIZE)), Range.sized(hdr_addr, align_up(size, PAGE_SIZE))]
    crash_map = memory_map(machine.memory, region, kept, backup_src)
    mmap = multiboot_mmap(crash_map)
    meminfo = common.basic_meminfo(crash_map)

    bda = bios_data_area(machine)
    if bda is None:
        bda = assumed_bda(machine.memory)
        plan.notes.append(f"BIOS data area unknown on {machine.source}: assumed EBDA segment {bda[0]:#x}, "
                          f"base memory {bda[1]} KiB")
    tramp = trampoline(bda[0], bda[1], meminfo[0])
    missed = uncovered(low_writes(tramp), backup_src)
    if missed:
        raise UsageError(f"-p with {type_name}: Xen 4.17 would put its trampoline at {tramp} (EBDA segment "
                         f"{bda[0]:#x}, base memory {bda[1]} KiB, mem_lower {meminfo[0]} KiB), outside the low "
                         f"memory purgatory copies aside ({backup_src}): it would overwrite the dump")

    dom0 = modules[0].module
    strings = [common.module_cmdline(dom0._replace(cmdline=dom0_module_cmdline(dom0.cmdline, hdr_addr,
                                                                                kextra=kextra)))]
    strings += [common.module_cmdline(m.module) for m in modules[1:]]
    if "\0" in xen_args:
        raise UsageError("command line contains a NUL byte")
    mbi = build_mbi(plan.cmdline.encode(), [(m.addr, m.end, s) for m, s in zip(modules, strings)],
                    meminfo, mmap, image.base)
    mbi_addr = alloc.allocate(len(mbi), max_addr=common.LAST_32BIT, what="boot information")

    plan.segments.extend(Segment("module", p.addr, align_up(len(p.module.data), PAGE_SIZE), p.module.data)
                         for p in modules)
    plan.segments.append(Segment("backup", copy, align_up(backup_src.size, PAGE_SIZE), b""))
    plan.segments.append(Segment("elfcorehdr", hdr_addr, align_up(size, PAGE_SIZE), header))
    plan.segments.append(Segment("mbi", mbi_addr, align_up(len(mbi), PAGE_SIZE), mbi))
    if image.base != linked_at:
        plan.notes.append(f"image relocated from {linked_at:#x} to {image.base:#x}")
    plan.notes.append(f"crash Xen: trampoline {tramp} inside the backup {backup_src} (copied to {copy:#x}); "
                      f"dom0 gets elfcorehdr={hdr_addr:#x}")
    plan.notes.append("crash Xen's memory map: " + ", ".join(f"{b:#x}+{n:#x}:{t}" for b, n, t in mmap))
    if len(sources.cpu_notes) > 1 and not one_cpu:
        plan.warnings.append("the crash Xen has no nosmp: Xen 4.17 entered on a CPU other than the boot CPU "
                             "wakes the boot CPU with INIT and the machine resets; give it nosmp mce=0 "
                             "(docs/xen-crash-kernel.md)")
    elif len(sources.cpu_notes) > 1 and not mce_off(xen_args):
        plan.warnings.append("the crash Xen has nosmp but not mce=0: Xen 4.17 on Intel still wakes every CPU to "
                             "park it, the boot CPU too when the crash runs on another, and the machine resets "
                             "(docs/xen-crash-kernel.md)")
    common.attach_purgatory(plan, alloc, image.entry, magic, mbi_addr, req.purgatory_console, backup=backup)
    return plan

