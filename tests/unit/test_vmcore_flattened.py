"""makedumpfile's flattened format on synthetic dumps: the reader (records indexed,
reads by offset with holes, overlaps and streams cut short), ``vmcore save -F`` (the
stream rebuilds the very file save writes, in both formats), every reader on a stream,
and ``vmcore reassemble``.  makedumpfile -R, where installed, rebuilds our streams as we
do.  The real-dump comparisons with makedumpfile are in tests/vm/test_vmcore_flattened_vm.py.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pykexec.layouts import flattened as F
from pykexec.layouts import kdump as L
from pykexec.vmcore.errors import VmcoreError
from pykexec.vmcore.flattened import FlattenedFile
from pykexec.vmcore.kdump import KdumpFile
from pykexec.vmcore.open import open_dump, open_elf
from pykexec.vmcore.reassemble import reassemble
from pykexec.vmcore.save import save

from support.crash_dump import PANIC, synthetic_crash

Records = list[tuple[int, bytes]]


def stream(records: Records, *, end: bool = True) -> bytes:
    return (F.pack_start_header() + b"".join(F.pack_data_header(off, len(data)) + data for off, data in records)
            + (F.END_MARKER if end else b""))


def rebuilt(records: Records) -> bytes:
    """The file makedumpfile -R makes of ``records``: each written in turn, holes as zeros."""
    out = bytearray(max((off + len(data) for off, data in records), default=0))
    for off, data in records:
        out[off:off + len(data)] = data
    return bytes(out)


def stream_records(data: bytes) -> list[tuple[int, int]]:
    found, pos = [], F.START_HEADER_SIZE
    while (record := F.unpack_data_header(data, pos)) is not None:
        found.append(record)
        pos += F.DATA_HEADER_FMT.size + record[1]
    return found


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "pykexec.vmcore.cli", *args], input=stdin, capture_output=True)


# -- the reader ----------------------------------------------------------------------------------

def test_reads_by_offset_with_holes_and_overlaps(tmp_path: Path) -> None:
    records = [(0, b"A" * 10), (20, b"B" * 10), (5, b"C" * 10), (22, b"D" * 2), (100, b"E"), (0, b"F")]
    path = tmp_path / "s.flat"
    path.write_bytes(stream(records))
    expected = rebuilt(records)
    with FlattenedFile(path) as flat:
        assert (flat.size, flat.records, flat.complete) == (101, 6, True)
        for offset in range(0, 105):
            for size in (1, 3, 17, 200):
                assert flat.pread(size, offset) == expected[offset:offset + size], (offset, size)
        assert isinstance(flat.view(24, 6), memoryview)   # inside one record: a view of the stream
        buf = bytearray(8)
        assert flat.readinto(memoryview(buf), 97) == 4 and bytes(buf[:4]) == expected[97:]


def test_random_streams_rebuild_as_makedumpfile_does(tmp_path: Path) -> None:
    rng = random.Random(14)
    makedumpfile = shutil.which("makedumpfile")
    for n in range(20):
        records = [(rng.randrange(0, 5000), rng.randbytes(rng.randrange(1, 700))) for _ in range(rng.randrange(1, 40))]
        path = tmp_path / f"{n}.flat"
        path.write_bytes(stream(records))
        expected = rebuilt(records)
        with FlattenedFile(path) as flat:
            assert flat.size == len(expected) and flat.pread(len(expected) + 10, 0) == expected
            for _ in range(50):
                offset, size = rng.randrange(0, len(expected)), rng.randrange(1, 900)
                assert flat.pread(size, offset) == expected[offset:offset + size]
        ours = tmp_path / f"{n}.ours"
        with open(path, "rb") as src, open(ours, "wb") as dst:
            assert reassemble(src.fileno(), dst.fileno()).complete
        assert ours.read_bytes() == expected
        if makedumpfile:
            theirs = tmp_path / f"{n}.theirs"
            with open(path, "rb") as src:
                subprocess.run([makedumpfile, "-R", str(theirs)], stdin=src, check=True, capture_output=True)
            assert theirs.read_bytes() == expected


def test_stream_cut_short_serves_what_arrived(tmp_path: Path) -> None:
    records = [(0, b"head" * 4), (4096, bytes(range(256)) * 4)]
    whole = stream(records, end=False)
    path = tmp_path / "cut.flat"
    path.write_bytes(whole[:-100])   # the second record lost its last 100 bytes
    with FlattenedFile(path) as flat:
        assert not flat.complete and flat.records == 2 and flat.size == 4096 + 1024 - 100
        assert flat.pread(16, 0) == b"head" * 4 and flat.pread(2000, 4096) == (bytes(range(256)) * 4)[:924]


def test_not_a_stream_and_corrupt_records(tmp_path: Path) -> None:
    cases = {
        "short": (b"makedumpfile" + bytes(100), "cut short in its 4096-byte start header"),
        "type": (F.pack_start_header().replace((1).to_bytes(8, "big"), (2).to_bytes(8, "big"), 1),
                 "not a flattened makedumpfile stream"),
        "negative": (F.pack_start_header() + F.pack_data_header(-5, 3) + b"abc", "corrupt flattened stream"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(VmcoreError, match=message):
            FlattenedFile(path)
    empty = tmp_path / "empty.flat"
    empty.write_bytes(stream([]))
    with pytest.raises(VmcoreError, match="neither an ELF core nor a kdump-compressed dump .it holds no data"):
        open_dump(empty)


# -- vmcore save -F ------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, compress", [("kdump", "zstd"), ("kdump", "zlib"), ("kdump", "none"), ("elf", "zstd")])
def test_stream_rebuilds_the_file_save_writes(tmp_path: Path, fmt: str, compress: str) -> None:
    src = synthetic_crash(tmp_path / "vmcore")
    direct = tmp_path / "direct"
    flat = tmp_path / "dump.flat"
    a = save(str(src), str(direct), fmt=fmt, compress=compress, dump_level=1, progress=False)
    with open(flat, "wb") as f:
        b = save(str(src), f.fileno(), fmt=fmt, compress=compress, dump_level=1, progress=False)
    assert not a.incomplete and not b.incomplete and a.saved_pages == b.saved_pages
    data = flat.read_bytes()
    assert b.out_bytes == len(data) and data.endswith(F.END_MARKER)
    spans = sorted(stream_records(data))
    assert all(x[0] + x[1] <= y[0] for x, y in zip(spans, spans[1:])), "records overlap: crash could misread"
    rebuilt_file = tmp_path / "rebuilt"
    with open(flat, "rb") as s, open(rebuilt_file, "wb") as d:
        assert reassemble(s.fileno(), d.fileno()).complete
    assert rebuilt_file.read_bytes() == direct.read_bytes()
    # Every reader reads the stream as it reads the file.
    with open_dump(direct) as plain, open_dump(flat) as streamed:
        assert type(plain) is type(streamed) and plain.notes == streamed.notes
        assert streamed.vmcoreinfo is not None and plain.vmcoreinfo is not None
        assert streamed.vmcoreinfo.raw == plain.vmcoreinfo.raw
    if fmt == "kdump":
        with KdumpFile(direct) as k, open_dump(flat) as core:
            kf = core._file  # type: ignore[union-attr]
            assert not kf.incomplete and kf.header.status == k.header.status
            assert all(kf.read_page(p) == k.read_page(p) for p in k.saved_pfns())
    else:
        with open_dump(direct) as plain, open_dump(flat) as streamed:
            for seg in plain.loads:
                assert streamed.read(seg.paddr, seg.memsz, physical=True) == plain.read(seg.paddr, seg.memsz,
                                                                                       physical=True)


def test_truncated_source_streams_a_flagged_header_then_the_end(tmp_path: Path) -> None:
    src = synthetic_crash(tmp_path / "vmcore")
    with open(src, "r+b") as f:
        f.truncate(src.stat().st_size - 100 * 4096)
    direct, flat = tmp_path / "direct", tmp_path / "dump.flat"
    a = save(str(src), str(direct), dump_level=1, progress=False)
    with open(flat, "wb") as f:
        b = save(str(src), f.fileno(), dump_level=1, progress=False)
    assert a.incomplete and b.incomplete
    data = flat.read_bytes()
    offsets = [off for off, _ in stream_records(data)]
    assert offsets.count(0) == 2 and data.endswith(F.END_MARKER)  # the header again, flagged, last
    with open(flat, "rb") as s, open(tmp_path / "rebuilt", "wb") as d:
        reassemble(s.fileno(), d.fileno())
    assert (tmp_path / "rebuilt").read_bytes() == direct.read_bytes()
    with open_dump(flat) as core:
        assert core._file.header.status & L.DUMP_DH_COMPRESSED_INCOMPLETE  # type: ignore[union-attr]


def test_stream_through_a_pipe_and_a_reader_that_goes_away(tmp_path: Path) -> None:
    src = synthetic_crash(tmp_path / "vmcore")
    got = bytearray()
    read_fd, write_fd = os.pipe()

    def reader(limit: int | None) -> None:
        while limit is None or len(got) < limit:
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            got.extend(chunk)
        os.close(read_fd)

    thread = threading.Thread(target=reader, args=(None,))
    thread.start()
    result = save(str(src), write_fd, dump_level=1, progress=False)
    os.close(write_fd)
    thread.join()
    assert not result.incomplete and result.out_bytes == len(got) and bytes(got).endswith(F.END_MARKER)

    got.clear()
    read_fd, write_fd = os.pipe()
    thread = threading.Thread(target=reader, args=(100_000,))   # ssh dies in the pages
    thread.start()
    result = save(str(src), write_fd, dump_level=1, progress=False)
    os.close(write_fd)
    thread.join()
    assert "Broken pipe" in result.incomplete


def test_cli_writes_to_standard_output(tmp_path: Path) -> None:
    from pykexec.vmcore.cli import parse_save_args

    src = synthetic_crash(tmp_path / "vmcore")
    assert parse_save_args(["-F", "-c", "a"]) == {"compress": "zlib", "src": "a", "dst": "-"}
    assert parse_save_args(["-F", "a", "-"]) == parse_save_args(["a", "-"]) == {"src": "a", "dst": "-"}
    res = cli("save", "-F", str(src), str(tmp_path / "x"))
    assert res.returncode == 2 and b"-F writes to standard output" in res.stderr and not (tmp_path / "x").exists()
    res = cli("save", "-F", "-E", "-d", "1", str(src))
    assert res.returncode == 0 and res.stdout[:12] == b"makedumpfile", res.stderr
    flat = tmp_path / "elf.flat"
    flat.write_bytes(res.stdout)
    for dump in (src, flat):   # the log of the stream is the log of the dump
        out = cli("dmesg", str(dump))
        assert out.returncode == 0 and PANIC in out.stdout, out.stderr
    assert cli("dmesg", str(flat)).stdout == cli("dmesg", str(src)).stdout
    info = cli("info", str(flat))
    assert info.returncode == 0 and b"elf64 x86_64 dump" in info.stdout


def test_save_reads_a_flattened_elf_source(tmp_path: Path) -> None:
    """A flattened ELF core as SRC gives the file its rebuilt core gives."""
    src = synthetic_crash(tmp_path / "vmcore")
    flat = tmp_path / "elf.flat"
    with open(flat, "wb") as f:
        save(str(src), f.fileno(), fmt="elf", dump_level=0, progress=False)
    with open(flat, "rb") as s, open(tmp_path / "elf", "wb") as d:
        reassemble(s.fileno(), d.fileno())
    save(str(flat), str(tmp_path / "from-stream"), dump_level=1, progress=False)
    save(str(tmp_path / "elf"), str(tmp_path / "from-file"), dump_level=1, progress=False)
    assert (tmp_path / "from-stream").read_bytes() == (tmp_path / "from-file").read_bytes()
    kdump_flat = tmp_path / "kdump.flat"
    with open(kdump_flat, "wb") as f:
        save(str(src), f.fileno(), dump_level=1, progress=False)
    with pytest.raises(VmcoreError, match="flattened stream of a kdump-compressed dump: vmcore save reads ELF"):
        open_elf(kdump_flat)


# -- vmcore reassemble ---------------------------------------------------------------------------

def test_reassemble_command(tmp_path: Path) -> None:
    src = synthetic_crash(tmp_path / "vmcore")
    direct = tmp_path / "direct"
    save(str(src), str(direct), dump_level=1, progress=False)
    data = cli("save", "-F", "-d", "1", str(src)).stdout
    (tmp_path / "s.flat").write_bytes(data)

    res = cli("reassemble", str(tmp_path / "out1"), stdin=data)            # standard input
    assert res.returncode == 0 and res.stderr == b"" and (tmp_path / "out1").read_bytes() == direct.read_bytes()
    res = cli("reassemble", str(tmp_path / "s.flat"), str(tmp_path / "out2"))
    assert res.returncode == 0 and (tmp_path / "out2").read_bytes() == direct.read_bytes()
    res = cli("reassemble", "-", str(tmp_path / "out2"), stdin=data)
    assert res.returncode == 2 and b"exists (use --force" in res.stderr
    assert cli("reassemble", "--force", "-", str(tmp_path / "out2"), stdin=data).returncode == 0
    res = cli("reassemble", "-f", str(tmp_path / "s.flat"), str(tmp_path / "s.flat"))
    assert res.returncode == 2 and b"same file as SRC" in res.stderr

    # Cut short: what arrived, flagged incomplete in the dump's header, exit status 1.
    res = cli("reassemble", str(tmp_path / "cut"), stdin=data[:len(data) // 2])
    assert res.returncode == 1 and b"INCOMPLETE" in res.stderr and b"flagged incomplete" in res.stderr
    with KdumpFile(tmp_path / "cut") as k:
        assert k.incomplete and k.header.status & L.DUMP_DH_COMPRESSED_INCOMPLETE
    res = cli("reassemble", str(tmp_path / "bad"), stdin=b"KDUMP   " + bytes(5000))
    assert res.returncode == 1 and res.stderr.count(b"\n") == 1 and b"not a flattened makedumpfile stream" in res.stderr
    assert cli("reassemble", "--help").stdout.startswith(b"usage: pykexec vmcore reassemble")
