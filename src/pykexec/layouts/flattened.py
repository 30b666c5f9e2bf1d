"""makedumpfile's flattened format (``makedumpfile -F``): a dump file sent as a stream.

A writer that would seek (``lseek`` + ``write`` at an offset) emits instead, in the
order it writes, one record per write; the stream needs no seeking, so it can go
through a pipe (``makedumpfile -F ... | ssh host 'cat > vmcore.flat'``)::

    start header      4096 bytes: signature "makedumpfile" NUL-padded to 16 bytes,
                      int64 type (1), int64 version (1), zeros to 4096
    data header       int64 offset, int64 size: ``size`` bytes follow, which belong
    data              at ``offset`` of the rebuilt file
    ...               (more data headers and data)
    end marker        a data header with offset -1 and size -1

Every integer is a big-endian int64, whatever the writer's byte order ("for sending
dump data to a different architecture").  Records come in write order, not offset
order, and may overlap: a later record overwrites an earlier one (makedumpfile -E -F
writes its program headers twice).  Bytes no record covers are zeros (a hole of the
rebuilt file); the rebuilt file ends at the end of the record that reaches furthest.

Facts from makedumpfile 1.7.x: ``makedumpfile.h`` (``struct makedumpfile_header``,
``struct makedumpfile_data_header``, ``MAX_SIZE_MDF_HEADER`` 4096,
``TYPE_FLAT_HEADER`` 1, ``VERSION_FLAT_HEADER`` 1, ``END_FLAG_FLAT_HEADER`` -1) and
``makedumpfile.c`` (``write_start_flat_header``, ``write_buffer``,
``write_end_flat_header``; ``makedumpfile -R`` is ``rearrange_dumpdata``: it checks
the signature and the type, not the version, writes each record at its offset, and
fails unless the stream ends with the end marker).

The only definition of the layout in pykexec: the stream writer
(:class:`pykexec.vmcore.output.FlattenedOutput`), the reader
(:mod:`pykexec.vmcore.flattened`) and the reassembly (:mod:`pykexec.vmcore.reassemble`)
use it.  ``tests/unit/test_flattened_layouts.py`` pins it against bytes makedumpfile wrote.
"""

from __future__ import annotations

import struct

FLAT_SIGNATURE = b"makedumpfile"
#: The signature's field: its 12 characters rounded up to 8 bytes (SIZE_SIG_MDF).
SIGNATURE_FIELD = 16
FLAT_TYPE = 1
FLAT_VERSION = 1
#: The start header is padded to this many bytes (MAX_SIZE_MDF_HEADER).
START_HEADER_SIZE = 4096
#: struct makedumpfile_header: signature, type, version.
START_HEADER_FMT = struct.Struct(f">{SIGNATURE_FIELD}sqq")
#: struct makedumpfile_data_header: offset in the rebuilt file, size of the data that follows.
DATA_HEADER_FMT = struct.Struct(">qq")
END_FLAG = -1
END_MARKER = DATA_HEADER_FMT.pack(END_FLAG, END_FLAG)


def pack_start_header() -> bytes:
    """The 4096-byte start header makedumpfile writes (type 1, version 1)."""
    head = START_HEADER_FMT.pack(FLAT_SIGNATURE, FLAT_TYPE, FLAT_VERSION)
    return head + bytes(START_HEADER_SIZE - len(head))


def is_start_header(raw: bytes | memoryview) -> bool:
    """Whether ``raw`` (at least the first 32 bytes) is a flattened stream's start
    header: the signature (compared as a C string) and type 1, what ``makedumpfile -R``
    checks."""
    if len(raw) < START_HEADER_FMT.size:
        return False
    signature, kind, _version = START_HEADER_FMT.unpack_from(raw)
    return bool(signature.split(b"\0", 1)[0] == FLAT_SIGNATURE and kind == FLAT_TYPE)


def pack_data_header(offset: int, size: int) -> bytes:
    return DATA_HEADER_FMT.pack(offset, size)


def unpack_data_header(raw: bytes | memoryview, at: int = 0) -> tuple[int, int] | None:
    """(offset, size) of the data header at ``at``; None for the end marker; ValueError
    for a negative offset or size, which no writer makes."""
    offset, size = DATA_HEADER_FMT.unpack_from(raw, at)
    if offset == END_FLAG and size == END_FLAG:
        return None
    if offset < 0 or size < 0:
        raise ValueError(f"a record of {size} bytes at offset {offset}")
    return offset, size
