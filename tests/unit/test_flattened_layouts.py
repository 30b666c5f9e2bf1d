"""makedumpfile's flattened format, pinned against bytes makedumpfile 1.7.2 wrote
(``makedumpfile -F -c -d 31`` of the test bed's 6.1 dump): its start header, its first
two data headers (the disk-dump header, 464 bytes at offset 0; the notes, 3664 bytes at
offset 4200) and its end marker."""

from __future__ import annotations

import pytest

from pykexec.layouts import flattened as F

#: The first 32 bytes of the stream: the signature, NUL-padded to 16 bytes, then
#: type 1 and version 1 as big-endian int64s.
MAKEDUMPFILE_START = bytes.fromhex("6d616b6564756d7066696c6500000000" "0000000000000001" "0000000000000001")
#: Its first data header (at 4096) and the one after the 464 bytes of data that follow.
FIRST_RECORD = bytes.fromhex("0000000000000000" "00000000000001d0")
SECOND_RECORD = bytes.fromhex("0000000000001068" "0000000000000e50")
END = bytes.fromhex("ff" * 16)


def test_start_header_is_makedumpfiles() -> None:
    head = F.pack_start_header()
    assert len(head) == F.START_HEADER_SIZE == 4096
    assert head == MAKEDUMPFILE_START + bytes(4096 - 32)
    assert F.START_HEADER_FMT.size == 32 and F.SIGNATURE_FIELD == 16
    assert F.is_start_header(head) and F.is_start_header(MAKEDUMPFILE_START)


def test_start_header_checks_signature_and_type_only() -> None:
    """What makedumpfile -R checks: strcmp of the signature, the type; not the version."""
    other_version = MAKEDUMPFILE_START[:24] + (7).to_bytes(8, "big")
    assert F.is_start_header(other_version)
    assert not F.is_start_header(MAKEDUMPFILE_START[:16] + (2).to_bytes(8, "big") + MAKEDUMPFILE_START[24:])
    assert not F.is_start_header(b"makedumpfilX" + MAKEDUMPFILE_START[12:])
    assert F.is_start_header(b"makedumpfile\0abc" + MAKEDUMPFILE_START[16:])  # a C string ends at NUL
    assert not F.is_start_header(MAKEDUMPFILE_START[:31])


def test_data_headers_are_big_endian_offset_then_size() -> None:
    assert F.pack_data_header(0, 464) == FIRST_RECORD
    assert F.pack_data_header(4200, 3664) == SECOND_RECORD
    assert F.unpack_data_header(b"x" + SECOND_RECORD, 1) == (4200, 3664)
    assert F.DATA_HEADER_FMT.size == 16


def test_end_marker_and_corrupt_headers() -> None:
    assert F.END_MARKER == END and F.END_FLAG == -1
    assert F.unpack_data_header(END) is None
    for offset, size in ((-1, 5), (5, -1), (-2, -2)):
        with pytest.raises(ValueError, match=f"a record of {size} bytes at offset {offset}"):
            F.unpack_data_header(F.pack_data_header(offset, size))
