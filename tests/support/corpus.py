"""The corpus of broken inputs, generated deterministically from the unit tests'
synthetic builders (no binary blobs in the repository).

``python -m support.corpus OUTDIR`` writes every case's files to OUTDIR and prints
one line per case: its name and the pykexec command line that exercises it. The test
(tests/corpus/test_corpus.py) runs each through the real CLI and checks the one-line message.

Each case is (name, argv, expected): argv uses ``{dir}`` for OUTDIR; ``expected`` is a
substring the one-line error must contain, so that a case cannot pass by failing for
some other reason. Every kexec command line has --machine and --dry-run: nothing is ever
loaded; the rest are ``vmcore`` commands, which only read.
"""

from __future__ import annotations

import gzip
import json
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

from pykexec.layouts.elf import EHDR64_FMT, PHDR64_FMT, PT_NOTE, pack_note

from support.multiboot_synth import MB1_MAGIC, elf32, image_body, mb1_header, mb2_elf, htag, xen_like
from support.synth_images import (MACHINE_1G, SIGNATURE, make_bzimage, make_elf_vmlinux,
                                  make_kernel_shaped_bzimage, with_header_field)
from support.vmcore_synth import (DIRECT_MAP, Memory, Region, base_vmcoreinfo, lockless_log, make_msgs,
                                  structured_log, write_core)

Case = tuple[str, list[str], str]
CRASH_1G = {**MACHINE_1G, "crash_kernel": {"start": "0x20000000", "end": "0x2fffffff"}}
DRY = ["--dry-run", "--machine", "{dir}/machine.json"]


def _patch(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def bzimage_cases(d: Path) -> list[Case]:
    good = make_bzimage(body=b"\x90" * 0x1000)
    kernel_shaped = make_kernel_shaped_bzimage()
    files = {
        "bz-truncated-header": good[:0x210],
        "bz-truncated-after-setup": good[:5 * 512],
        "bz-bad-setup-sects": _patch(good, 0x1F1, "<B", 200),
        "bz-no-hdrs": _patch(good, 0x202, "<I", 0),
        "bz-bad-boot-flag": _patch(good, 0x1FE, "<H", 0x1234),
        "bz-protocol-2.00": make_bzimage(version=0x0200),
        "bz-zimage": make_bzimage(loadflags=0),
        "bz-no-64bit": make_bzimage(xloadflags=0),
        "bz-alignment-not-pow2": make_bzimage(kernel_alignment=0x300000),
        "bz-alignment-zero": make_bzimage(kernel_alignment=0),
        "bz-init-size-absurd": make_bzimage(init_size=0xFFFFFFFF),
        "bz-cmdline-size-8": make_bzimage(cmdline_size=8),
        "bz-fixed-address-outside-ram": make_bzimage(relocatable=0, pref_address=0x80000000),
        "bz-cut-short": kernel_shaped[:0x1800],
        "bz-payload-outside": with_header_field(kernel_shaped, "payload_length", 0x100000),
        "bz-payload-bad-magic": make_kernel_shaped_bzimage(b"\0" * 0x1000),
        "bz-kernel-shaped": kernel_shaped,
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    return [
        ("bz-truncated-header", DRY + ["-l", "{dir}/bz-truncated-header"], "too short for a bzImage"),
        ("bz-truncated-after-setup", DRY + ["-l", "{dir}/bz-truncated-after-setup"], "beyond the end of the file"),
        ("bz-bad-setup-sects", DRY + ["-t", "bzImage64", "-l", "{dir}/bz-bad-setup-sects"], "setup_sects=200"),
        ("bz-no-hdrs", DRY + ["-t", "bzImage64", "-l", "{dir}/bz-no-hdrs"], "no 'HdrS' signature"),
        ("bz-bad-boot-flag", DRY + ["-t", "bzImage64", "-l", "{dir}/bz-bad-boot-flag"], "boot flag"),
        ("bz-protocol-2.00", DRY + ["-t", "bzImage64", "-l", "{dir}/bz-protocol-2.00"], "older than 2.12"),
        ("bz-zimage", DRY + ["-t", "bzImage64", "-l", "{dir}/bz-zimage"], "zImage loaded low"),
        ("bz-no-64bit", DRY + ["-t", "bzImage64", "-l", "{dir}/bz-no-64bit"], "no 64-bit entry point"),
        ("bz-alignment-not-pow2", DRY + ["-t", "bzImage64", "-l", "{dir}/bz-alignment-not-pow2"],
         "not a power of two"),
        ("bz-alignment-zero", DRY + ["-l", "{dir}/bz-alignment-zero"], "kernel_alignment 0x0"),
        ("bz-init-size-absurd", DRY + ["-c", "-l", "{dir}/bz-init-size-absurd"], "kernel"),
        ("bz-cmdline-size-8", DRY + ["-c", "--append", "console=ttyS0", "-l", "{dir}/bz-cmdline-size-8"],
         "command line"),
        ("bz-fixed-address-outside-ram", DRY + ["-c", "-l", "{dir}/bz-fixed-address-outside-ram"], "0x80000000"),
        ("bz-cut-short", DRY + ["-c", "-l", "{dir}/bz-cut-short"],
         f"bz-cut-short: bzImage cut short: the setup header says {len(kernel_shaped) - len(SIGNATURE)} bytes, "
         "the file has 6144"),
        ("bz-payload-outside", DRY + ["-c", "-l", "{dir}/bz-payload-outside"],
         "payload_length 0x100000) past the end of the"),
        ("bz-payload-bad-magic", DRY + ["-c", "-l", "{dir}/bz-payload-bad-magic"],
         "starts with 00000000: neither a compression Linux decompresses"),
        ("bz-cmdline-100k", DRY + ["-c", "--append", "x" * 100_000, "-l", "{dir}/bz-kernel-shaped"],
         "command line is 100000 bytes; this kernel accepts at most 2047"),
        ("bz-crash-cmdline-over", ["--dry-run", "--machine", "{dir}/crash-machine.json", "-c", "--append", "x" * 2040,
                                   "-p", "{dir}/bz-kernel-shaped"],
         "command line with the crash kernel's additions is"),
    ]


def elf_cases(d: Path) -> list[Case]:
    good = make_elf_vmlinux([(0x1000000, b"\x90" * 64, 0x2000)], 0x1000000)
    files = {
        "elf-phnum-huge": _patch(good, 56, "<H", 0xFFFF),
        "elf-phoff-beyond-file": _patch(good, 32, "<Q", 1 << 40),
        "elf-filesz-beyond-file": _patch(good, 64 + 32, "<Q", 0x100000),
        "elf-overlapping-loads": make_elf_vmlinux([(0x1000000, b"\x90" * 64, 0x3000),
                                                   (0x1002000, b"\xcc" * 64, 0x1000)], 0x1000000),
        "elf-entry-outside": make_elf_vmlinux([(0x1000000, b"\x90" * 64, 0x2000)], 0x5000000),
        "elf-no-loads": _patch(good, 64, "<I", 4),
        "elf-aarch64": _patch(good, 18, "<H", 183),
        "elf-truncated": good[:40],
        # A PT_LOAD of 1 GiB of bss, and one more byte in its last page: the zeros
        # between them would have been written out (bug: a 1 GiB allocation; with
        # 64-bit sizes, any size).
        "elf-huge-bss-shared-page": make_elf_vmlinux([(0x1000000, b"\x90", (1 << 30) - 0x800),
                                                      (0x1000000 + (1 << 30) - 0x400, b"\xcc", 1)], 0x1000000),
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    return [
        ("elf-phnum-huge", DRY + ["-t", "elf-x86_64", "-l", "{dir}/elf-phnum-huge"], "do not fit in the"),
        ("elf-phoff-beyond-file", DRY + ["-t", "elf-x86_64", "-l", "{dir}/elf-phoff-beyond-file"],
         "do not fit in the"),
        ("elf-filesz-beyond-file", DRY + ["-l", "{dir}/elf-filesz-beyond-file"], "beyond the file or its memsz"),
        ("elf-overlapping-loads", DRY + ["-l", "{dir}/elf-overlapping-loads"], "PT_LOADs overlap at 0x1002000"),
        ("elf-entry-outside", DRY + ["-l", "{dir}/elf-entry-outside"], "entry point 0x5000000 is outside"),
        ("elf-no-loads", DRY + ["-l", "{dir}/elf-no-loads"], "no PT_LOAD segments"),
        ("elf-aarch64", DRY + ["-t", "elf-x86_64", "-l", "{dir}/elf-aarch64"], "not x86_64"),
        ("elf-truncated", DRY + ["-l", "{dir}/elf-truncated"], "cannot determine the image type"),
        ("elf-huge-bss-shared-page", DRY + ["-l", "{dir}/elf-huge-bss-shared-page"], "bytes of zeros precede it"),
    ]


def multiboot_cases(d: Path) -> list[Case]:
    mb1_body = image_body(mb1_header(0x3), None)
    bad_sum = bytearray(mb1_body)
    struct.pack_into("<I", bad_sum, 8 + 8, 0x12345678)
    aout = mb1_header(0x10003, aout=(0x1000108, 0x1000200, 0x1004000, 0x1014000, 0x1000000))  # load above header
    far = bytearray(0x9000) + b"\0" * 0x100
    mb2_far = bytes(far) + mb2_elf()[0x118:0x118 + 24]
    files = {
        "mb1-bad-checksum": elf32([(0x1000000, bytes(bad_sum), 0x4000)], 0x1000000),
        "mb1-aout-inconsistent": elf32([(0x1000000, image_body(aout, None), 0x4000)], 0x1000000),
        "mb1-video-required": elf32([(0x1000000, image_body(mb1_header(0x7), None), 0x4000)], 0x1000000),
        "mb1-below-1mib": elf32([(0x10000, mb1_body, 0x4000)], 0x10000),
        "mb2-unknown-required-tag": mb2_elf(htag(42, b"\0" * 8)),
        "mb2-framebuffer-required": mb2_elf(htag(5, struct.pack("<III", 0, 0, 0))),
        "mb2-tag-outside-header": mb2_elf(struct.pack("<HHI", 3, 0, 0x1000)),
        "mb2-header-beyond-32k": elf32([(0x1000000, mb2_far, 0x10000)], 0x1000000),
        "mb2-relocatable-below-1mib": mb2_elf(htag(10, struct.pack("<IIII", 0x1000, 0x80000, 0x1000, 1))),
        "xen-gz-truncated": gzip.compress(xen_like(), mtime=0)[:200],
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    # 1 GiB + 1 MiB of zeros: refused from the gzip trailer's ISIZE, before inflating.
    bomb = zlib.compressobj(1, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    with open(d / "gzip-bomb", "wb") as f:
        for _ in range(1025):
            f.write(bomb.compress(chunk))
        f.write(bomb.flush())
    return [
        ("mb1-bad-checksum", DRY + ["-t", "multiboot-x86", "-l", "{dir}/mb1-bad-checksum"], "bad checksum"),
        ("mb1-aout-inconsistent", DRY + ["-t", "multiboot-x86", "-l", "{dir}/mb1-aout-inconsistent"],
         "is above header_addr"),
        ("mb1-video-required", DRY + ["-t", "multiboot-x86", "-l", "{dir}/mb1-video-required"], "video mode"),
        ("mb1-below-1mib", DRY + ["-t", "multiboot-x86", "-l", "{dir}/mb1-below-1mib"], "inside the first MiB"),
        ("mb2-unknown-required-tag", DRY + ["-l", "{dir}/mb2-unknown-required-tag"], "unknown type 42"),
        ("mb2-framebuffer-required", DRY + ["-l", "{dir}/mb2-framebuffer-required"], "FRAMEBUFFER"),
        ("mb2-tag-outside-header", DRY + ["-l", "{dir}/mb2-tag-outside-header"], "outside the header"),
        ("mb2-header-beyond-32k", DRY + ["-t", "multiboot2-x86", "-l", "{dir}/mb2-header-beyond-32k"],
         "no Multiboot 2 header in the first 32 KiB"),
        ("mb2-relocatable-below-1mib", DRY + ["-l", "{dir}/mb2-relocatable-below-1mib"],
         "has no room between 1 MiB and 4 GiB"),
        ("xen-gz-truncated", DRY + ["-l", "{dir}/xen-gz-truncated"], "gzip data is truncated"),
        ("gzip-bomb", DRY + ["-l", "{dir}/gzip-bomb"], "decompresses to more than 1024 MiB"),
    ]


def machine_cases(d: Path) -> list[Case]:
    (d / "bzImage").write_bytes(make_bzimage(body=b"\x90" * 0x1000))
    texts = {
        "m-missing-memory": json.dumps({"cmdline": ""}),
        "m-overlap": json.dumps({"memory": [{"start": "0x0", "end": "0x1fffff"},
                                             {"start": "0x100000", "end": "0x2fffff", "type": "Reserved"}]}),
        "m-bad-number": json.dumps({"memory": [{"start": "0xzz", "end": "0x1fffff"}]}),
        "m-huge-number": json.dumps({"memory": [{"start": "0x0", "end": "0x10000000000000000"}]}),
        "m-end-below-start": json.dumps({"memory": [{"start": "0x2000", "end": "0x1000"}]}),
        "m-crash-outside-ram": json.dumps({**MACHINE_1G, "crash_kernel": {"start": "0x80000000", "end": "0x8fffffff"}}),
        "m-unknown-key": json.dumps({**MACHINE_1G, "memroy": []}),
        "m-wrong-type": json.dumps({**MACHINE_1G, "cmdline": 5}),
        "m-bad-memory-type": json.dumps({"memory": [{"start": "0x0", "end": "0x1fffff", "type": "Flash"}]}),
        "m-bool-address": json.dumps({"memory": [{"start": True, "end": "0x1fffff"}]}),
        "m-not-json": "memory: [0, 1]\n",
        "m-empty": "",
        "m-top-level-list": "[]",
        "m-binary": "\udcff",
        "m-newline-key": json.dumps({**MACHINE_1G, "\nbogus": 1}),  # bug: a two-line message
    }
    for name, text in texts.items():
        (d / f"{name}.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    (d / "m-directory.json").mkdir(exist_ok=True)

    def run(name: str) -> list[str]:
        return ["--dry-run", "--machine", f"{{dir}}/{name}.json", "-l", "{dir}/bzImage"]

    return [
        ("m-missing-memory", run("m-missing-memory"), "\"memory\" must be a non-empty list"),
        ("m-overlap", run("m-overlap"), "overlap"),
        ("m-bad-number", run("m-bad-number"), "'0xzz' is not a number"),
        ("m-huge-number", run("m-huge-number"), "outside the 64-bit address space"),
        ("m-end-below-start", run("m-end-below-start"), "is below start"),
        ("m-crash-outside-ram", run("m-crash-outside-ram"), "is not inside System RAM"),
        ("m-unknown-key", run("m-unknown-key"), "unknown key(s) memroy"),
        ("m-wrong-type", run("m-wrong-type"), "cmdline must be a string"),
        ("m-bad-memory-type", run("m-bad-memory-type"), "'Flash' is not a memory type"),
        ("m-bool-address", run("m-bool-address"), "expected an address, got True"),
        ("m-not-json", run("m-not-json"), "invalid JSON at line 1"),
        ("m-empty", run("m-empty"), "invalid JSON"),
        ("m-top-level-list", run("m-top-level-list"), "top level must be a JSON object"),
        ("m-binary", run("m-binary"), "not a text file"),
        ("m-directory", run("m-directory"), "is a directory"),
        ("m-newline-key", run("m-newline-key"), "unknown key(s) '\\nbogus'"),
        ("m-missing-file", run("m-no-such-file"), "cannot read machine file"),
    ]


def cli_cases(d: Path) -> list[Case]:
    (d / "machine.json").write_text(json.dumps(MACHINE_1G))
    (d / "crash-machine.json").write_text(json.dumps(CRASH_1G))
    (d / "initrd").write_bytes(b"initrd" * 100)
    (d / "empty").write_bytes(b"")
    (d / "subdir").mkdir(exist_ok=True)
    mb2 = xen_like()
    (d / "xen").write_bytes(mb2)
    return [
        ("cli-missing-kernel", DRY + ["-l", "{dir}/no-such-kernel"], "does not exist"),
        ("cli-kernel-is-directory", DRY + ["-l", "{dir}/subdir"], "is a directory"),
        ("cli-empty-kernel", DRY + ["-l", "{dir}/empty"], "is empty"),
        ("cli-missing-initrd", DRY + ["--initrd", "{dir}/nope", "-l", "{dir}/bzImage"], "does not exist"),
        ("cli-initrd-is-directory", DRY + ["--initrd", "{dir}/subdir", "-l", "{dir}/bzImage"], "is a directory"),
        ("cli-missing-module", DRY + ["--module", "{dir}/nope arg", "-l", "{dir}/xen"], "does not exist"),
        ("cli-module-is-directory", DRY + ["--module", "{dir}/subdir", "-l", "{dir}/xen"], "is a directory"),
        ("cli-load-and-panic", DRY + ["-l", "-p", "{dir}/bzImage"], "-l and -p are exclusive"),
        ("cli-s-and-c", DRY + ["-s", "-c", "-l", "{dir}/bzImage"], "not allowed with argument"),
        ("cli-mem-min-above-max", DRY + ["--mem-min", "0x40000000", "--mem-max", "0x200000", "-l", "{dir}/bzImage"],
         "is above --mem-max"),
        ("cli-mem-max-not-number", DRY + ["--mem-max", "lots", "-l", "{dir}/bzImage"], "is not a number"),
        ("cli-unknown-type", DRY + ["-t", "zImage", "-l", "{dir}/bzImage"], "unknown image type 'zImage'"),
        ("cli-wrong-type", DRY + ["-t", "multiboot2-x86", "-l", "{dir}/bzImage"], "it looks like bzImage64"),
        ("cli-panic-without-crash-region", DRY + ["-p", "{dir}/bzImage"], "no crash kernel region"),
        ("cli-json-without-dry-run", ["--json", "-l", "{dir}/bzImage"], "--json only applies"),
        ("cli-multiboot-as-crash-kernel", ["--dry-run", "--machine", "{dir}/crash-machine.json", "-p", "{dir}/xen"],
         "dom0's kernel must be the first --module"),
        ("cli-multiboot-with-initrd", DRY + ["--initrd", "{dir}/initrd", "-l", "{dir}/xen"], "--initrd is for Linux"),
        ("cli-xen-crash-efi-without-xen", ["--dry-run", "--machine", "{dir}/crash-machine.json", "--xen-crash-efi",
                                           "-p", "{dir}/bzImage"], "runs no Xen"),
        ("cli-nothing-to-do", DRY, "nothing to do"),
        ("cli-unknown-option", DRY + ["--frobnicate", "-l", "{dir}/bzImage"], "unrecognized arguments"),
    ]


def _core_file(path: Path, mem: Memory, lines: list[str], **kw: object) -> None:
    write_core(path, mem, "\n".join(lines) + "\n", **kw)  # type: ignore[arg-type]


def vmcore_cases(d: Path) -> list[Case]:
    mem = Memory.standard(buf_size=0x4000)
    lines, ring = lockless_log(mem, make_msgs(10), count_bits=3, size_bits=9)
    good = d / "vmcore-good"
    _core_file(good, mem, base_vmcoreinfo() + lines)
    data = good.read_bytes()
    notes_off, notes_len = struct.unpack_from("<QQ", data, 64 + 8)[0], struct.unpack_from("<Q", data, 64 + 32)[0]
    (d / "vmcore-truncated-mid-notes").write_bytes(data[:notes_off + notes_len // 2])
    (d / "vmcore-note-size-beyond-segment").write_bytes(_patch(data, notes_off + 4, "<I", 0x10000))
    (d / "vmcore-truncated-header").write_bytes(data[:40])
    (d / "vmcore-not-elf").write_bytes(b"NOTADUMP" + bytes(100))
    (d / "vmcore-phnum-beyond-file").write_bytes(_patch(data, 56, "<H", 0xFFF0))
    (d / "vmcore-cut-short").write_bytes(data[:-0x800])  # the last PT_LOAD loses its end
    m2 = Memory.standard(buf_size=0x4000)
    _core_file(d / "vmcore-no-vmcoreinfo", m2, base_vmcoreinfo(), vmcoreinfo_note=False)
    # prb descriptors claiming 2**26 records and a 2 GiB text ring, in memory the dump lacks.
    m3 = Memory.standard(buf_size=0x4000)
    l3, r3 = lockless_log(m3, make_msgs(5), count_bits=3, size_bits=9)
    m3.pack(r3.prb, "I", 26)
    m3.pack(r3.prb + 48, "I", 31)
    _core_file(d / "vmcore-prb-huge-counts", m3, base_vmcoreinfo() + l3)
    # head_id - tail_id larger than the ring
    m4 = Memory.standard(buf_size=0x4000)
    l4, r4 = lockless_log(m4, make_msgs(5), count_bits=3, size_bits=9)
    m4.pack(r4.prb + 24, "Q", r4.tail_id + 1000)
    _core_file(d / "vmcore-prb-head-past-ring", m4, base_vmcoreinfo() + l4)
    # structured log with an index past the buffer
    m5 = Memory.standard(buf_size=0x4000)
    l5, s5 = structured_log(m5, make_msgs(6), buf_len=512)
    m5.pack(s5.first_idx_sym, "I", 0xFFFFFF)
    _core_file(d / "vmcore-structured-bad-index", m5, base_vmcoreinfo() + l5)
    # 3000 PT_NOTEs over the same 40000 tiny notes (bug: 120 million notes kept).
    notes = pack_note(b"A", 1, b"") * 40000
    phnum = 3000
    at = EHDR64_FMT.size + PHDR64_FMT.size * phnum
    ident = bytes([0x7F, 0x45, 0x4C, 0x46, 2, 1, 1]) + bytes(9)
    ehdr = EHDR64_FMT.pack(ident, 4, 62, 1, 0, EHDR64_FMT.size, 0, 0, EHDR64_FMT.size, PHDR64_FMT.size, phnum, 0, 0, 0)
    phdr = PHDR64_FMT.pack(PT_NOTE, 0, at, 0, 0, len(notes), len(notes), 0)
    (d / "vmcore-note-multiplication").write_bytes(ehdr + phdr * phnum + notes)
    # 100 PT_NOTEs over one note with a 1 MiB desc (bug: 100 MiB of copies; any number).
    big = pack_note(b"CORE", 1, bytes(1 << 20))
    at = EHDR64_FMT.size + PHDR64_FMT.size * 100
    ehdr = EHDR64_FMT.pack(ident, 4, 62, 1, 0, EHDR64_FMT.size, 0, 0, EHDR64_FMT.size, PHDR64_FMT.size, 100, 0, 0, 0)
    phdr = PHDR64_FMT.pack(PT_NOTE, 0, at, 0, 0, len(big), len(big), 0)
    (d / "vmcore-note-bytes-multiplication").write_bytes(ehdr + phdr * 100 + big)
    bad_info = [x for x in lines if not x.startswith("SIZE(printk_ringbuffer)")] + ["SIZE(printk_ringbuffer)=x"]
    _core_file(d / "vmcore-vmcoreinfo-not-number", Memory.standard(buf_size=0x4000), base_vmcoreinfo() + bad_info)
    # CRASHTIME beyond time_t: -T computed a date the platform cannot represent (bug: traceback).
    far = [x for x in base_vmcoreinfo() if not x.startswith("CRASHTIME")] + ["CRASHTIME=99999999999999999999"]
    m6 = Memory.standard(buf_size=0x4000)
    l6, _ = lockless_log(m6, make_msgs(3), count_bits=3, size_bits=9)
    _core_file(d / "vmcore-crashtime-overflow", m6, far + l6)
    dmesg = ["vmcore", "dmesg"]
    return [
        ("vmcore-truncated-mid-notes", dmesg + ["{dir}/vmcore-truncated-mid-notes"],
         "DUMP INCOMPLETE: the file ends at byte 1052, inside its notes"),
        ("vmcore-note-size-beyond-segment", dmesg + ["{dir}/vmcore-note-size-beyond-segment"],
         "runs past the end of its"),
        ("vmcore-truncated-header", dmesg + ["{dir}/vmcore-truncated-header"], "not an ELF file (only 40 bytes)"),
        ("vmcore-not-elf", ["vmcore", "info", "{dir}/vmcore-not-elf"], "ELF"),
        ("vmcore-phnum-beyond-file", dmesg + ["{dir}/vmcore-phnum-beyond-file"],
         "inside its 65520 program headers (nothing to read)"),
        ("vmcore-no-vmcoreinfo", dmesg + ["{dir}/vmcore-no-vmcoreinfo"], "no VMCOREINFO note"),
        ("vmcore-prb-huge-counts", dmesg + ["{dir}/vmcore-prb-huge-counts"], "refusing to assemble"),
        ("vmcore-prb-head-past-ring", dmesg + ["{dir}/vmcore-prb-head-past-ring"], "descriptors between tail and head"),
        ("vmcore-structured-bad-index", dmesg + ["{dir}/vmcore-structured-bad-index"], "log_first_idx=16777215"),
        ("vmcore-note-multiplication", ["vmcore", "info", "{dir}/vmcore-note-multiplication"],
         "more than 131072 notes"),
        ("vmcore-note-bytes-multiplication", ["vmcore", "info", "{dir}/vmcore-note-bytes-multiplication"],
         "implausibly large"),
        ("vmcore-vmcoreinfo-not-number", dmesg + ["{dir}/vmcore-vmcoreinfo-not-number"], "is not a number"),
        ("vmcore-missing-file", dmesg + ["{dir}/no-such-dump"], "no such file"),
        ("vmcore-crashtime-overflow", dmesg + ["-T", "{dir}/vmcore-crashtime-overflow"], "is out of range"),
        ("vmcore-directory", ["vmcore", "info", "{dir}/subdir"], "is a directory"),
        ("vmcore-cut-short", ["vmcore", "info", "{dir}/vmcore-cut-short"],
         "DUMP INCOMPLETE: the file ends at byte 81744, inside PT_LOAD 2 of 2"),
    ]


GROUPS: list[Callable[[Path], list[Case]]] = [cli_cases, bzimage_cases, elf_cases, multiboot_cases, machine_cases,
                                               vmcore_cases]


def build(outdir: Path) -> list[Case]:
    """Write every case's files under ``outdir``; returns the cases."""
    outdir.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    for group in GROUPS:
        cases += group(outdir)
    names = [c[0] for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    return cases


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "corpus-out")
    for name, argv, expected in build(out):
        print(f"{name}: pykexec {' '.join(a.replace('{dir}', str(out)) for a in argv)}")
