"""Multiboot 2 images (kexec-tools type ``multiboot2-x86``), Xen's default way in.

An i386 ELF32 or x86_64 ELF64 executable with a Multiboot 2 header in its first 32 KiB.
We honour the header tags (kexec-tools records most of them and ignores them):

* INFORMATION_REQUEST: a required request for information we cannot give is refused,
  naming it. We always give CMDLINE, BOOT_LOADER_NAME, MODULE, BASIC_MEMINFO and MMAP;
  LOAD_BASE_ADDR when the image is relocatable or asks for it; ACPI_OLD/ACPI_NEW when we
  have the RSDP's bytes (see :func:`multiboot_common.rsdp_bytes`). Never EFI tags: the
  image is entered through the 32-bit path, after boot services are long gone.
* ADDRESS: the image is loaded by its address fields instead of its ELF headers.
* ENTRY_ADDRESS: the entry point instead of e_entry.
* RELOCATABLE: the image goes where min/max/align and the preference (none: stay at
  the link address if possible; low; high) say, entry and LOAD_BASE_ADDR shifted with it.
* MODULE_ALIGN: modules are always page aligned.
* CONSOLE_FLAGS with "console required", FRAMEBUFFER, EFI_BS, ENTRY_ADDRESS_EFI32/64,
  unknown tags: refused when required, ignored when optional. We describe no console:
  we do not know what state the running kernel left the display in, and a wrong
  framebuffer description makes the next kernel write to memory that is not one.

Entered through purgatory in 32-bit protected mode, paging off, EAX = 0x36d76289,
EBX = the boot information (MBI).
"""

from __future__ import annotations

import ctypes
from collections import namedtuple

from pykexec.errors import ImageFormatError
from pykexec.images import multiboot_common as common
from pykexec.images.image_type import ImageType
from pykexec.layouts import multiboot2 as mb2
from pykexec.plan import LoadPlan
from pykexec.request import LoadRequest

NAME = "multiboot2-x86"
MAX_HEADER_TAGS = 512  # a 32 KiB header cannot hold more 8-byte tags than 4096; real ones have < 10


class HeaderTag(namedtuple("HeaderTag", "type optional offset size")):
    """One header tag: its type, whether it is optional, and where it lies in the file."""

    __slots__ = ()
    type: int
    optional: bool
    offset: int
    size: int

    @property
    def name(self) -> str:
        return mb2.HEADER_TAG_NAMES.get(self.type, f"unknown type {self.type}")


def find_header(data: bytes) -> tuple[int, mb2.Header]:
    """The first Multiboot 2 header with a valid checksum, and its file offset."""
    bad = None
    for off in common.header_offsets(data, mb2.HEADER_MAGIC, mb2.SEARCH_LIMIT, mb2.HEADER_ALIGN):
        if off + ctypes.sizeof(mb2.Header) > len(data):
            break
        h = mb2.Header.from_buffer_copy(data, off)
        if (h.magic + h.architecture + h.header_length + h.checksum) & 0xFFFFFFFF:
            bad = f"Multiboot 2 magic at offset {off:#x} with a bad checksum"
            continue
        return off, h
    raise ImageFormatError(bad or "no Multiboot 2 header in the first 32 KiB")


def probe(data: bytes) -> str | None:
    why = common.elf_problem(data)
    if why is not None:
        return why
    try:
        off, h = find_header(data)
    except ImageFormatError as err:
        return str(err)
    if h.architecture != mb2.ARCH_I386:
        return f"Multiboot 2 header for architecture {h.architecture}, not i386 (0)"
    if h.header_length < ctypes.sizeof(mb2.Header) + ctypes.sizeof(mb2.HeaderTag) \
            or off + h.header_length > min(len(data), mb2.SEARCH_LIMIT):
        return f"Multiboot 2 header length {h.header_length:#x} at offset {off:#x} runs past the first 32 KiB"
    return None


def header_tags(data: bytes, offset: int, length: int) -> list[HeaderTag]:
    """The header's tags up to END, each checked to lie inside the header."""
    tags: list[HeaderTag] = []
    # probe checks the length against the file; the clamp keeps this safe on its own too.
    pos, end = offset + ctypes.sizeof(mb2.Header), min(offset + length, len(data))
    while True:
        if pos + ctypes.sizeof(mb2.HeaderTag) > end:
            raise ImageFormatError(f"Multiboot 2 header at {offset:#x} has no END tag within its "
                                   f"{length} bytes")
        t = mb2.HeaderTag.from_buffer_copy(data, pos)
        if t.type == mb2.HTAG_END:
            return tags
        tag = HeaderTag(t.type, bool(t.flags & mb2.HTAG_FLAG_OPTIONAL), pos, t.size)
        if t.size < ctypes.sizeof(mb2.HeaderTag) or pos + t.size > end:
            raise ImageFormatError(f"Multiboot 2 header tag {tag.name} at offset {pos:#x} has size {t.size}, "
                                   "outside the header")
        tags.append(tag)
        if len(tags) > MAX_HEADER_TAGS:
            raise ImageFormatError(f"Multiboot 2 header has more than {MAX_HEADER_TAGS} tags")
        pos += (t.size + mb2.TAG_ALIGN - 1) & ~(mb2.TAG_ALIGN - 1)


# Layout of each tag we read: at least this many bytes.
_TAG_STRUCT = {
    mb2.HTAG_ADDRESS: mb2.AddressTag,
    mb2.HTAG_ENTRY_ADDRESS: mb2.EntryAddressTag,
    mb2.HTAG_CONSOLE_FLAGS: mb2.ConsoleFlagsTag,
    mb2.HTAG_RELOCATABLE: mb2.RelocatableTag,
}
# Tags we deliberately do not act on: fine when optional, refused when required.
_WHY_NOT = {
    mb2.HTAG_FRAMEBUFFER: "pykexec describes no framebuffer",
    mb2.HTAG_EFI_BS: "pykexec enters through the 32-bit path, without EFI boot services",
    mb2.HTAG_ENTRY_ADDRESS_EFI32: "pykexec enters through the 32-bit path, not EFI",
    mb2.HTAG_ENTRY_ADDRESS_EFI64: "pykexec enters through the 32-bit path, not EFI",
}


class Requirements(namedtuple("Requirements", "header_offset requests address entry relocation")):
    """What the header asks of us: ``requests`` as {MBI tag type: required}, the ADDRESS
    tag (or None), the ENTRY_ADDRESS (or None), the Relocation (or None)."""

    __slots__ = ()
    header_offset: int
    requests: dict[int, bool]
    address: mb2.AddressTag | None
    entry: int | None
    relocation: common.Relocation | None


def read_requirements(data: bytes) -> Requirements:
    """Parse the header tags; refuse (naming the tag) what is required and unsupported."""
    offset, h = find_header(data)
    requests: dict[int, bool] = {}
    address: mb2.AddressTag | None = None
    entry: int | None = None
    relocation: common.Relocation | None = None
    for tag in header_tags(data, offset, h.header_length):
        layout = _TAG_STRUCT.get(tag.type)
        if layout is not None and tag.size < ctypes.sizeof(layout):
            raise ImageFormatError(f"Multiboot 2 header tag {tag.name} is {tag.size} bytes, "
                                   f"expected {ctypes.sizeof(layout)}")
        if tag.type == mb2.HTAG_INFORMATION_REQUEST:
            count = (tag.size - ctypes.sizeof(mb2.HeaderTag)) // 4
            for i in range(count):
                kind = int.from_bytes(data[tag.offset + 8 + 4 * i:tag.offset + 12 + 4 * i], "little")
                requests[kind] = requests.get(kind, False) or not tag.optional
        elif tag.type == mb2.HTAG_ADDRESS:
            address = mb2.AddressTag.from_buffer_copy(data, tag.offset)
        elif tag.type == mb2.HTAG_ENTRY_ADDRESS:
            entry = mb2.EntryAddressTag.from_buffer_copy(data, tag.offset).entry_addr
        elif tag.type == mb2.HTAG_RELOCATABLE:
            body = mb2.RelocatableTag.from_buffer_copy(data, tag.offset)
            if body.min_addr > body.max_addr:
                raise ImageFormatError(f"Multiboot 2 RELOCATABLE tag: min_addr {body.min_addr:#x} is above "
                                       f"max_addr {body.max_addr:#x}")
            relocation = common.Relocation(body.min_addr, body.max_addr, body.align, body.preference)
        elif tag.type == mb2.HTAG_CONSOLE_FLAGS:
            if mb2.ConsoleFlagsTag.from_buffer_copy(data, tag.offset).console_flags & mb2.CONSOLE_REQUIRED and not tag.optional:
                raise ImageFormatError("the image requires a console (Multiboot 2 CONSOLE_FLAGS tag, required "
                                       "flag set); pykexec describes none")
        elif tag.type == mb2.HTAG_MODULE_ALIGN:
            pass  # modules are always page aligned
        elif not tag.optional:
            why = _WHY_NOT.get(tag.type, "pykexec does not know it")
            raise ImageFormatError(f"the image requires Multiboot 2 header tag {tag.name}: {why}")
    return Requirements(offset, requests, address, entry, relocation)


def _image(data: bytes, req: Requirements, path: str) -> common.ImageLoad:
    if req.address is not None:
        a = req.address
        entry = req.entry
        if entry is None:
            entry = common.elf_image(data).entry
        return common.aout_image(data, req.header_offset, a.header_addr, a.load_addr, a.load_end_addr,
                                 a.bss_end_addr, entry, f"{path}: Multiboot 2 ADDRESS tag")
    image = common.elf_image(data)
    if req.entry is not None:
        image = image._replace(entry=req.entry)
    return image


def _tag(kind: int, payload: bytes) -> bytes:
    """One MBI tag: header, payload, zero padding to 8 bytes (the size excludes padding)."""
    size = ctypes.sizeof(mb2.Tag) + len(payload)
    return bytes(mb2.Tag(kind, size)) + payload + bytes(-size % mb2.TAG_ALIGN)


def build_mbi(*, cmdline: bytes, loader_name: bytes, modules: list[tuple[int, int, bytes]],
              meminfo: tuple[int, int], mmap: list[tuple[int, int, int]], load_base: int | None = None,
              rsdp: bytes | None = None) -> bytes:
    """The boot information: ``modules`` as (start, end exclusive, command line),
    ``mmap`` as (base, length, type); the ACPI tags only with ``rsdp`` bytes."""
    tags = [_tag(mb2.TAG_CMDLINE, cmdline + b"\0"), _tag(mb2.TAG_BOOT_LOADER_NAME, loader_name + b"\0")]
    for start, end, mcmd in modules:
        tags.append(_tag(mb2.TAG_MODULE, bytes(mb2.ModuleTag(mb2.Tag(), start, end))[8:] + mcmd + b"\0"))
    tags.append(_tag(mb2.TAG_BASIC_MEMINFO, bytes(mb2.BasicMeminfoTag(mb2.Tag(), *meminfo))[8:]))
    entries = b"".join(bytes(mb2.MmapEntry(base, length, kind, 0)) for base, length, kind in mmap)
    header = mb2.MmapTag(mb2.Tag(), ctypes.sizeof(mb2.MmapEntry), mb2.MMAP_ENTRY_VERSION)
    tags.append(_tag(mb2.TAG_MMAP, bytes(header)[8:] + entries))
    if load_base is not None:
        tags.append(_tag(mb2.TAG_LOAD_BASE_ADDR, bytes(mb2.LoadBaseAddrTag(mb2.Tag(), load_base))[8:]))
    if rsdp is not None:
        tags.append(_tag(mb2.TAG_ACPI_OLD, rsdp[:mb2.RSDP_V1_SIZE]))
        if len(rsdp) > mb2.RSDP_V1_SIZE:
            tags.append(_tag(mb2.TAG_ACPI_NEW, rsdp))
    tags.append(_tag(mb2.TAG_END, b""))
    body = b"".join(tags)
    total = ctypes.sizeof(mb2.InfoHeader) + len(body)
    return bytes(mb2.InfoHeader(total, 0)) + body


def plan(req: LoadRequest) -> LoadPlan:
    path = str(req.kernel_path)
    why = probe(req.kernel)
    if why is not None:
        raise ImageFormatError(f"{path}: {why}")
    try:
        needs = read_requirements(req.kernel)
    except ImageFormatError as err:
        raise ImageFormatError(f"{path}: {err}") from None
    rsdp = common.rsdp_bytes(req.machine)
    can_give = {mb2.TAG_END, mb2.TAG_CMDLINE, mb2.TAG_BOOT_LOADER_NAME, mb2.TAG_MODULE, mb2.TAG_BASIC_MEMINFO,
                mb2.TAG_MMAP, mb2.TAG_LOAD_BASE_ADDR}
    if rsdp is not None:
        can_give.add(mb2.TAG_ACPI_OLD)
        if len(rsdp) > mb2.RSDP_V1_SIZE:
            can_give.add(mb2.TAG_ACPI_NEW)
    for kind, required in sorted(needs.requests.items()):
        if required and kind not in can_give:
            name = mb2.TAG_NAMES.get(kind, f"unknown type {kind}")
            extra = " (the ACPI RSDP's bytes are unknown on this machine)" if kind in (
                mb2.TAG_ACPI_OLD, mb2.TAG_ACPI_NEW) else ""
            raise ImageFormatError(f"{path}: the image requires the Multiboot 2 {name} information "
                                   f"(tag {kind}), which pykexec cannot provide{extra}")
    image = _image(req.kernel, needs, path)
    with_base = needs.relocation is not None or mb2.TAG_LOAD_BASE_ADDR in needs.requests
    mmap = common.memory_map(req.machine.memory)
    meminfo = common.basic_meminfo(req.machine.memory)

    def make_info(placed: common.ImageLoad, modules: list[common.PlacedModule]) -> common.BootInfo:
        data = build_mbi(cmdline=common.image_cmdline(req), loader_name=common.loader_name(),
                         modules=[(m.addr, m.end, common.module_cmdline(m.module)) for m in modules],
                         meminfo=meminfo, mmap=mmap, load_base=placed.base if with_base else None, rsdp=rsdp)
        return common.BootInfo(len(data), lambda addr: data)

    if req.crash:
        from pykexec import xen_crash_kernel

        def crash_mbi(cmdline: bytes, modules: list[tuple[int, int, bytes]], crash_meminfo: tuple[int, int],
                      crash_mmap: list[tuple[int, int, int]], base: int) -> bytes:
            return build_mbi(cmdline=cmdline, loader_name=common.loader_name(), modules=modules,
                             meminfo=crash_meminfo, mmap=crash_mmap, load_base=base if with_base else None,
                             rsdp=rsdp)

        result = xen_crash_kernel.plan(req, NAME, image, needs.relocation, crash_mbi, mb2.BOOTLOADER_MAGIC)
    else:
        result = common.plan_multiboot(req, NAME, image, needs.relocation, make_info, mb2.BOOTLOADER_MAGIC)
    if req.machine.acpi_rsdp and rsdp is None:
        result.notes.append("no ACPI tags: the RSDP's bytes cannot be read here (the image must find the "
                            "RSDP itself)")
    return result


MULTIBOOT2_X86 = ImageType(
    name=NAME,
    probe=probe,
    plan=plan,
    usage="multiboot2-x86: Multiboot 2 ELF kernel (Xen), entered in 32-bit protected mode.\n"
          "    --command-line/--append STRING, --reuse-cmdline, --module=\"FILE ARGS\" (repeatable)",
)
