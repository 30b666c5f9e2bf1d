"""PE/COFF (the UEFI executable format): the headers that lead to the section table,
and the section header. Only what a Unified Kernel Image loader needs: where each
section's data lies in the file and where it sits in memory.

This is the only definition of these layouts in pykexec; ``tests/unit/test_pe.py``
pins them against hand-written bytes. All integers are little-endian.

File layout (Microsoft's "PE Format" specification)::

    0x00 "MZ" ... 0x3c e_lfanew (u32): offset of the PE signature
    e_lfanew        "PE\\0\\0"
    e_lfanew + 4    COFF file header (20 bytes): Machine, NumberOfSections, ...,
                    SizeOfOptionalHeader, Characteristics
    e_lfanew + 24   optional header (SizeOfOptionalHeader bytes), starting with its
                    magic: 0x10b (PE32) or 0x20b (PE32+)
    then            NumberOfSections section headers of 40 bytes each
"""

from __future__ import annotations

import ctypes

DOS_MAGIC = b"MZ"
PE_SIGNATURE = b"PE\0\0"
E_LFANEW_OFFSET = 0x3C
DOS_HEADER_SIZE = 0x40  # up to and including e_lfanew
OPTIONAL_HEADER_MAGICS = {0x10B: "PE32", 0x20B: "PE32+"}
MACHINE_X86_64 = 0x8664
MACHINE_NAMES = {0x8664: "x86_64", 0x14C: "i386", 0xAA64: "arm64", 0x1C2: "arm", 0x5064: "riscv64",
                 0x6264: "loongarch64"}
SECTION_NAME_SIZE = 8

u8, u16, u32 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32


class CoffFileHeader(ctypes.LittleEndianStructure):
    """The COFF file header that follows the PE signature (20 bytes)."""

    _pack_ = 1
    _fields_ = [("machine", u16), ("number_of_sections", u16), ("time_date_stamp", u32),
                ("pointer_to_symbol_table", u32), ("number_of_symbols", u32),
                ("size_of_optional_header", u16), ("characteristics", u16)]


class SectionHeader(ctypes.LittleEndianStructure):
    """One entry of the section table (40 bytes). ``virtual_size`` is the size in memory
    (the section's real length); ``size_of_raw_data`` is the file's copy, rounded up to
    the file alignment. A loader reads min(both) bytes and zero-fills up to virtual_size."""

    _pack_ = 1
    _fields_ = [("name", ctypes.c_char * SECTION_NAME_SIZE), ("virtual_size", u32), ("virtual_address", u32),
                ("size_of_raw_data", u32), ("pointer_to_raw_data", u32), ("pointer_to_relocations", u32),
                ("pointer_to_linenumbers", u32), ("number_of_relocations", u16), ("number_of_linenumbers", u16),
                ("characteristics", u32)]


PE_HEADER_SIZE = len(PE_SIGNATURE) + ctypes.sizeof(CoffFileHeader)  # the optional header follows

assert ctypes.sizeof(CoffFileHeader) == 20
assert ctypes.sizeof(SectionHeader) == 40
