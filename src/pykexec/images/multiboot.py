"""Multiboot 1 images (kexec-tools type ``multiboot-x86``): ``-t multiboot-x86`` for
Xen, or any kernel with only a Multiboot 1 header.

The header lies 4-byte aligned in the first 8 KiB. Its low 16 flag bits are
requirements: we know PAGE_ALIGN (modules are always page aligned) and MEMORY_INFO
(memory information is always given); VIDEO_MODE and unknown bits are refused. With
flag bit 16 the image is loaded by the header's address fields, otherwise it must be an
i386 ELF32 (or x86_64 ELF64) loaded at its physical addresses.

The boot information is one segment: the 116-byte structure, then the command line
("<image path> <arguments>"), the boot loader name, the module list, the modules'
command lines and the memory map, every pointer absolute. Unlike kexec-tools, nothing
goes below 1 MiB (its memory map landed at physical 0, over the IVT and the BIOS data
area).

Entered through purgatory in 32-bit protected mode, paging off, EAX = 0x2BADB002,
EBX = the boot information.
"""

from __future__ import annotations

import ctypes

from pykexec.errors import ImageFormatError
from pykexec.images import multiboot_common as common
from pykexec.images.image_type import ImageType
from pykexec.layouts import multiboot as mb1
from pykexec.memory import align_up
from pykexec.plan import LoadPlan
from pykexec.request import LoadRequest

NAME = "multiboot-x86"


def find_header(data: bytes) -> tuple[int, mb1.Header]:
    """The first Multiboot 1 header with a valid checksum, and its file offset (fields
    beyond the end of the file read as zero)."""
    bad = None
    for off in common.header_offsets(data, mb1.HEADER_MAGIC, mb1.SEARCH_LIMIT, mb1.HEADER_ALIGN):
        raw = data[off:off + ctypes.sizeof(mb1.Header)]
        if len(raw) < mb1.HEADER_MIN_SIZE:
            break
        h = mb1.Header.from_buffer_copy(raw.ljust(ctypes.sizeof(mb1.Header), b"\0"))
        if (h.magic + h.flags + h.checksum) & 0xFFFFFFFF:
            bad = f"Multiboot magic at offset {off:#x} with a bad checksum"
            continue
        if h.flags & mb1.HFLAG_AOUT_KLUDGE and len(raw) < mb1.HEADER_AOUT_SIZE:
            raise ImageFormatError(f"Multiboot header at offset {off:#x} sets the address flag (16) but the "
                                   "file ends before its address fields")
        return off, h
    raise ImageFormatError(bad or "no Multiboot header in the first 8 KiB")


def probe(data: bytes) -> str | None:
    try:
        _, h = find_header(data)
    except ImageFormatError as err:
        return str(err)
    unknown = h.flags & mb1.HFLAGS_REQUIRED_MASK & ~mb1.HFLAGS_KNOWN_REQUIRED
    if unknown:
        return f"Multiboot header requires flags {unknown:#x}, which no loader knows"
    if not h.flags & mb1.HFLAG_AOUT_KLUDGE:
        why = common.elf_problem(data)
        if why is not None:
            return f"{why} (and the Multiboot header has no address fields)"
    return None


def _image(data: bytes, offset: int, h: mb1.Header, path: str) -> common.ImageLoad:
    if h.flags & mb1.HFLAG_AOUT_KLUDGE:
        return common.aout_image(data, offset, h.header_addr, h.load_addr, h.load_end_addr, h.bss_end_addr,
                                 h.entry_addr, f"{path}: Multiboot header")
    return common.elf_image(data)


class InfoLayout:
    """Where each part of the boot information goes, as offsets from its start."""

    def __init__(self, cmdline: bytes, loader_name: bytes, module_cmdlines: list[bytes], mmap_count: int) -> None:
        pos = ctypes.sizeof(mb1.Info)
        self.cmdline = pos
        pos += len(cmdline) + 1
        self.loader_name = pos
        pos += len(loader_name) + 1
        pos = align_up(pos, 4)
        self.mods = pos
        pos += ctypes.sizeof(mb1.Module) * len(module_cmdlines)
        self.module_cmdlines = []
        for c in module_cmdlines:
            self.module_cmdlines.append(pos)
            pos += len(c) + 1
        pos = align_up(pos, 4)
        self.mmap = pos
        self.mmap_length = ctypes.sizeof(mb1.MmapEntry) * mmap_count
        self.size = pos + self.mmap_length


def build_info(addr: int, *, cmdline: bytes, loader_name: bytes, modules: list[tuple[int, int, bytes]],
               meminfo: tuple[int, int], mmap: list[tuple[int, int, int]]) -> bytes:
    """The boot information for physical address ``addr``: ``modules`` as (start, end
    exclusive, command line), ``mmap`` as (base, length, type)."""
    lay = InfoLayout(cmdline, loader_name, [c for _, _, c in modules], len(mmap))
    info = mb1.Info()
    info.flags = mb1.INFO_MEMORY | mb1.INFO_CMDLINE | mb1.INFO_MEM_MAP | mb1.INFO_BOOT_LOADER_NAME
    info.mem_lower, info.mem_upper = meminfo
    info.cmdline = addr + lay.cmdline
    info.boot_loader_name = addr + lay.loader_name
    if modules:
        info.flags |= mb1.INFO_MODS
        info.mods_count = len(modules)
        info.mods_addr = addr + lay.mods
    info.mmap_length = lay.mmap_length
    info.mmap_addr = addr + lay.mmap
    out = bytearray(lay.size)
    out[0:ctypes.sizeof(mb1.Info)] = bytes(info)
    out[lay.cmdline:lay.cmdline + len(cmdline)] = cmdline
    out[lay.loader_name:lay.loader_name + len(loader_name)] = loader_name
    for i, ((start, end, mcmd), at) in enumerate(zip(modules, lay.module_cmdlines)):
        entry = mb1.Module(start, end, addr + at, 0)
        pos = lay.mods + i * ctypes.sizeof(mb1.Module)
        out[pos:pos + ctypes.sizeof(mb1.Module)] = bytes(entry)
        out[at:at + len(mcmd)] = mcmd
    for i, (base, length, kind) in enumerate(mmap):
        pos = lay.mmap + i * ctypes.sizeof(mb1.MmapEntry)
        out[pos:pos + ctypes.sizeof(mb1.MmapEntry)] = bytes(mb1.MmapEntry(mb1.MMAP_ENTRY_SIZE_FIELD, base, length,
                                                                          kind))
    return bytes(out)


def plan(req: LoadRequest) -> LoadPlan:
    path = str(req.kernel_path)
    why = probe(req.kernel)
    if why is not None:
        raise ImageFormatError(f"{path}: {why}")
    offset, h = find_header(req.kernel)
    if h.flags & mb1.HFLAG_VIDEO_MODE:
        raise ImageFormatError(f"{path}: the image requires a video mode (Multiboot header flag 2); pykexec sets "
                               "none and describes no framebuffer")
    image = _image(req.kernel, offset, h, path)
    mmap = common.memory_map(req.machine.memory)
    meminfo = common.basic_meminfo(req.machine.memory)
    cmdline, name = common.image_cmdline(req), common.loader_name()

    def make_info(placed: common.ImageLoad, modules: list[common.PlacedModule]) -> common.BootInfo:
        mods = [(m.addr, m.end, common.module_cmdline(m.module)) for m in modules]
        size = InfoLayout(cmdline, name, [c for _, _, c in mods], len(mmap)).size
        return common.BootInfo(size, lambda addr: build_info(addr, cmdline=cmdline, loader_name=name, modules=mods,
                                                             meminfo=meminfo, mmap=mmap))

    return common.plan_multiboot(req, NAME, image, None, make_info, mb1.BOOTLOADER_MAGIC)


MULTIBOOT_X86 = ImageType(
    name=NAME,
    probe=probe,
    plan=plan,
    usage="multiboot-x86: Multiboot 1 kernel (ELF, or a.out-kludge addresses), entered in 32-bit protected mode.\n"
          "    --command-line/--append STRING, --reuse-cmdline, --module=\"FILE ARGS\" (repeatable)",
)
