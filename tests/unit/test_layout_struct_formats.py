"""The struct formats derived from the ctypes layouts (layouts/struct_format.py): the same
size, the same bytes as the ctypes structure for the same values, and hand-written bytes."""

from __future__ import annotations

import ctypes
import struct

import pytest

from pykexec.layouts import elf as E
from pykexec.layouts import kdump as L
from pykexec.layouts.struct_format import struct_format

IDENT = b"\x7fELF\x02\x01\x01" + bytes(9)

# (ctypes class, derived format, its format string, field values, the bytes by hand)
CASES = [
    (E.Elf64_Ehdr, E.EHDR64_FMT, "<16sHHIQQQIHHHHHH",
     (IDENT, 4, 62, 1, 0x1122334455667788, 64, 0x1000, 5, 64, 56, 3, 64, 2, 1),
     IDENT + bytes.fromhex("0400" "3e00" "01000000" "8877665544332211" "4000000000000000" "0010000000000000"
                           "05000000" "4000" "3800" "0300" "4000" "0200" "0100")),
    (E.Elf64_Phdr, E.PHDR64_FMT, "<IIQQQQQQ",
     (1, 7, 0x2000, 0xFFFFFFFF81000000, 0x1000000, 0x3000, 0x4000, 0x200000),
     bytes.fromhex("01000000" "07000000" "0020000000000000" "00000081ffffffff" "0000000100000000"
                   "0030000000000000" "0040000000000000" "0000200000000000")),
    (E.Elf64_Shdr, E.SHDR64_FMT, "<IIQQQQIIQQ",
     (0x1B, E.SHT_SYMTAB, 0, 0, 0x4000, 0x1800, 3, 0x40, 8, 24),
     bytes.fromhex("1b000000" "02000000" "0000000000000000" "0000000000000000" "0040000000000000"
                   "0018000000000000" "03000000" "40000000" "0800000000000000" "1800000000000000")),
    (E.Elf64_Nhdr, E.NHDR_FMT, "<III", (5, 336, E.NT_PRSTATUS),
     bytes.fromhex("05000000" "50010000" "01000000")),
    (L.PageDesc, L.PAGE_DESC_FMT, "<qIIQ", (-1, 4096, L.DUMP_DH_COMPRESSED_ZSTD, 0x8000000000000001),
     bytes.fromhex("ffffffffffffffff" "00100000" "20000000" "0100000000000080")),
]


def _ctypes_record(layout: type[ctypes.Structure], values: tuple[object, ...]) -> ctypes.Structure:
    """``layout`` filled field by field, byte strings into byte arrays."""
    record = layout()
    for (name, ctype, *_), value in zip(layout._fields_, values):
        setattr(record, name, ctype.from_buffer_copy(value) if isinstance(value, bytes) else value)
    return record


@pytest.mark.parametrize("layout,fmt,text,values,raw", CASES, ids=[c[0].__name__ for c in CASES])
def test_derived_format_matches_ctypes(layout: type[ctypes.Structure], fmt: struct.Struct, text: str,
                                       values: tuple[object, ...], raw: bytes) -> None:
    assert fmt.format == text
    assert fmt.size == ctypes.sizeof(layout) == len(raw)
    assert fmt.pack(*values) == bytes(_ctypes_record(layout, values)) == raw
    assert fmt.unpack(raw) == values
    assert struct_format(layout).format == text  # derived again: the same


def test_padding_follows_ctypes_alignment() -> None:
    class Gaps(ctypes.LittleEndianStructure):
        _fields_ = [("a", ctypes.c_uint8), ("b", ctypes.c_uint64), ("c", ctypes.c_int16)]

    fmt = struct_format(Gaps)
    assert fmt.format == "<B7xQh6x"
    assert fmt.pack(1, 2, -3) == bytes(Gaps(1, 2, -3))


def test_packed_arrays_and_strings() -> None:
    class Packed(ctypes.LittleEndianStructure):
        _pack_ = 1
        _fields_ = [("name", ctypes.c_char * 5), ("regs", ctypes.c_int64 * 2), ("flag", ctypes.c_char)]

    fmt = struct_format(Packed)
    assert fmt.format == "<5s2qc"
    assert fmt.pack(b"abc", -1, 7, b"x") == bytes(Packed(b"abc", (ctypes.c_int64 * 2)(-1, 7), b"x"))


def test_prstatus_derives_like_the_kernel_layout() -> None:
    fmt = struct_format(E.Elf64_Prstatus_x86_64)
    assert fmt.size == 336
    assert fmt.format == f"<iiihhQQiiii2q2q2q2q{len(E.X86_64_REGISTERS)}Qii"


def test_refuses_what_struct_cannot_say() -> None:
    class Bits(ctypes.LittleEndianStructure):
        _fields_ = [("low", ctypes.c_uint32, 4), ("high", ctypes.c_uint32, 28)]

    with pytest.raises(TypeError, match="bit fields"):
        struct_format(Bits)
    with pytest.raises(TypeError, match="NewUtsname"):
        struct_format(L.DiskDumpHeader)  # a nested structure
