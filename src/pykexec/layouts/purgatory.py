"""Binary layout of the pykexec x86_64 purgatory: blob header and parameter block.

This is the only Python definition of these layouts.  The native definition
is ``pykexec/purgatory/src/purgatory.h``; ``tests/unit/test_purgatory.py``
compares the two through the ELF symbols the build exports (``hdr_*``,
``params_*``), so neither side can drift alone.

Blob header (at offset 0 of ``purgatory.bin``; all integers little-endian)::

    0x00  u8[8]   jmp rel32 to the entry point, padded with int3
    0x08  u8[8]   magic "PYKXPURG"
    0x10  u32     header version (1)
    0x14  u32     header size (0x30)
    0x18  u32     params_offset: parameter block offset in the blob
    0x1c  u32     params_size:   sizeof(PurgatoryParamsBlock) = 0x338
    0x20  u32     entry_offset:  entry point offset from the load address
    0x24  u32     file_size:     length of purgatory.bin
    0x28  u32     memsz:         bytes to reserve (blob + bss + stack), page rounded
    0x2c  u32     reserved (0)

Parameter block (at params_offset)::

    0x00  u64     entry         next kernel's entry point
    0x08  u64     rsi           RSI at entry in JUMP_64 mode (boot_params)
    0x10  u32     mode          JUMP_64 = 0, JUMP_32 = 1
    0x14  u32     eax           EAX at entry in JUMP_32 mode
    0x18  u32     ebx           EBX at entry in JUMP_32 mode
    0x1c  u16     console_port  16550 UART I/O base, 0 = silent
    0x1e  u16     nr_regions    regions in use (<= 16)
    0x20  u64     backup_src    kdump backup: copy backup_size bytes
    0x28  u64     backup_dst      from backup_src to backup_dst after
    0x30  u64     backup_size     verification (0 = no copy)
    0x38  region[16], each 0x30 bytes:
          0x00 u64 start, 0x08 u64 len, 0x10 u8[32] sha256
"""

from __future__ import annotations

import ctypes

MAGIC = b"PYKXPURG"
HEADER_VERSION = 1
MAX_REGIONS = 16
MODE_JUMP_64 = 0
MODE_JUMP_32 = 1


class PurgatoryHeader(ctypes.LittleEndianStructure):
    """Header at offset 0 of the purgatory blob."""

    _pack_ = 1
    _fields_ = [
        ("jmp", ctypes.c_uint8 * 8),
        ("magic", ctypes.c_char * 8),
        ("version", ctypes.c_uint32),
        ("header_size", ctypes.c_uint32),
        ("params_offset", ctypes.c_uint32),
        ("params_size", ctypes.c_uint32),
        ("entry_offset", ctypes.c_uint32),
        ("file_size", ctypes.c_uint32),
        ("memsz", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    ]


class PurgatoryRegion(ctypes.LittleEndianStructure):
    """One segment to verify: SHA-256 of ``len`` bytes at physical ``start``."""

    _pack_ = 1
    _fields_ = [
        ("start", ctypes.c_uint64),
        ("len", ctypes.c_uint64),
        ("sha256", ctypes.c_uint8 * 32),
    ]


class PurgatoryParamsBlock(ctypes.LittleEndianStructure):
    """The parameter block pykexec fills in before loading the purgatory."""

    _pack_ = 1
    _fields_ = [
        ("entry", ctypes.c_uint64),
        ("rsi", ctypes.c_uint64),
        ("mode", ctypes.c_uint32),
        ("eax", ctypes.c_uint32),
        ("ebx", ctypes.c_uint32),
        ("console_port", ctypes.c_uint16),
        ("nr_regions", ctypes.c_uint16),
        ("backup_src", ctypes.c_uint64),
        ("backup_dst", ctypes.c_uint64),
        ("backup_size", ctypes.c_uint64),
        ("regions", PurgatoryRegion * MAX_REGIONS),
    ]


assert ctypes.sizeof(PurgatoryHeader) == 0x30
assert ctypes.sizeof(PurgatoryRegion) == 0x30
assert ctypes.sizeof(PurgatoryParamsBlock) == 0x338
