"""Synthetic Multiboot images for the unit tests, written with struct only (independent
of pykexec.layouts, so that the layouts are checked, not reused)."""

from __future__ import annotations

import struct

MB1_MAGIC = 0x1BADB002
MB2_MAGIC = 0xE85250D6
XEN_LINK = 0x200000
XEN_EFI64_ENTRY = 0x3DD531


def elf32(loads: list[tuple[int, bytes, int]], entry: int, *, e_machine: int = 3, e_type: int = 2,
          data_offset: int = 0x100) -> bytes:
    """A minimal little-endian ELF32 executable: loads are (paddr, file bytes, memsz);
    the first load's bytes start at file offset ``data_offset``."""
    ehsize, phentsize = 52, 32
    phdrs, blobs = b"", b""
    for paddr, body, memsz in loads:
        off = data_offset + len(blobs)
        phdrs += struct.pack("<IIIIIIII", 1, off, paddr, paddr, len(body), memsz, 7, 0x1000)
        blobs += body + bytes(-len(body) % 16)
    ident = b"\x7fELF" + bytes([1, 1, 1, 0]) + bytes(8)
    ehdr = ident + struct.pack("<HHIIIIIHHHHHH", e_type, e_machine, 1, entry, ehsize, 0, 0, ehsize, phentsize,
                               len(loads), 40, 0, 0)
    head = ehdr + phdrs
    assert len(head) <= data_offset
    return head + bytes(data_offset - len(head)) + blobs


def mb1_header(flags: int, *, aout: tuple[int, int, int, int, int] | None = None) -> bytes:
    """A Multiboot 1 header; ``aout`` = (header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr)."""
    out = struct.pack("<III", MB1_MAGIC, flags, (-(MB1_MAGIC + flags)) & 0xFFFFFFFF)
    if aout is not None:
        out += struct.pack("<5I", *aout)
    return out


def htag(kind: int, payload: bytes = b"", optional: bool = False) -> bytes:
    """One Multiboot 2 header tag, padded to 8 bytes."""
    size = 8 + len(payload)
    return struct.pack("<HHI", kind, 1 if optional else 0, size) + payload + bytes(-size % 8)


def mb2_header(*tags: bytes, arch: int = 0) -> bytes:
    body = b"".join(tags) + struct.pack("<HHI", 0, 0, 8)
    length = 16 + len(body)
    return struct.pack("<IIII", MB2_MAGIC, arch, length, (-(MB2_MAGIC + arch + length)) & 0xFFFFFFFF) + body


def xen_mb2_header() -> bytes:
    """Xen 4.17's Multiboot 2 header (xen/arch/x86/boot/head.S), 136 bytes."""
    return mb2_header(
        htag(1, struct.pack("<II", 4, 6)),                                    # INFORMATION_REQUEST
        htag(6),                                                              # MODULE_ALIGN
        htag(10, struct.pack("<IIII", 0x200000, 0xFFFFFFFF, 0x200000, 2), True),  # RELOCATABLE, high
        htag(4, struct.pack("<I", 2), True),                                  # CONSOLE_FLAGS: EGA text
        htag(5, struct.pack("<III", 0, 0, 0), True),                          # FRAMEBUFFER
        htag(7, b"", True),                                                   # EFI_BS
        htag(9, struct.pack("<I", XEN_EFI64_ENTRY), True),                    # ENTRY_ADDRESS_EFI64
    )


def image_body(mb1: bytes | None, mb2: bytes | None, size: int = 0x4000) -> bytes:
    """An image's first bytes as Xen lays them out: a jump, the MB1 header at offset 8,
    the MB2 header at 0x18, then filler."""
    body = bytearray(b"\xeb\xfe" + bytes(size - 2))  # jmp . (never run)
    if mb1 is not None:
        body[8:8 + len(mb1)] = mb1
    if mb2 is not None:
        body[0x18:0x18 + len(mb2)] = mb2
    body[0x1000:0x1010] = b"XENXENXENXENXENX"
    return bytes(body)


def xen_like(mb2: bytes | None = None, *, paddr: int = XEN_LINK, memsz: int = 0x14000) -> bytes:
    """An ELF32 like xen.gz unpacked: one PT_LOAD at 2 MiB (0x4000 file bytes, 0x14000 in
    memory), entry at its start, Xen's MB1 header (flags 0x3) and an MB2 header
    (Xen's own unless given)."""
    body = image_body(mb1_header(0x3), xen_mb2_header() if mb2 is None else mb2)
    return elf32([(paddr, body, memsz)], paddr)


def mb2_elf(*tags: bytes, paddr: int = 0x1000000, memsz: int = 0x4000, entry: int | None = None) -> bytes:
    """An ELF32 with only a Multiboot 2 header carrying ``tags``."""
    body = image_body(None, mb2_header(*tags))
    return elf32([(paddr, body, memsz)], paddr if entry is None else entry)


def rsdp_v2() -> bytes:
    """A valid ACPI 2.0 RSDP (36 bytes) with both checksums."""
    raw = bytearray(b"RSD PTR " + b"\0" + b"BOCHS " + bytes([2]) + struct.pack("<IIQ", 0x3FFE1234, 36,
                                                                                0x3FFE5678) + bytes(4))
    raw[8] = -sum(raw[:20]) & 0xFF
    raw[32] = -sum(raw[:36]) & 0xFF
    return bytes(raw)


def qemu_bios_map(ram_bytes: int) -> "MemoryMap":
    """SeaBIOS' E820 map of a QEMU pc machine with ``ram_bytes`` below 4 GiB (as Xen's
    machine map reports it too): low RAM up to the EBDA, the BIOS area, RAM from 1 MiB
    to 128 KiB below the top (ACPI tables), the flash at the top of 4 GiB."""
    from pykexec.memory import MemoryMap, MemType, Range, Region

    return MemoryMap([
        Region(Range(0x0, 0x9FC00), MemType.RAM),
        Region(Range(0x9FC00, 0xA0000), MemType.RESERVED),
        Region(Range(0xF0000, 0x100000), MemType.RESERVED),
        Region(Range(0x100000, ram_bytes - 0x20000), MemType.RAM),
        Region(Range(ram_bytes - 0x20000, ram_bytes), MemType.RESERVED),
        Region(Range(0xFFFC0000, 0x100000000), MemType.RESERVED),
    ])
