"""Multiboot2 (specification 2.0): the OS image header, its tags, and the boot
information (MBI) a loader hands over, plus the ACPI RSDP that the ACPI tags carry.

This is the only definition of these layouts in pykexec; ``tests/unit/test_multiboot2.py``
pins them against hand-written bytes. All integers are little-endian.

Header (8-byte aligned, wholly within the first 32 KiB of the image)::

    0x00 u32 magic 0xe85250d6   0x04 u32 architecture (0 = i386)
    0x08 u32 header_length      0x0c u32 checksum (magic + arch + length + checksum = 0)
    0x10 tags: u16 type, u16 flags (bit 0: optional), u32 size; each 8-byte aligned;
         a type 0 tag ends the list

MBI (8-byte aligned)::

    0x00 u32 total_size (including this header and the END tag)   0x04 u32 reserved (0)
    0x08 tags: u32 type, u32 size (without padding); each starts 8-byte aligned
"""

from __future__ import annotations

import ctypes

HEADER_MAGIC = 0xE85250D6
BOOTLOADER_MAGIC = 0x36D76289  # EAX at entry
ARCH_I386 = 0
SEARCH_LIMIT = 32 * 1024  # the header lies within the first 32 KiB of the file
HEADER_ALIGN = 8
TAG_ALIGN = 8

# Header tag types.
HTAG_END = 0
HTAG_INFORMATION_REQUEST = 1
HTAG_ADDRESS = 2
HTAG_ENTRY_ADDRESS = 3
HTAG_CONSOLE_FLAGS = 4
HTAG_FRAMEBUFFER = 5
HTAG_MODULE_ALIGN = 6
HTAG_EFI_BS = 7
HTAG_ENTRY_ADDRESS_EFI32 = 8
HTAG_ENTRY_ADDRESS_EFI64 = 9
HTAG_RELOCATABLE = 10

HEADER_TAG_NAMES = {
    HTAG_END: "END", HTAG_INFORMATION_REQUEST: "INFORMATION_REQUEST", HTAG_ADDRESS: "ADDRESS",
    HTAG_ENTRY_ADDRESS: "ENTRY_ADDRESS", HTAG_CONSOLE_FLAGS: "CONSOLE_FLAGS", HTAG_FRAMEBUFFER: "FRAMEBUFFER",
    HTAG_MODULE_ALIGN: "MODULE_ALIGN", HTAG_EFI_BS: "EFI_BS", HTAG_ENTRY_ADDRESS_EFI32: "ENTRY_ADDRESS_EFI32",
    HTAG_ENTRY_ADDRESS_EFI64: "ENTRY_ADDRESS_EFI64", HTAG_RELOCATABLE: "RELOCATABLE",
}

HTAG_FLAG_OPTIONAL = 1

CONSOLE_REQUIRED = 1  # console_flags bit 0: some console must be described in the MBI
CONSOLE_EGA_TEXT_SUPPORTED = 2

ADDRESS_LOAD_FROM_START = 0xFFFFFFFF  # load_addr -1: load the file from its first byte

RELOC_PREFERENCE_NONE = 0
RELOC_PREFERENCE_LOW = 1
RELOC_PREFERENCE_HIGH = 2

# MBI tag types.
TAG_END = 0
TAG_CMDLINE = 1
TAG_BOOT_LOADER_NAME = 2
TAG_MODULE = 3
TAG_BASIC_MEMINFO = 4
TAG_BOOTDEV = 5
TAG_MMAP = 6
TAG_VBE = 7
TAG_FRAMEBUFFER = 8
TAG_ELF_SECTIONS = 9
TAG_APM = 10
TAG_EFI32 = 11
TAG_EFI64 = 12
TAG_SMBIOS = 13
TAG_ACPI_OLD = 14
TAG_ACPI_NEW = 15
TAG_NETWORK = 16
TAG_EFI_MMAP = 17
TAG_EFI_BS = 18
TAG_EFI32_IH = 19
TAG_EFI64_IH = 20
TAG_LOAD_BASE_ADDR = 21

TAG_NAMES = {
    TAG_END: "END", TAG_CMDLINE: "CMDLINE", TAG_BOOT_LOADER_NAME: "BOOT_LOADER_NAME", TAG_MODULE: "MODULE",
    TAG_BASIC_MEMINFO: "BASIC_MEMINFO", TAG_BOOTDEV: "BOOTDEV", TAG_MMAP: "MMAP", TAG_VBE: "VBE",
    TAG_FRAMEBUFFER: "FRAMEBUFFER", TAG_ELF_SECTIONS: "ELF_SECTIONS", TAG_APM: "APM", TAG_EFI32: "EFI32",
    TAG_EFI64: "EFI64", TAG_SMBIOS: "SMBIOS", TAG_ACPI_OLD: "ACPI_OLD", TAG_ACPI_NEW: "ACPI_NEW",
    TAG_NETWORK: "NETWORK", TAG_EFI_MMAP: "EFI_MMAP", TAG_EFI_BS: "EFI_BS", TAG_EFI32_IH: "EFI32_IH",
    TAG_EFI64_IH: "EFI64_IH", TAG_LOAD_BASE_ADDR: "LOAD_BASE_ADDR",
}

MMAP_ENTRY_VERSION = 0

u16, u32, u64 = ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class Header(ctypes.LittleEndianStructure):
    """The fixed part of the image header (16 bytes)."""

    _pack_ = 1
    _fields_ = [("magic", u32), ("architecture", u32), ("header_length", u32), ("checksum", u32)]


class HeaderTag(ctypes.LittleEndianStructure):
    """Every header tag starts with this (8 bytes)."""

    _pack_ = 1
    _fields_ = [("type", u16), ("flags", u16), ("size", u32)]


class AddressTag(ctypes.LittleEndianStructure):
    """Header tag 2: a.out-kludge load addresses (24 bytes)."""

    _pack_ = 1
    _fields_ = [("tag", HeaderTag), ("header_addr", u32), ("load_addr", u32), ("load_end_addr", u32),
                ("bss_end_addr", u32)]


class EntryAddressTag(ctypes.LittleEndianStructure):
    """Header tags 3, 8, 9: an entry point (12 bytes)."""

    _pack_ = 1
    _fields_ = [("tag", HeaderTag), ("entry_addr", u32)]


class ConsoleFlagsTag(ctypes.LittleEndianStructure):
    """Header tag 4 (12 bytes)."""

    _pack_ = 1
    _fields_ = [("tag", HeaderTag), ("console_flags", u32)]


class FramebufferTag(ctypes.LittleEndianStructure):
    """Header tag 5: the preferred mode (20 bytes)."""

    _pack_ = 1
    _fields_ = [("tag", HeaderTag), ("width", u32), ("height", u32), ("depth", u32)]


class RelocatableTag(ctypes.LittleEndianStructure):
    """Header tag 10 (24 bytes). ``max_addr`` is where the image may end at the latest."""

    _pack_ = 1
    _fields_ = [("tag", HeaderTag), ("min_addr", u32), ("max_addr", u32), ("align", u32), ("preference", u32)]


# --- boot information ------------------------------------------------------------------

class InfoHeader(ctypes.LittleEndianStructure):
    """The MBI's first 8 bytes."""

    _pack_ = 1
    _fields_ = [("total_size", u32), ("reserved", u32)]


class Tag(ctypes.LittleEndianStructure):
    """Every MBI tag starts with this (8 bytes); also the whole END tag."""

    _pack_ = 1
    _fields_ = [("type", u32), ("size", u32)]


class BasicMeminfoTag(ctypes.LittleEndianStructure):
    """Tag 4 (16 bytes): KiB of RAM from 0 (at most 640) and from 1 MiB to the first hole."""

    _pack_ = 1
    _fields_ = [("tag", Tag), ("mem_lower", u32), ("mem_upper", u32)]


class ModuleTag(ctypes.LittleEndianStructure):
    """Tag 3 (16 bytes + NUL-terminated command line); mod_end is exclusive."""

    _pack_ = 1
    _fields_ = [("tag", Tag), ("mod_start", u32), ("mod_end", u32)]


class MmapTag(ctypes.LittleEndianStructure):
    """Tag 6 (16 bytes + entries)."""

    _pack_ = 1
    _fields_ = [("tag", Tag), ("entry_size", u32), ("entry_version", u32)]


class MmapEntry(ctypes.LittleEndianStructure):
    """One MMAP entry (24 bytes); types as in Multiboot 1 (1 RAM, 2 reserved, 3 ACPI,
    4 NVS, 5 bad RAM)."""

    _pack_ = 1
    _fields_ = [("base_addr", u64), ("length", u64), ("type", u32), ("reserved", u32)]


class LoadBaseAddrTag(ctypes.LittleEndianStructure):
    """Tag 21 (12 bytes): where the image was actually loaded."""

    _pack_ = 1
    _fields_ = [("tag", Tag), ("load_base_addr", u32)]


# --- ACPI RSDP (ACPI 6.5 §5.2.5.3), what ACPI_OLD / ACPI_NEW carry -------------------------

RSDP_SIGNATURE = b"RSD PTR "
RSDP_V1_SIZE = 20  # what the checksum covers, and what ACPI_OLD carries


class Rsdp(ctypes.LittleEndianStructure):
    """The Root System Description Pointer (36 bytes for revision 2+; 20 before)."""

    _pack_ = 1
    _fields_ = [("signature", ctypes.c_char * 8), ("checksum", ctypes.c_uint8), ("oem_id", ctypes.c_char * 6),
                ("revision", ctypes.c_uint8), ("rsdt_address", u32), ("length", u32), ("xsdt_address", u64),
                ("extended_checksum", ctypes.c_uint8), ("reserved", ctypes.c_uint8 * 3)]


assert ctypes.sizeof(Header) == 16 and ctypes.sizeof(HeaderTag) == 8
assert ctypes.sizeof(AddressTag) == 24 and ctypes.sizeof(EntryAddressTag) == 12
assert ctypes.sizeof(ConsoleFlagsTag) == 12 and ctypes.sizeof(FramebufferTag) == 20
assert ctypes.sizeof(RelocatableTag) == 24
assert ctypes.sizeof(InfoHeader) == 8 and ctypes.sizeof(Tag) == 8
assert ctypes.sizeof(BasicMeminfoTag) == 16 and ctypes.sizeof(ModuleTag) == 16
assert ctypes.sizeof(MmapTag) == 16 and ctypes.sizeof(MmapEntry) == 24
assert ctypes.sizeof(LoadBaseAddrTag) == 12 and ctypes.sizeof(Rsdp) == 36
