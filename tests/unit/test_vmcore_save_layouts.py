"""The kdump-compressed layouts, pinned against hand-written bytes (x86_64 makedumpfile ABI)."""

from __future__ import annotations

import ctypes
import struct

from pykexec.layouts import kdump as L


def test_sizes_and_offsets() -> None:
    assert ctypes.sizeof(L.DiskDumpHeader) == 464
    assert ctypes.sizeof(L.KdumpSubHeader) == 104
    assert ctypes.sizeof(L.PageDesc) == 24 == L.PAGE_DESC_FMT.size
    offsets = {name: getattr(L.DiskDumpHeader, name).offset for name, *_ in L.DiskDumpHeader._fields_}
    assert offsets == {"signature": 0, "header_version": 8, "utsname": 12, "timestamp": 408,
                       "status": 424, "block_size": 428, "sub_hdr_size": 432, "bitmap_blocks": 436,
                       "max_mapnr": 440, "total_ram_blocks": 444, "device_blocks": 448,
                       "written_blocks": 452, "current_cpu": 456, "nr_cpus": 460}
    sub = {name: getattr(L.KdumpSubHeader, name).offset for name, *_ in L.KdumpSubHeader._fields_}
    assert sub == {"phys_base": 0, "dump_level": 8, "split": 12, "start_pfn": 16, "end_pfn": 24,
                   "offset_vmcoreinfo": 32, "size_vmcoreinfo": 40, "offset_note": 48, "size_note": 56,
                   "offset_eraseinfo": 64, "size_eraseinfo": 72, "start_pfn_64": 80, "end_pfn_64": 88,
                   "max_mapnr_64": 96}


def test_flag_values() -> None:
    assert (L.DUMP_DH_COMPRESSED_ZLIB, L.DUMP_DH_COMPRESSED_LZO, L.DUMP_DH_COMPRESSED_SNAPPY,
            L.DUMP_DH_COMPRESSED_INCOMPLETE, L.DUMP_DH_EXCLUDED_VMEMMAP,
            L.DUMP_DH_COMPRESSED_ZSTD) == (1, 2, 4, 8, 0x10, 0x20)


def test_header_bytes() -> None:
    h = L.DiskDumpHeader()
    h.signature = L.KDUMP_SIGNATURE
    h.header_version = 6
    h.utsname.sysname = b"Linux"
    h.utsname.release = b"6.1.0"
    h.timestamp.tv_sec = 0x11223344
    h.status = L.DUMP_DH_COMPRESSED_ZSTD | L.DUMP_DH_COMPRESSED_INCOMPLETE
    h.block_size = 4096
    h.sub_hdr_size = 1
    h.bitmap_blocks = 16
    h.max_mapnr = 262109
    h.nr_cpus = 2
    expected = bytearray(464)
    expected[0:12] = b"KDUMP   " + struct.pack("<i", 6)
    expected[12:17] = b"Linux"
    expected[12 + 2 * 65:12 + 2 * 65 + 5] = b"6.1.0"
    expected[408:416] = struct.pack("<q", 0x11223344)
    expected[424:464] = struct.pack("<IiiIIIIIIi", 0x28, 4096, 1, 16, 262109, 0, 0, 0, 0, 2)
    assert bytes(h) == bytes(expected)


def test_sub_header_and_desc_bytes() -> None:
    s = L.KdumpSubHeader(phys_base=0x1B600000, dump_level=17, offset_vmcoreinfo=4580, size_vmcoreinfo=3281,
                         offset_note=4200, size_note=3664, max_mapnr_64=262109)
    assert bytes(s) == struct.pack("<QiiQQqQqQqQQQQ", 0x1B600000, 17, 0, 0, 0, 4580, 3281, 4200, 3664,
                                   0, 0, 0, 0, 262109)
    d = L.PageDesc(offset=538104, size=4096, flags=0, page_flags=0)
    assert bytes(d) == L.PAGE_DESC_FMT.pack(538104, 4096, 0, 0) == struct.pack("<qIIQ", 538104, 4096, 0, 0)
