"""Reading an initramfs as the kernel unpacks it: newc archives, compressed or not, one
after another (written by the test bed's own cpio writer, an independent implementation)."""

from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path

import pytest
import zstandard

from pykexec.errors import InputError
from pykexec.kdump.cpio_reader import read_initramfs, read_initramfs_file, unpacked_bytes
from pykexec.layouts import cpio as C

from support.testbed.cpio import CpioWriter, cpio_bytes


def microcode(w: CpioWriter) -> None:
    w.file("kernel/x86/microcode/GenuineIntel.bin", b"\x01" * 10)


def main_part(w: CpioWriter) -> None:
    w.file("init", b"#!/usr/bin/python3\n", 0o755)
    w.file("usr/lib/python3/dist-packages/pykexec/__init__.py", b"x" * 5000)
    w.symlink("bin", "usr/bin")
    w.chardev("dev/console", 5, 1)
    w.file("lib/modules/6.1.0/kernel/drivers/block/virtio_blk.ko", b"\x7fELF" + bytes(100))


def test_plain_archive() -> None:
    entries = read_initramfs(cpio_bytes(main_part, compress=False))
    by_name = {e.name: e for e in entries}
    assert by_name["init"].is_file and by_name["init"].size == 19 and by_name["init"].mode & 0o777 == 0o755
    assert by_name["bin"].is_symlink and by_name["usr"].is_dir
    assert by_name["dev/console"].mode & 0o170000 == 0o020000 and by_name["dev/console"].size == 0
    assert all(e.data is None for e in entries)
    assert "TRAILER!!!" not in by_name


@pytest.mark.parametrize("compress", [
    lambda b: gzip.compress(b, mtime=0), bz2.compress, lambda b: lzma.compress(b, lzma.FORMAT_XZ),
    lambda b: lzma.compress(b, lzma.FORMAT_ALONE), lambda b: zstandard.ZstdCompressor().compress(b),
], ids=["gzip", "bzip2", "xz", "lzma", "zstd"])
def test_early_cpio_then_compressed_main_archive(compress: object) -> None:
    early = cpio_bytes(microcode, compress=False)
    main = compress(cpio_bytes(main_part, compress=False))  # type: ignore[operator]
    entries = read_initramfs(early + main + bytes(8) + early, want=lambda name: name == "init")
    names = [e.name for e in entries]
    assert names[:4] == ["kernel", "kernel/x86", "kernel/x86/microcode", "kernel/x86/microcode/GenuineIntel.bin"]
    assert "lib/modules/6.1.0/kernel/drivers/block/virtio_blk.ko" in names
    assert names.count("kernel/x86/microcode/GenuineIntel.bin") == 2
    assert next(e for e in entries if e.name == "init").data == b"#!/usr/bin/python3\n"


def test_unpacked_bytes_counts_whole_pages_once_per_name() -> None:
    entries = read_initramfs(cpio_bytes(main_part, compress=True) + cpio_bytes(main_part, compress=False))
    # init (1 page), __init__.py (2 pages), the bin symlink (1 page), virtio_blk.ko (1 page)
    assert unpacked_bytes(entries) == 5 * 4096


def test_pack_entry_is_what_the_testbed_writer_writes() -> None:
    def one(w: CpioWriter) -> None:
        w.file("init", b"hello", 0o755)

    ours = C.pack_entry(C.NewcHeader(1, 0o100755, 0, 0, 1, 0, 5, 0, 0, 0, 0, 5, 0), "init", b"hello")
    assert cpio_bytes(one, compress=False).startswith(ours)
    with pytest.raises(ValueError, match="namesize/filesize"):
        C.pack_entry(C.NewcHeader(1, 0o100755, 0, 0, 1, 0, 4, 0, 0, 0, 0, 5, 0), "init", b"hello")


@pytest.mark.parametrize("data, message", [
    (b"070701" + b"0" * 50, "cut short"),
    (b"070701" + b"Z" * 104, "not hex digits"),
    (b"\x02\x21" + bytes(20), "a lz4-compressed archive at offset 0"),
    (b"junk", "neither a cpio archive nor a compressed one at offset 0"),
    (gzip.compress(b"070701", mtime=0)[:-6], "gzip archive at offset 0 is cut short"),
    (b"\x1f\x8b" + bytes(20), "gzip archive at offset 0 is corrupt"),
    (b"\x28\xb5\x2f\xfd" + b"\xff" * 20, "zstd archive at offset 0 is corrupt"),
])
def test_broken_archives(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "initrd.img"
    path.write_bytes(data)
    with pytest.raises(InputError, match=message):
        read_initramfs_file(path)


def test_data_past_the_end() -> None:
    good = cpio_bytes(main_part, compress=False)
    with pytest.raises(ValueError, match="runs past the end"):
        read_initramfs(good[:130])


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read initramfs .*absent: No such file"):
        read_initramfs_file(tmp_path / "absent")
