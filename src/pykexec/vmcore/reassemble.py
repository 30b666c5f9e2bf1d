"""``pykexec vmcore reassemble [SRC|-] DST``: the file a flattened stream describes,
rebuilt as ``makedumpfile -R DST < SRC`` rebuilds it: every record written at its
offset, in stream order (a later record wins), the rest holes.  Layout in
:mod:`pykexec.layouts.flattened`.

Unlike makedumpfile -R, a stream cut short (no end marker: a capture killed, a
connection lost) still gives a file with what arrived, and the dump in it is flagged
incomplete (kdump-compressed: ``DUMP_DH_COMPRESSED_INCOMPLETE`` in its header; ELF:
``e_flags`` 1, as makedumpfile flags an incomplete ELF dump), so that it is never
taken for a whole one; the exit status is then 1.
"""

from __future__ import annotations

import os
import sys

from pykexec.errors import KexecError, UsageError, report
from pykexec.layouts import flattened as F
from pykexec.vmcore.errors import VmcoreError, open_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from pykexec.argv import Parser

DESCRIPTION = """\
Rebuild a dump file (kdump-compressed or ELF) from a flattened stream, as written by
pykexec vmcore save -F or makedumpfile -F, reading SRC or, without it or with -,
standard input: what makedumpfile -R DST < SRC does.  pykexec vmcore and crash
also read a stream as it is."""

EPILOG = """\
A stream cut short gives a file with what arrived, its dump flagged incomplete,
and the exit status is 1."""

#: Bytes copied per read.
CHUNK = 1 << 20


class Reassembly:
    """What :func:`reassemble` did (a plain class: dataclasses is slow to import)."""

    def __init__(self) -> None:
        self.records = 0       # data records written
        self.data_bytes = 0    # bytes of their data
        self.size = 0          # the rebuilt file's size
        self.complete = False  # the end marker was read


def _read_full(fd: int, view: memoryview) -> int:
    """Fill ``view`` from ``fd`` (a pipe returns little at a time); fewer bytes only at the end."""
    got = 0
    while got < len(view):
        try:
            n = os.readv(fd, [view[got:]])
        except OSError as err:
            raise VmcoreError(f"cannot read the stream: {err.strerror}") from None
        if n == 0:
            break
        got += n
    return got


def reassemble(src_fd: int, dst_fd: int, *, limit: int | None = None) -> Reassembly:
    """Read the stream on ``src_fd`` and write the file it describes to ``dst_fd``;
    VmcoreError if it is no flattened stream or a record is corrupt (or, with ``limit``,
    reaches past that offset of the file)."""
    from pykexec.vmcore.output import pwrite_all

    result = Reassembly()
    buf = bytearray(max(CHUNK, F.START_HEADER_SIZE))
    view = memoryview(buf)
    got = _read_full(src_fd, view[:F.START_HEADER_SIZE])
    if got < F.START_HEADER_SIZE or not F.is_start_header(view):
        raise VmcoreError("not a flattened makedumpfile stream (no start header with the signature "
                          f"{F.FLAT_SIGNATURE.decode()!r} and type {F.FLAT_TYPE})")
    head = view[:F.DATA_HEADER_FMT.size]
    while _read_full(src_fd, head) == len(head):
        try:
            record = F.unpack_data_header(head)
        except ValueError as err:
            raise VmcoreError(f"corrupt flattened stream: {err} (record {result.records + 1})") from None
        if record is None:
            result.complete = True
            break
        at, left = record
        if limit is not None and at + left > limit:
            raise VmcoreError(f"corrupt flattened stream: record {result.records + 1} reaches offset "
                              f"{at + left}, past {limit}")
        result.records += 1
        while left:
            want = min(left, len(buf))
            n = _read_full(src_fd, view[:want])
            pwrite_all(dst_fd, view[:n], at)
            at, left = at + n, left - n
            result.data_bytes += n
            result.size = max(result.size, at)
            if n < want:
                return result  # cut short in this record's data
    return result


def flag_incomplete(path: str) -> bool:
    """Mark the dump in the file ``path`` incomplete as its format does; False if it has
    no header to mark (the stream stopped before it)."""
    from pykexec.layouts import elf as E
    from pykexec.layouts import kdump as L

    fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    try:
        head = os.pread(fd, L.ctypes.sizeof(L.DiskDumpHeader), 0)
        if head[:len(L.KDUMP_SIGNATURE)] == L.KDUMP_SIGNATURE and len(head) == L.ctypes.sizeof(L.DiskDumpHeader):
            at = L.DiskDumpHeader.status.offset
            status = int.from_bytes(head[at:at + 4], "little") | L.DUMP_DH_COMPRESSED_INCOMPLETE
            os.pwrite(fd, status.to_bytes(4, "little"), at)
        elif head[:len(E.ELFMAG)] == E.ELFMAG and len(head) >= E.EHDR64_FMT.size:
            os.pwrite(fd, (1).to_bytes(4, "little"), E.Elf64_Ehdr.e_flags.offset)
        else:
            return False
        os.fsync(fd)
        return True
    finally:
        os.close(fd)


def command(argv: Sequence[str], parser: Parser) -> int:
    """``pykexec vmcore reassemble ...`` with ``parser`` (its usage and help); returns the exit status."""
    from pykexec.vmcore.output import STDOUT, create

    parser.add_argument("-f", "--force", action="store_true", help="overwrite DST if it exists")
    parser.add_argument("operands", nargs="*", metavar="[SRC|-] DST",
                        help="the stream (default: standard input) and the file to write")
    try:
        args = parser.parse_anywhere(argv)
        if args.help:
            sys.stdout.write(parser.format_help())
            return 0
        if not 1 <= len(args.operands) <= 2:
            raise UsageError("expected [SRC] DST")
        src, dst = ([STDOUT] + args.operands)[-2:]
        if src == STDOUT:
            if sys.stdin.isatty():
                raise UsageError("standard input is a terminal: give SRC, or pipe a stream in")
            src_fd = 0
        else:
            from pykexec.vmcore.save import check_paths

            check_paths(src, dst, args.force)
            try:
                src_fd = os.open(src, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError as err:
                raise open_error(src, err) from None
        try:
            dst_fd = create(dst, args.force)
            try:
                result = reassemble(src_fd, dst_fd)
                os.fsync(dst_fd)
                flagged = not result.complete and flag_incomplete(dst)
            except OSError as err:
                raise VmcoreError(f"{dst}: cannot write: {err.strerror}") from None
            finally:
                os.close(dst_fd)
        finally:
            if src_fd:
                os.close(src_fd)
    except KexecError as err:
        return report(err, "pykexec vmcore reassemble")
    if not result.complete:
        sys.stderr.write(f"pykexec: {dst} is INCOMPLETE: the stream ends before its end marker (cut short after "
                         f"{result.records} records, {result.size} bytes)"
                         + (", flagged incomplete\n" if flagged else "; no dump header arrived\n"))
        return 1
    if sys.stderr.isatty():
        sys.stderr.write(f"pykexec: rebuilt {dst}: {result.size} bytes from {result.records} records\n")
    return 0
