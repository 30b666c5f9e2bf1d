"""What the Multiboot 1 and Multiboot 2 loaders share: finding the header, reading the
image (ELF PT_LOADs or a.out-kludge addresses), placing image, modules and boot
information, the memory map in Multiboot terms, and the purgatory that enters the
image in 32-bit protected mode with EAX = magic and EBX = the boot information.

Placement rule for everything we choose an address for (modules, boot information,
purgatory): page aligned, at or above 1 MiB and below 4 GiB (Multiboot pointers are 32
bits). The first MiB holds the IVT, the BIOS data area and the EBDA, which Xen and
other kernels read at boot; kexec-tools' Multiboot 1 loader put its memory map at
physical 0 and overwrote them. An image is loaded where it is linked, which must also be
at or above 1 MiB (we refuse a lower link address rather than write over firmware
data), unless it says it is relocatable (Multiboot 2), in which case we choose.
"""

from __future__ import annotations

import ctypes
import struct
from collections import namedtuple
from collections.abc import Callable, Iterator

from pykexec.errors import ImageFormatError, PlacementError, UsageError
from pykexec.layouts import multiboot as mb1, multiboot2 as mb2
from pykexec.layouts.elf import ELFCLASS32, ELFCLASS64, ELFDATA2LSB, ELFMAG, EM_386, EM_X86_64, ET_EXEC
from pykexec.layouts.kexec import KEXEC_SEGMENT_MAX
from pykexec.layouts.x86_paging import PAGE_SIZE
from pykexec.machine import Machine
from pykexec.memory import LOW_MEMORY_END, Allocator, MemoryMap, MemType, Range, align_down, align_up, merge
from pykexec.plan import LoadPlan, Segment
from pykexec.request import LoadRequest, Module

LAST_32BIT = 0xFFFFFFFF  # the last byte a 32-bit pointer reaches

# Our memory types to Multiboot's. Persistent memory is "reserved": a kernel that does
# not know it must not take it for RAM.
MB_MEMORY_TYPE = {
    MemType.RAM: mb1.MEMORY_AVAILABLE,
    MemType.RESERVED: mb1.MEMORY_RESERVED,
    MemType.ACPI: mb1.MEMORY_ACPI_RECLAIMABLE,
    MemType.NVS: mb1.MEMORY_NVS,
    MemType.UNUSABLE: mb1.MEMORY_BADRAM,
    MemType.PMEM: mb1.MEMORY_RESERVED,
    MemType.PRAM: mb1.MEMORY_RESERVED,
}


# --- finding the header --------------------------------------------------------------

def header_offsets(data: bytes, magic: int, limit: int, align: int) -> Iterator[int]:
    """Offsets of ``magic`` (little-endian u32) at ``align``-aligned offsets that start
    within the first ``limit`` bytes."""
    needle = magic.to_bytes(4, "little")
    pos = data.find(needle, 0, limit + 3)
    while pos != -1:
        if pos % align == 0:
            yield pos
        pos = data.find(needle, pos + 1, limit + 3)


# --- the image ---------------------------------------------------------------------------

def elf_problem(data: bytes) -> str | None:
    """None for a little-endian i386 ELF32 or x86_64 ELF64 executable, else why not."""
    if data[:4] != ELFMAG:
        return "no ELF magic"
    if len(data) < 20:
        return "ELF header truncated"
    ei_class, ei_data = data[4], data[5]
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    if ei_data != ELFDATA2LSB:
        return "big-endian ELF"
    if (ei_class, e_machine) not in ((ELFCLASS32, EM_386), (ELFCLASS64, EM_X86_64)):
        return f"ELF class {ei_class} for machine {e_machine}, not i386 (ELF32) or x86_64 (ELF64)"
    if e_type != ET_EXEC:
        return f"ELF type {e_type}, expected an executable (2)"
    return None


class ImageLoad(namedtuple("ImageLoad", "chunks entry base end")):
    """The image as it sits in memory: page-aligned ``chunks`` of (start, memsz, bytes),
    the physical ``entry`` point, and the span ``base`` (lowest load address, the
    Multiboot 2 LOAD_BASE_ADDR) to ``end`` (exclusive)."""

    __slots__ = ()
    chunks: list[tuple[int, int, bytes]]
    entry: int
    base: int
    end: int

    def shifted(self, delta: int) -> "ImageLoad":
        return ImageLoad([(s + delta, n, b) for s, n, b in self.chunks], self.entry + delta,
                         self.base + delta, self.end + delta)


def elf_image(data: bytes) -> ImageLoad:
    """PT_LOADs at their physical addresses (merged into page-aligned chunks), e_entry."""
    from pykexec.images.elf import load_segments, merge_loads  # pyelftools is a costly import

    loads, entry = load_segments(data)
    chunks = [(s, n, bytes(b)) for s, n, b in merge_loads(loads)]
    return ImageLoad(chunks, entry, min(p for p, _, _ in loads), max(p + n for p, n, _ in loads))


def aout_image(data: bytes, header_offset: int, header_addr: int, load_addr: int, load_end_addr: int,
               bss_end_addr: int, entry: int, what: str) -> ImageLoad:
    """Load by the header's address fields (the "a.out kludge" of both specifications):
    the file from ``header_offset - (header_addr - load_addr)`` is loaded at ``load_addr``
    up to ``load_end_addr`` (0: to the end of the file), zeros up to ``bss_end_addr``."""
    if load_addr == mb2.ADDRESS_LOAD_FROM_START:  # Multiboot 2: "load from the file's start"
        load_addr = header_addr - header_offset
        if load_addr < 0:
            raise ImageFormatError(f"{what}: header_addr {header_addr:#x} is below the header's file offset "
                                   f"{header_offset:#x}, so the file would start below address 0")
    if load_addr > header_addr:
        raise ImageFormatError(f"{what}: load_addr {load_addr:#x} is above header_addr {header_addr:#x}")
    file_offset = header_offset - (header_addr - load_addr)
    if file_offset < 0:
        raise ImageFormatError(f"{what}: header_addr {header_addr:#x} - load_addr {load_addr:#x} puts the "
                               "start of the load before the start of the file")
    if load_end_addr:
        if load_end_addr <= load_addr:
            raise ImageFormatError(f"{what}: load_end_addr {load_end_addr:#x} is not above load_addr {load_addr:#x}")
        size = load_end_addr - load_addr
        if file_offset + size > len(data):
            raise ImageFormatError(f"{what}: load_end_addr {load_end_addr:#x} asks for {size:#x} bytes from "
                                   f"offset {file_offset:#x}, beyond the end of the {len(data):#x}-byte file")
    else:
        size = len(data) - file_offset
    memsz = size
    if bss_end_addr:
        if bss_end_addr < load_addr + size:
            raise ImageFormatError(f"{what}: bss_end_addr {bss_end_addr:#x} is below the end of the loaded "
                                   f"data {load_addr + size:#x}")
        memsz = bss_end_addr - load_addr
    start = align_down(load_addr, PAGE_SIZE)
    body = bytes(load_addr - start) + data[file_offset:file_offset + size]
    chunk = (start, align_up(load_addr + memsz, PAGE_SIZE) - start, body)
    return ImageLoad([chunk], entry, load_addr, load_addr + memsz)


class Relocation(namedtuple("Relocation", "min_addr max_addr align preference")):
    """Multiboot 2's RELOCATABLE tag: the image base may move to an ``align``-aligned
    address with the whole image inside [min_addr, max_addr]; preference 0 none,
    1 low, 2 high."""

    __slots__ = ()
    min_addr: int
    max_addr: int
    align: int
    preference: int


def _is_free(alloc: Allocator, ranges: list[Range]) -> bool:
    free = alloc.free()
    return all(any(f.contains(r) for f in free) for r in ranges)


def place_image(alloc: Allocator, image: ImageLoad, path: str, reloc: Relocation | None) -> ImageLoad:
    """Reserve the image where it is linked or, if it is relocatable, where its
    RELOCATABLE tag and our rules allow; returns the image as placed."""
    if not any(Range.sized(s, n).contains(image.entry) for s, n, _ in image.chunks):
        raise ImageFormatError(f"{path}: entry point {image.entry:#x} is outside the loaded image "
                               f"{image.base:#x}-{image.end - 1:#x}")
    ranges = [Range.sized(s, n) for s, n, _ in image.chunks]
    if reloc is not None:
        placed = _relocate(alloc, image, ranges, path, reloc)
        if placed is not None:
            return placed
    if image.base < LOW_MEMORY_END:
        raise ImageFormatError(f"{path}: the image is linked at {image.base:#x}, inside the first MiB (IVT, BIOS "
                               "data area, EBDA), which pykexec never overwrites; link it at 1 MiB or above")
    if image.end - 1 > LAST_32BIT:
        raise ImageFormatError(f"{path}: the image ends at {image.end - 1:#x}, above 4 GiB: a Multiboot image "
                               "must lie below 4 GiB")
    for r in ranges:
        try:
            alloc.reserve(r)
        except PlacementError:
            raise PlacementError(f"{path} is not relocatable and must be loaded at {r}, which is not free "
                                 f"RAM within {alloc.window}") from None
    return image


def _relocate(alloc: Allocator, image: ImageLoad, ranges: list[Range], path: str,
              reloc: Relocation) -> ImageLoad | None:
    """Place a relocatable image; None means "at its link address" (preference none,
    and that spot is allowed and free)."""
    lo = max(reloc.min_addr, LOW_MEMORY_END)
    hi = min(reloc.max_addr, LAST_32BIT)
    if lo > hi:
        raise ImageFormatError(f"{path}: RELOCATABLE range [{reloc.min_addr:#x}, {reloc.max_addr:#x}] has no room "
                               "between 1 MiB and 4 GiB")
    if reloc.preference == mb2.RELOC_PREFERENCE_NONE and image.base >= lo and image.end - 1 <= hi \
            and _is_free(alloc, ranges):
        return None
    if image.base % PAGE_SIZE:
        raise ImageFormatError(f"{path}: cannot relocate an image whose base {image.base:#x} is not page aligned")
    align = max(reloc.align, PAGE_SIZE)
    if align & (align - 1):
        raise ImageFormatError(f"{path}: RELOCATABLE align {reloc.align:#x} is not a power of two")
    span = align_up(image.end, PAGE_SIZE) - image.base
    top_down = reloc.preference == mb2.RELOC_PREFERENCE_HIGH
    try:
        addr = alloc.allocate(span, align=align, min_addr=lo, max_addr=hi, top_down=top_down, what="image")
    except PlacementError as err:
        raise PlacementError(f"{path} (relocatable within [{reloc.min_addr:#x}, {reloc.max_addr:#x}], "
                             f"align {reloc.align:#x}): {err}") from None
    return image.shifted(addr - image.base)


class PlacedModule(namedtuple("PlacedModule", "addr module")):
    """A module and the physical address its first byte goes to."""

    __slots__ = ()
    addr: int
    module: Module

    @property
    def end(self) -> int:
        """Exclusive end of the module's bytes (mod_end in both specifications)."""
        return self.addr + len(self.module.data)


def place_modules(alloc: Allocator, modules: list[Module]) -> list[PlacedModule]:
    """Every module page aligned (both specifications let the image ask for that; we
    always do it), highest first below 4 GiB."""
    placed = []
    for m in modules:
        addr = alloc.allocate(len(m.data), max_addr=LAST_32BIT, what=f"module {m.path}")
        placed.append(PlacedModule(addr, m))
    return placed


# --- boot information pieces --------------------------------------------------------

def memory_map(memory: MemoryMap) -> list[tuple[int, int, int]]:
    """The machine's whole memory map as (base, length, Multiboot type)."""
    return [(r.range.start, r.range.size, MB_MEMORY_TYPE[r.type]) for r in memory]


def basic_meminfo(memory: MemoryMap) -> tuple[int, int]:
    """(mem_lower, mem_upper) in KiB: RAM from (near) 0, at most 640 KiB, and RAM from
    1 MiB up to the first hole. A first page marked reserved (as /proc/iomem shows
    it) does not make lower memory vanish."""
    lower = upper = 0
    for r in merge(memory.ram()):
        if r.start <= 0x10000 and not lower:
            lower = min(r.end, 640 * 1024) // 1024
        if r.contains(LOW_MEMORY_END):
            upper = min((r.end - LOW_MEMORY_END) // 1024, 0xFFFFFFFF)
    return lower, upper


def image_cmdline(req: LoadRequest) -> bytes:
    """"<image path> <arguments>": the first word is the image's name, as GRUB and
    kexec-tools pass it (Xen skips it)."""
    text = f"{req.kernel_path} {req.cmdline}" if req.cmdline else str(req.kernel_path)
    if "\0" in text:
        raise UsageError("command line contains a NUL byte")
    return text.encode()


def module_cmdline(m: Module) -> bytes:
    if "\0" in m.cmdline:
        raise UsageError(f"module {m.path}: command line contains a NUL byte")
    return m.cmdline.encode()


def loader_name() -> bytes:
    from pykexec import __version__

    return f"pykexec {__version__}".encode()


def rsdp_bytes(machine: Machine) -> bytes | None:
    """The ACPI RSDP itself (20 bytes for ACPI 1.0, its ``length`` for 2.0+), checksums
    verified, or None.

    Linux publishes only the RSDP's address. On the running machine we read the bytes
    through /dev/mem: the RSDP lies in the BIOS area or in ACPI/EFI memory, not in
    System RAM, which STRICT_DEVMEM still allows (lockdown does not; then there are no
    ACPI tags and Xen scans the BIOS area for the RSDP itself, as on any legacy boot).
    For a --machine file there are no bytes to read."""
    if not machine.acpi_rsdp or machine.source != "this machine":
        return None
    try:
        with open("/dev/mem", "rb", buffering=0) as f:
            f.seek(machine.acpi_rsdp)
            raw = f.read(ctypes.sizeof(mb2.Rsdp))
    except (OSError, OverflowError):
        return None
    return valid_rsdp(raw)


def valid_rsdp(raw: bytes) -> bytes | None:
    """``raw`` cut to the RSDP's length if it is one (signature and checksums), else None."""
    if len(raw) < mb2.RSDP_V1_SIZE or raw[:8] != mb2.RSDP_SIGNATURE or sum(raw[:mb2.RSDP_V1_SIZE]) & 0xFF:
        return None
    if raw[15] < 2:  # revision: ACPI 1.0 has the 20-byte form only
        return raw[:mb2.RSDP_V1_SIZE]
    if len(raw) < ctypes.sizeof(mb2.Rsdp):
        return None
    length = int.from_bytes(raw[20:24], "little")
    size = ctypes.sizeof(mb2.Rsdp)
    if length != size or sum(raw[:size]) & 0xFF:
        return None
    return raw[:size]


# --- the plan -----------------------------------------------------------------------

class BootInfo(namedtuple("BootInfo", "size render")):
    """The boot information to be placed: its ``size`` in bytes, and ``render(addr)``
    that builds it for the address it was given (Multiboot 1 points into itself)."""

    __slots__ = ()
    size: int
    render: Callable[[int], bytes]


def plan_multiboot(req: LoadRequest, type_name: str, image: ImageLoad, reloc: Relocation | None,
                   make_info: Callable[[ImageLoad, list[PlacedModule]], BootInfo], magic: int) -> LoadPlan:
    """Place image, modules, boot information and purgatory; the plan enters
    purgatory, which checks every segment and jumps to the image in 32-bit protected
    mode with EAX = ``magic`` and EBX = the boot information's address."""
    path = str(req.kernel_path)
    if req.crash:
        raise UsageError(f"-p: a {type_name} image cannot be a crash kernel (only Multiboot 2, with dom0 as "
                         "--module, can: docs/xen-crash-kernel.md); load it with -l")
    if req.initrd is not None:
        raise UsageError("--initrd is for Linux images; pass a multiboot kernel's initrd with --module")
    needed = len(image.chunks) + len(req.modules) + 2  # + boot information + purgatory
    if needed > KEXEC_SEGMENT_MAX:
        raise UsageError(f"{len(req.modules)} modules, {len(image.chunks)} image segments, the boot information "
                         f"and purgatory make {needed} segments; kexec_load takes at most {KEXEC_SEGMENT_MAX}")
    from pykexec.linux_boot import window_for

    alloc = Allocator(req.machine.memory.ram(), window_for(req))
    linked_at = image.base
    image = place_image(alloc, image, path, reloc)
    modules = place_modules(alloc, req.modules)
    info = make_info(image, modules)
    info_addr = alloc.allocate(info.size, max_addr=LAST_32BIT, what="boot information")
    data = info.render(info_addr)
    assert len(data) == info.size

    cmdline = image_cmdline(req).decode()
    plan = LoadPlan(image_type=type_name, backend=req.backend, cmdline=cmdline, kernel_entry=image.entry)
    plan.segments.extend(Segment("kernel", s, n, b) for s, n, b in image.chunks)
    plan.segments.extend(Segment("module", p.addr, align_up(len(p.module.data), PAGE_SIZE), p.module.data)
                         for p in modules)
    plan.segments.append(Segment("mbi", info_addr, align_up(info.size, PAGE_SIZE), data))
    if image.base != linked_at:
        plan.notes.append(f"image relocated from {linked_at:#x} to {image.base:#x}")
    attach_purgatory(plan, alloc, image.entry, magic, info_addr, req.purgatory_console)
    return plan


def attach_purgatory(plan: LoadPlan, alloc: Allocator, entry: int, eax: int, ebx: int, console: int,
                     backup: tuple[Range, int] | None = None) -> None:
    """Purgatory in JUMP_32 mode; with ``backup`` = (source, copy address) it first
    copies the source aside (a crash kernel that writes low memory)."""
    from pykexec.purgatory import Mode, Purgatory, PurgatoryParams, Region

    purgatory = Purgatory.load()
    # JUMP_32 runs its last steps in 32-bit code: purgatory itself must be below 4 GiB.
    addr = alloc.allocate(purgatory.memsz, max_addr=LAST_32BIT, what="purgatory")
    regions = [Region(s.mem, s.bufsz, s.sha256) for s in plan.sorted_segments() if s.bufsz]
    src, copy = backup if backup is not None else (Range(0, 0), 0)
    blob = purgatory.render(PurgatoryParams(entry=entry, mode=Mode.JUMP_32, eax=eax, ebx=ebx, regions=regions,
                                            console_port=console, backup_src=src.start, backup_dst=copy,
                                            backup_size=src.size))
    plan.segments.append(Segment("purgatory", addr, align_up(purgatory.memsz, PAGE_SIZE), blob))
    plan.entry = addr + purgatory.entry_offset
    plan.backup_source = src if src.size else None
