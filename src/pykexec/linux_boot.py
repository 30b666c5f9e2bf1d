"""Booting a Linux kernel through its 64-bit entry: the boot_params page, and the
segments every Linux loader (bzImage, ELF vmlinux) shares: initrd, command line,
boot_params, setup_data and purgatory.
"""

from __future__ import annotations

import ctypes
from collections import namedtuple
from collections.abc import Callable

from pykexec import crash
from pykexec.errors import PlacementError, UsageError
from pykexec.layouts import boot_params as bp
from pykexec.layouts.x86_paging import PAGE_SIZE
from pykexec.machine import Machine
from pykexec.memory import Allocator, GiB, MemoryMap, MiB, Range, align_up
from pykexec.plan import LoadPlan, Segment
from pykexec.purgatory import Purgatory, PurgatoryParams, Region as DigestRegion
from pykexec.request import LoadRequest

BELOW_4G = 4 * GiB - 1


class PlacedKernel(namedtuple("PlacedKernel", "segments entry64")):
    """A placed kernel: its segments and the physical address of its 64-bit entry."""

    __slots__ = ()
    segments: list[Segment]
    entry64: int


def window_for(req: LoadRequest) -> Range:
    """Where this load may put anything: --mem-min/--mem-max, narrowed to the crash
    region for -p."""
    window = Range(req.mem_min, req.mem_max + 1)
    if req.crash:
        crash = req.machine.crash_kernel
        if crash is None:
            raise UsageError(f"no crash kernel region is reserved on {req.machine.source} "
                             "(boot with crashkernel=SIZE, e.g. crashkernel=256M)")
        inside = window.intersect(crash)
        if inside is None:
            raise UsageError(f"--mem-min/--mem-max exclude the whole crash kernel region {crash}")
        window = inside
    return window


def e820_entries(memory: MemoryMap) -> list[bp.E820Entry]:
    return [bp.E820Entry(r.range.start, r.range.size, r.type.e820) for r in memory]


def build_boot_params(header: bp.SetupHeader, machine: Machine, *, e820: MemoryMap, cmdline_addr: int,
                      initrd: Range | None, setup_data: int = 0, efi_memmap: Range | None = None) -> bytes:
    """The zero page for the next kernel. ``e820`` is the memory map it should believe in
    (all of it for a normal kexec; the crash region for a crash kernel)."""
    params = bp.BootParams()
    params.hdr = header
    hdr = params.hdr
    hdr.type_of_loader = bp.LOADER_TYPE_KEXEC
    hdr.cmd_line_ptr = cmdline_addr & 0xFFFFFFFF
    params.ext_cmd_line_ptr = cmdline_addr >> 32
    if initrd is not None:
        hdr.ramdisk_image = initrd.start & 0xFFFFFFFF
        hdr.ramdisk_size = initrd.size & 0xFFFFFFFF
        params.ext_ramdisk_image = initrd.start >> 32
        params.ext_ramdisk_size = initrd.size >> 32
    # A PV Xen dom0 reports subarch Xen; the next kernel boots on bare metal.
    hdr.hardware_subarch = 0
    hdr.hardware_subarch_data = 0
    hdr.setup_data = setup_data

    entries = e820_entries(e820)
    for i, entry in enumerate(entries[: bp.E820_MAX_ENTRIES_ZEROPAGE]):
        params.e820_table[i] = entry
    params.e820_entries = min(len(entries), bp.E820_MAX_ENTRIES_ZEROPAGE)

    # Extended memory above 1 MiB, for the few paths that still look at it.
    above_1m = next((r for r in e820.ram() if r.contains(MiB)), None)
    mem_k = (above_1m.end - MiB) // 1024 if above_1m else 0
    params.alt_mem_k = min(mem_k, 0xFFFFFFFF)

    running = machine.running_boot_params
    if running is not None and len(running) >= ctypes.sizeof(bp.ScreenInfo):
        params.screen_info = bp.ScreenInfo.from_buffer_copy(running[: ctypes.sizeof(bp.ScreenInfo)])
    else:
        params.screen_info.orig_video_cols = 80
        params.screen_info.orig_video_lines = 25
    params.screen_info.ext_mem_k = min(mem_k, 0xFC00)
    if machine.acpi_rsdp:
        params.acpi_rsdp_addr = machine.acpi_rsdp
    if efi_memmap is not None and machine.efi is not None:
        efi = bp.EfiInfo.from_buffer_copy(machine.efi.efi_info)
        efi.efi_memdesc_size = ctypes.sizeof(bp.EfiMemoryDesc)
        efi.efi_memdesc_version = 1
        efi.efi_memmap = efi_memmap.start & 0xFFFFFFFF
        efi.efi_memmap_hi = efi_memmap.start >> 32
        efi.efi_memmap_size = efi_memmap.size
        params.efi_info = efi
    return bytes(params)


class SetupDataBlock:
    """The setup_data chain (e820 beyond 128 entries, EFI hand-over) and the EFI runtime
    map, laid out back to back in one segment to spend one of the 16 segments only."""

    def __init__(self, items: list[tuple[int, bytes]], efi_map: bytes = b"") -> None:
        self.items = items
        self.efi_map = efi_map
        self.addr = 0
        self.offsets: list[int] = []
        pos = 0
        for _, payload in items:
            self.offsets.append(pos)
            pos = align_up(pos + ctypes.sizeof(bp.SetupDataHeader) + len(payload), 8)
        self.map_offset = pos
        self.size = pos + len(efi_map)

    @classmethod
    def for_machine(cls, machine: Machine, header: bp.SetupHeader, e820: MemoryMap) -> "SetupDataBlock":
        items: list[tuple[int, bytes]] = []
        entries = e820_entries(e820)
        if len(entries) > bp.E820_MAX_ENTRIES_ZEROPAGE:
            items.append((bp.SETUP_E820_EXT, b"".join(bytes(e) for e in entries[bp.E820_MAX_ENTRIES_ZEROPAGE:])))
        efi_map = b""
        efi = machine.efi
        # Only a kernel that says it can take EFI from kexec gets it; others boot as noefi.
        if efi is not None and header.xloadflags & bp.XLF_EFI_KEXEC and efi.runtime_map:
            items.append((bp.SETUP_EFI, bytes(bp.EfiSetupData(fw_vendor=efi.fw_vendor, runtime=efi.runtime,
                                                              tables=efi.config_table, smbios=efi.smbios))))
            efi_map = b"".join(bytes(bp.EfiMemoryDesc(r.type, 0, r.phys_addr, r.virt_addr, r.num_pages,
                                                      r.attribute)) for r in efi.runtime_map)
        return cls(items, efi_map)

    def place(self, addr: int) -> None:
        self.addr = addr

    @property
    def first(self) -> int:
        return self.addr + self.offsets[0] if self.items and self.addr else 0

    @property
    def efi_memmap(self) -> Range | None:
        return Range.sized(self.addr + self.map_offset, len(self.efi_map)) if self.efi_map and self.addr else None

    def render(self) -> bytes:
        out = bytearray(self.size)
        for i, ((kind, payload), off) in enumerate(zip(self.items, self.offsets)):
            nxt = self.addr + self.offsets[i + 1] if i + 1 < len(self.items) else 0
            blob = bytes(bp.SetupDataHeader(nxt, kind, len(payload))) + payload
            out[off:off + len(blob)] = blob
        out[self.map_offset:] = self.efi_map
        return bytes(out)


def plan_linux(req: LoadRequest, image_type: str, header: bp.SetupHeader,
               place_kernel: Callable[[Allocator], PlacedKernel], kernel_memsz: int, *,
               purgatory: bool = True) -> LoadPlan:
    """Place the kernel (through ``place_kernel``), then initrd, crash segments for -p,
    command line, boot_params and purgatory; the result is a plan entered through
    purgatory. ``kernel_memsz`` is what the kernel will occupy (for -p's check). Without
    ``purgatory`` (Xen's CRASH_EFI, where Xen enters the kernel itself) the plan's entry
    is the boot_params address."""
    machine = req.machine
    alloc = Allocator(machine.memory.ram(), window_for(req))
    if req.crash:
        _check_crash_room(req, kernel_memsz)
    kernel = place_kernel(alloc)
    plan = LoadPlan(image_type=image_type, backend=req.backend, crash=req.crash,
                    cmdline=req.cmdline, kernel_entry=kernel.entry64)
    plan.segments.extend(kernel.segments)

    initrd_range = None
    if req.initrd is not None:
        initrd_range = _place_initrd(alloc, header, len(req.initrd))
        plan.segments.append(Segment("initrd", initrd_range.start, align_up(len(req.initrd), PAGE_SIZE), req.initrd))

    e820 = machine.memory
    backup = None
    if req.crash:
        e820, backup = _add_crash_segments(plan, alloc, machine, allow_backup=purgatory)
        elfcorehdr = next(s for s in plan.segments if s.role == "elfcorehdr")
        extra = f"elfcorehdr={elfcorehdr.mem:#x}"
        if req.memmap_cmdline:
            extra = f"{crash.memmap_cmdline(e820)} {extra}"
        plan.cmdline = f"{plan.cmdline} {extra}".strip()

    cmdline = plan.cmdline.encode()
    bp.check_cmdline(header, cmdline, with_crash_additions=req.crash)

    extras = SetupDataBlock.for_machine(machine, header, e820)
    if extras.size:
        extras.place(alloc.allocate(extras.size, max_addr=BELOW_4G, what="setup_data"))
        plan.segments.append(Segment("setup_data", extras.addr, align_up(extras.size, PAGE_SIZE), extras.render()))

    cmdline_buf = cmdline + b"\0"
    cmdline_addr = alloc.allocate(len(cmdline_buf), max_addr=BELOW_4G, what="command line")
    plan.segments.append(Segment("cmdline", cmdline_addr, align_up(len(cmdline_buf), PAGE_SIZE), cmdline_buf))

    zero_page = build_boot_params(header, machine, e820=e820, cmdline_addr=cmdline_addr,
                                  initrd=Range.sized(initrd_range.start, len(req.initrd or b""))
                                  if initrd_range else None, setup_data=extras.first,
                                  efi_memmap=extras.efi_memmap)
    bp_addr = alloc.allocate(len(zero_page), max_addr=BELOW_4G, what="boot_params")
    plan.segments.append(Segment("boot_params", bp_addr, PAGE_SIZE, zero_page))

    if purgatory:
        attach_purgatory(plan, alloc, kernel.entry64, rsi=bp_addr, console_port=req.purgatory_console,
                         backup=backup)
    else:
        plan.entry = bp_addr
    return plan


# Loader data besides kernel and initrd: boot_params, command line, purgatory,
# elfcorehdr, setup_data; a generous bound, used only to say how much is missing.
CRASH_LOADER_OVERHEAD = 64 * 1024


def _check_crash_room(req: LoadRequest, kernel_memsz: int) -> None:
    region = window_for(req)
    dump = req.machine.dump
    backup = crash.BACKUP_END if dump is not None and dump.needs_backup else 0
    need = kernel_memsz + align_up(len(req.initrd or b""), PAGE_SIZE) + CRASH_LOADER_OVERHEAD + backup
    if need > region.size:
        raise PlacementError(
            f"the crash kernel region {region} holds {region.size >> 20} MiB; this kernel "
            f"({kernel_memsz >> 20} MiB with its work area), initrd ({len(req.initrd or b'') >> 20} MiB) and "
            f"loader data need {-(-need // MiB)} MiB: reserve more with crashkernel=")


def _add_crash_segments(plan: LoadPlan, alloc: Allocator, machine: Machine, *,
                        allow_backup: bool = True) -> tuple[MemoryMap, tuple[Range, int] | None]:
    """The elfcorehdr (and, for pre-5.6 crashed kernels, the low-memory backup);
    returns the crash kernel's memory map and (backup source, copy address)."""
    region = machine.crash_kernel
    assert region is not None
    sources = machine.dump or crash.DumpSources()
    if not sources.cpu_notes:
        plan.notes.append("no per-CPU crash notes known: the dump will have no CPU registers")
    if sources.vmcoreinfo is None:
        plan.notes.append("no VMCOREINFO known: dump tools will need debug symbols")
    ranges = crash.dump_ranges(machine.memory, region)
    backup = None
    src = crash.backup_source(machine.memory) if sources.needs_backup and allow_backup else None
    if src is not None:
        copy = alloc.allocate(src.size, what="low-memory backup")
        backup = (src, copy)
        plan.segments.append(Segment("backup", copy, align_up(src.size, PAGE_SIZE), b""))
        plan.notes.append(f"crashed kernel {sources.kernel_release} predates 5.6: purgatory backs up {src}")
    size = crash.elfcorehdr_size(sources, ranges, backup is not None)
    addr = alloc.allocate(size, what="elfcorehdr")
    header = crash.build_elfcorehdr(sources, ranges, backup=backup, address=addr)
    assert len(header) <= size
    plan.segments.append(Segment("elfcorehdr", addr, align_up(size, PAGE_SIZE), header))
    exclude = [s.range for s in plan.segments if s.role in ("elfcorehdr", "backup")]
    return crash.crash_memory_map(machine.memory, region, exclude), backup


def _place_initrd(alloc: Allocator, header: bp.SetupHeader, size: int) -> Range:
    """Highest spot below initrd_addr_max; above it only if the kernel says it can cope."""
    limit = header.initrd_addr_max or 0x37FFFFFF
    try:
        addr = alloc.allocate(size, max_addr=limit, what="initrd")
    except PlacementError:
        if not header.xloadflags & bp.XLF_CAN_BE_LOADED_ABOVE_4G:
            raise
        addr = alloc.allocate(size, what="initrd")
    return Range.sized(addr, size)


def attach_purgatory(plan: LoadPlan, alloc: Allocator, entry: int, *, rsi: int, console_port: int = 0,
                     backup: tuple[Range, int] | None = None) -> None:
    """Add purgatory, which checks every other segment's SHA-256 and then enters the kernel
    at ``entry`` in 64-bit mode with RSI = ``rsi``; the plan's entry becomes purgatory's."""
    purgatory = Purgatory.load()
    addr = alloc.allocate(purgatory.memsz, max_addr=BELOW_4G, what="purgatory")
    regions = [DigestRegion(s.mem, s.bufsz, s.sha256) for s in plan.sorted_segments() if s.bufsz]
    src, copy = backup if backup is not None else (Range(0, 0), 0)
    blob = purgatory.render(PurgatoryParams(entry=entry, rsi=rsi, regions=regions, console_port=console_port,
                                            backup_src=src.start, backup_dst=copy, backup_size=src.size))
    plan.segments.append(Segment("purgatory", addr, align_up(purgatory.memsz, PAGE_SIZE), blob))
    plan.entry = addr + purgatory.entry_offset
