"""makedumpfile's kdump-compressed ("diskdump") format, x86_64 native ABI.

The only definition of these layouts in pykexec: the saver
(``pykexec.vmcore.save``) and the reader (``pykexec.vmcore.kdump``) both
import it.  ``tests/unit/test_vmcore_save_layouts.py`` pins sizes, offsets
and byte images.

File layout (every part starts on a ``block_size`` boundary except the
page data)::

    block 0                      disk_dump_header ("KDUMP   ", version 6)
    block 1 .. sub_hdr_size      kdump_sub_header, then the ELF notes
                                 (offset_note/size_note; VMCOREINFO is the
                                 desc of the note inside them)
    next bitmap_blocks           1st bitmap (pfn is RAM), 2nd bitmap (pfn
                                 saved), each bitmap_blocks/2 blocks,
                                 bit (pfn % 8) of byte pfn // 8
    next                         page_desc[popcount(2nd bitmap)], pfn order
    then                         page data, where each page_desc points

Facts from makedumpfile's ``diskdump_mod.h`` (header version 6):
``max_mapnr`` in the header is a 32-bit leftover; the sub header's
``max_mapnr_64`` is the real one.
"""

from __future__ import annotations

import ctypes

from pykexec.layouts.struct_format import struct_format

KDUMP_SIGNATURE = b"KDUMP   "
#: header_version: 6 adds start_pfn_64/end_pfn_64/max_mapnr_64 to the sub header.
KDUMP_HEADER_VERSION = 6
#: disk_dump_header takes one block; the sub header starts at block 1.
DISKDUMP_HEADER_BLOCKS = 1

# disk_dump_header.status, and page_desc.flags (the compression bits are shared).
DUMP_DH_COMPRESSED_ZLIB = 0x1
DUMP_DH_COMPRESSED_LZO = 0x2
DUMP_DH_COMPRESSED_SNAPPY = 0x4
#: status only: the dump stopped early (ENOSPC, read error, killed).
DUMP_DH_COMPRESSED_INCOMPLETE = 0x8
#: status only: unused vmemmap pages were excluded (makedumpfile -e).
DUMP_DH_EXCLUDED_VMEMMAP = 0x10
DUMP_DH_COMPRESSED_ZSTD = 0x20
#: The codec bits (a page_desc has one of them, or none: stored raw).
PAGE_CODEC_FLAGS = (DUMP_DH_COMPRESSED_ZLIB | DUMP_DH_COMPRESSED_LZO | DUMP_DH_COMPRESSED_SNAPPY
                    | DUMP_DH_COMPRESSED_ZSTD)

# makedumpfile's dump levels (-d): the bits of kdump_sub_header.dump_level.
DL_EXCLUDE_ZERO = 1
DL_EXCLUDE_CACHE = 2
DL_EXCLUDE_CACHE_PRI = 4
DL_EXCLUDE_USER_DATA = 8
DL_EXCLUDE_FREE = 16

UTS_LEN = 65


class NewUtsname(ctypes.LittleEndianStructure):
    """struct new_utsname: six NUL-padded 65-byte strings (390 bytes)."""

    _fields_ = [(name, ctypes.c_char * UTS_LEN)
                for name in ("sysname", "nodename", "release", "version", "machine", "domainname")]


class Timeval(ctypes.LittleEndianStructure):
    """struct timeval on x86_64 (16 bytes, 8-aligned)."""

    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_usec", ctypes.c_int64)]


class DiskDumpHeader(ctypes.LittleEndianStructure):
    """struct disk_dump_header (464 bytes on x86_64)."""

    _fields_ = [
        ("signature", ctypes.c_char * 8),
        ("header_version", ctypes.c_int32),
        ("utsname", NewUtsname),
        ("timestamp", Timeval),          # offset 408 (8-aligned after 402 bytes)
        ("status", ctypes.c_uint32),
        ("block_size", ctypes.c_int32),
        ("sub_hdr_size", ctypes.c_int32),  # in blocks
        ("bitmap_blocks", ctypes.c_uint32),  # both bitmaps together
        ("max_mapnr", ctypes.c_uint32),  # obsolete 32-bit copy
        ("total_ram_blocks", ctypes.c_uint32),
        ("device_blocks", ctypes.c_uint32),
        ("written_blocks", ctypes.c_uint32),
        ("current_cpu", ctypes.c_uint32),
        ("nr_cpus", ctypes.c_int32),
    ]


class KdumpSubHeader(ctypes.LittleEndianStructure):
    """struct kdump_sub_header, header version 6 (104 bytes on x86_64)."""

    _fields_ = [
        ("phys_base", ctypes.c_uint64),
        ("dump_level", ctypes.c_int32),
        ("split", ctypes.c_int32),
        ("start_pfn", ctypes.c_uint64),          # obsolete, 32-bit era
        ("end_pfn", ctypes.c_uint64),            # obsolete
        ("offset_vmcoreinfo", ctypes.c_int64),   # v3+
        ("size_vmcoreinfo", ctypes.c_uint64),
        ("offset_note", ctypes.c_int64),         # v4+
        ("size_note", ctypes.c_uint64),
        ("offset_eraseinfo", ctypes.c_int64),    # v5+
        ("size_eraseinfo", ctypes.c_uint64),
        ("start_pfn_64", ctypes.c_uint64),       # v6+
        ("end_pfn_64", ctypes.c_uint64),
        ("max_mapnr_64", ctypes.c_uint64),
    ]


class PageDesc(ctypes.LittleEndianStructure):
    """page_desc_t (24 bytes): where one saved page's data is and how it is stored.

    ``flags`` is 0 for a raw page (``size == block_size``) or one of the
    DUMP_DH_COMPRESSED_* bits.  ``page_flags`` is unused by readers (0).
    """

    _fields_ = [
        ("offset", ctypes.c_int64),
        ("size", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("page_flags", ctypes.c_uint64),
    ]


assert ctypes.sizeof(NewUtsname) == 390
assert DiskDumpHeader.timestamp.offset == 408 and DiskDumpHeader.status.offset == 424
assert ctypes.sizeof(DiskDumpHeader) == 464
assert ctypes.sizeof(KdumpSubHeader) == 104
assert ctypes.sizeof(PageDesc) == 24

#: PageDesc as a struct format, for packing/unpacking descriptors in bulk.
PAGE_DESC_FMT = struct_format(PageDesc)

COMPRESSION_FLAGS = {
    "zlib": DUMP_DH_COMPRESSED_ZLIB,
    "lzo": DUMP_DH_COMPRESSED_LZO,
    "snappy": DUMP_DH_COMPRESSED_SNAPPY,
    "zstd": DUMP_DH_COMPRESSED_ZSTD,
    "none": 0,
}
