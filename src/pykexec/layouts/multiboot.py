"""Multiboot (version 0.6.96, "Multiboot 1"): the OS image header and the boot
information structure (MBI) with its memory map and module list.

This is the only definition of these layouts in pykexec; ``tests/unit/test_multiboot.py``
pins them against hand-written bytes. All integers are little-endian; every address
in the MBI is a 32-bit physical address.

Header (4-byte aligned, wholly within the first 8 KiB of the image)::

    0x00 magic 0x1BADB002   0x04 flags   0x08 checksum (magic + flags + checksum = 0)
    0x0c header_addr  0x10 load_addr  0x14 load_end_addr  0x18 bss_end_addr  0x1c entry_addr
                                                                  (valid with flag bit 16)
    0x20 mode_type  0x24 width  0x28 height  0x2c depth            (valid with flag bit 2)
"""

from __future__ import annotations

import ctypes

HEADER_MAGIC = 0x1BADB002
BOOTLOADER_MAGIC = 0x2BADB002  # EAX at entry
SEARCH_LIMIT = 8 * 1024
HEADER_ALIGN = 4

# Header flags. The low 16 bits are requirements: a loader that does not know one must
# refuse the image; the high 16 bits are optional features.
HFLAG_PAGE_ALIGN = 1 << 0  # modules on page boundaries
HFLAG_MEMORY_INFO = 1 << 1  # mem_* (and, if possible, mmap_*) wanted
HFLAG_VIDEO_MODE = 1 << 2  # a video mode table wanted
HFLAG_AOUT_KLUDGE = 1 << 16  # load with the header's address fields, not the ELF headers
HFLAGS_REQUIRED_MASK = 0xFFFF
HFLAGS_KNOWN_REQUIRED = HFLAG_PAGE_ALIGN | HFLAG_MEMORY_INFO | HFLAG_VIDEO_MODE

# MBI flags: which fields are valid.
INFO_MEMORY = 1 << 0
INFO_BOOTDEV = 1 << 1
INFO_CMDLINE = 1 << 2
INFO_MODS = 1 << 3
INFO_AOUT_SYMS = 1 << 4
INFO_ELF_SHDR = 1 << 5
INFO_MEM_MAP = 1 << 6
INFO_DRIVE_INFO = 1 << 7
INFO_CONFIG_TABLE = 1 << 8
INFO_BOOT_LOADER_NAME = 1 << 9
INFO_APM_TABLE = 1 << 10
INFO_VBE_INFO = 1 << 11
INFO_FRAMEBUFFER_INFO = 1 << 12

# Memory map entry types, shared with Multiboot2's MMAP tag.
MEMORY_AVAILABLE = 1
MEMORY_RESERVED = 2
MEMORY_ACPI_RECLAIMABLE = 3
MEMORY_NVS = 4
MEMORY_BADRAM = 5

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class Header(ctypes.LittleEndianStructure):
    """The whole image header (48 bytes); only the first 12 are always present."""

    _pack_ = 1
    _fields_ = [("magic", u32), ("flags", u32), ("checksum", u32),
                ("header_addr", u32), ("load_addr", u32), ("load_end_addr", u32), ("bss_end_addr", u32),
                ("entry_addr", u32),
                ("mode_type", u32), ("width", u32), ("height", u32), ("depth", u32)]


HEADER_MIN_SIZE = 12
HEADER_AOUT_SIZE = 32  # up to entry_addr


class Info(ctypes.LittleEndianStructure):
    """The boot information structure (116 bytes, up to the framebuffer colour info)."""

    _pack_ = 1
    _fields_ = [
        ("flags", u32),                 # 0x00
        ("mem_lower", u32),             # 0x04 KiB from 0, at most 640
        ("mem_upper", u32),             # 0x08 KiB from 1 MiB to the first hole
        ("boot_device", u32),           # 0x0c
        ("cmdline", u32),               # 0x10
        ("mods_count", u32),            # 0x14
        ("mods_addr", u32),             # 0x18
        ("syms", u32 * 4),              # 0x1c a.out or ELF section symbols
        ("mmap_length", u32),           # 0x2c bytes
        ("mmap_addr", u32),             # 0x30
        ("drives_length", u32),         # 0x34
        ("drives_addr", u32),           # 0x38
        ("config_table", u32),          # 0x3c
        ("boot_loader_name", u32),      # 0x40
        ("apm_table", u32),             # 0x44
        ("vbe_control_info", u32),      # 0x48
        ("vbe_mode_info", u32),         # 0x4c
        ("vbe_mode", u16),              # 0x50
        ("vbe_interface_seg", u16),     # 0x52
        ("vbe_interface_off", u16),     # 0x54
        ("vbe_interface_len", u16),     # 0x56
        ("framebuffer_addr", u64),      # 0x58
        ("framebuffer_pitch", u32),     # 0x60
        ("framebuffer_width", u32),     # 0x64
        ("framebuffer_height", u32),    # 0x68
        ("framebuffer_bpp", u8),        # 0x6c
        ("framebuffer_type", u8),       # 0x6d
        ("color_info", u8 * 6),         # 0x6e
    ]


class MmapEntry(ctypes.LittleEndianStructure):
    """One memory map entry (24 bytes). ``size`` counts the bytes after itself (20), and
    mmap_addr points at the first entry's ``size``."""

    _pack_ = 1
    _fields_ = [("size", u32), ("base_addr", u64), ("length", u64), ("type", u32)]


MMAP_ENTRY_SIZE_FIELD = 20


class Module(ctypes.LittleEndianStructure):
    """One module (16 bytes); mod_end is exclusive, string points at its command line."""

    _pack_ = 1
    _fields_ = [("mod_start", u32), ("mod_end", u32), ("string", u32), ("reserved", u32)]


assert ctypes.sizeof(Header) == 48
assert ctypes.sizeof(Info) == 116
assert ctypes.sizeof(MmapEntry) == 24
assert ctypes.sizeof(Module) == 16
