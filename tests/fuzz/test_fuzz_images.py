"""Fuzz the image parsers: bzImage, ELF vmlinux, Multiboot 1 and 2, the type table,
gzip'd images and the purgatory blob. Each starts from a valid synthetic image (so that
mutations reach the checks after the magic) and also gets raw bytes."""

from __future__ import annotations

import ctypes
import gzip
import struct

from hypothesis import given
from hypothesis import strategies as st

from support import fuzzlib
from support.fuzzlib import fuzz_settings, mutated, outcome, raw_or_mutated
from support.multiboot_synth import MB1_MAGIC, elf32, image_body, mb1_header, mb2_elf, mb2_header, xen_like
from support.synth_images import MACHINE_1G, make_bzimage, make_elf_vmlinux

from pykexec import images, machine_file
from pykexec.request import LoadRequest
from pykexec.errors import KexecError
from pykexec.images import bzimage, elf, multiboot, multiboot2
from pykexec.layouts import boot_params as bp
from pykexec.plan import LoadPlan

MACHINE = machine_file.from_dict(MACHINE_1G, source="fuzz machine")
CRASH_MACHINE = machine_file.from_dict({**MACHINE_1G, "crash_kernel": {"start": "0x20000000", "end": "0x2fffffff"}},
                                  source="fuzz crash machine")

# Offsets of every setup-header field in the file: where mutations hurt most.
BZ_HOT = tuple(bp.SETUP_HEADER_OFFSET + getattr(bp.SetupHeader, name).offset
               for name, *_ in bp.SetupHeader._fields_)
# ELF64 header fields (type, machine, entry, phoff, shoff, phentsize, phnum, shnum,
# shstrndx) and the first two program headers' fields.
ELF64_HOT = (16, 18, 24, 32, 40, 54, 56, 58, 60, 62) + tuple(64 + k * 56 + f for k in (0, 1)
                                                            for f in (0, 8, 16, 24, 32, 40))
ELF32_HOT = (16, 18, 24, 28, 32, 42, 44, 46, 48, 50) + tuple(52 + f for f in (0, 4, 8, 12, 16, 20))
# Multiboot headers as image_body places them (ELF32 data at 0x100): MB1 at 0x108, MB2 at 0x118.
MB_HOT = ELF32_HOT + tuple(0x108 + 4 * i for i in range(8)) + tuple(0x118 + 4 * i for i in range(16))


def request(kernel: bytes, data: st.DataObject) -> LoadRequest:
    """A LoadRequest with drawn options: crash or not, command line, initrd, window."""
    crash = data.draw(st.booleans(), label="crash")
    initrd = data.draw(st.none() | st.binary(min_size=1, max_size=64), label="initrd")
    mem_min = data.draw(st.sampled_from((0, 0x100000, 0x3FF00000)), label="mem_min")
    mem_max = data.draw(st.sampled_from(((1 << 64) - 1, 0xFFFFFFFF, 0x1FFFFF)), label="mem_max")
    return LoadRequest("fuzz-kernel", kernel, CRASH_MACHINE if crash else MACHINE,
                              cmdline=data.draw(st.text(max_size=40), label="cmdline"),
                              initrd_path="fuzz-initrd" if initrd else None, initrd=initrd, crash=crash,
                              mem_min=mem_min, mem_max=mem_max,
                              backend=data.draw(st.sampled_from(("kexec_load", "kexec_file_load"))))


def probe_and_plan(image_type: images.ImageType, kernel: bytes, data: st.DataObject) -> None:
    """probe never raises; plan returns a LoadPlan or a one-line KexecError."""
    why = outcome(image_type.probe, kernel)
    assert why is None or (isinstance(why, str) and "\n" not in why), repr(why)
    # The request is built inside: LoadRequest refuses --mem-min above --mem-max itself.
    result = outcome(lambda: image_type.plan(request(kernel, data)))
    assert isinstance(result, (LoadPlan, KexecError))
    if why is not None:
        assert isinstance(result, KexecError), "plan accepted an image its probe refused"


# --- bzImage -----------------------------------------------------------------------------

@st.composite
def bzimages(draw: st.DrawFn) -> bytes:
    """make_bzimage with drawn header fields (valid or not), then byte mutations."""
    seed = make_bzimage(
        version=draw(st.sampled_from((0x020C, 0x020F, 0x0200, 0x0210, 0xFFFF))),
        setup_sects=draw(st.sampled_from((0, 1, 4, 30, 255))),
        body=b"\x90" * draw(st.sampled_from((0, 1, 0x200, 0x400))),
        init_size=draw(st.sampled_from((0, 0x1000, 0x800000, 0x7FFFFFFF, 0xFFFFFFFF))),
        kernel_alignment=draw(st.sampled_from((0, 1, 0x1000, 0x200000, 0x300000, 0x80000000))),
        pref_address=draw(st.sampled_from((0, 0x1000000, 0xFFFFFFFFFFFFF000, 0x3FFFF000))),
        xloadflags=draw(st.integers(0, 0xFFFF)),
        loadflags=draw(st.sampled_from((0, bp.LOADED_HIGH, 0xFF))),
        relocatable=draw(st.sampled_from((0, 1))),
        cmdline_size=draw(st.sampled_from((0, 1, 255, 2047, 0xFFFFFFFF))),
        initrd_addr_max=draw(st.sampled_from((0, 0x7FFFFFFF, 0xFFFFFFFF))),
    )
    return draw(raw_or_mutated(seed, BZ_HOT, max_size=0x600))


@fuzz_settings(250)
@given(kernel=bzimages(), data=st.data())
def test_bzimage(kernel: bytes, data: st.DataObject) -> None:
    outcome(bzimage.parse, kernel)
    probe_and_plan(bzimage.BZIMAGE64, kernel, data)


# --- ELF vmlinux -------------------------------------------------------------------------

@st.composite
def elf_vmlinuxes(draw: st.DrawFn) -> bytes:
    loads = draw(st.lists(st.tuples(st.sampled_from((0, 0x1000, 0x1000000, 0x1000800, 0x1001000, 0x7FFFF000)),
                                    st.binary(max_size=32),
                                    st.sampled_from((0, 1, 0x1000, 0x200000, 1 << 40))),
                          min_size=1, max_size=4))
    loads = [(p, b, max(m, len(b)) if draw(st.booleans()) else m) for p, b, m in loads]
    entry = draw(st.sampled_from((0x1000000, 0, 0x1000800, (1 << 64) - 1)))
    return draw(raw_or_mutated(make_elf_vmlinux(loads, entry), ELF64_HOT, max_size=512))


@fuzz_settings(250)
@given(kernel=elf_vmlinuxes(), data=st.data())
def test_elf_vmlinux(kernel: bytes, data: st.DataObject) -> None:
    outcome(elf.load_segments, kernel)
    probe_and_plan(elf.ELF_X86_64, kernel, data)


# --- Multiboot 2 -------------------------------------------------------------------------

_TAG_PAYLOADS = st.one_of(
    st.binary(max_size=24),
    st.lists(st.integers(0, 0xFFFFFFFF), max_size=6).map(lambda xs: struct.pack(f"<{len(xs)}I", *xs)),
    # RELOCATABLE: min, max, align, preference; ADDRESS: header, load, load_end, bss_end
    st.tuples(*(st.sampled_from((0, 0x100000, 0x200000, 0x1000000, 0x1000118, 0x1004000, 0xFFFFFFFF,
                                 0x1001, 3)) for _ in range(4))).map(lambda xs: struct.pack("<4I", *xs)),
)


@st.composite
def mb2_tags(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(1, 12) | st.integers(0, 0xFFFF))
    payload = draw(_TAG_PAYLOADS)
    optional = draw(st.booleans())
    size = 8 + len(payload)
    return struct.pack("<HHI", kind, int(optional), size) + payload + bytes(-size % 8)


@st.composite
def mb2_images(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        seed = xen_like()
    else:
        tags = draw(st.lists(mb2_tags(), max_size=5))
        seed = mb2_elf(*tags, paddr=draw(st.sampled_from((0x1000000, 0x200000, 0x1000, 0xFFFFF000))),
                       memsz=draw(st.sampled_from((0x4000, 0x14000, 0))),
                       entry=draw(st.none() | st.sampled_from((0, 0x1000010, 0xFFFFFFFF))))
    return draw(raw_or_mutated(seed, MB_HOT, max_size=0x400))


@fuzz_settings(250)
@given(kernel=mb2_images(), data=st.data())
def test_multiboot2(kernel: bytes, data: st.DataObject) -> None:
    found = outcome(multiboot2.find_header, kernel)
    if not isinstance(found, KexecError):
        off, h = found
        outcome(multiboot2.header_tags, kernel, off, h.header_length)
        outcome(multiboot2.read_requirements, kernel)
    probe_and_plan(multiboot2.MULTIBOOT2_X86, kernel, data)


# --- Multiboot 1 -------------------------------------------------------------------------

@st.composite
def mb1_images(draw: st.DrawFn) -> bytes:
    flags = draw(st.sampled_from((0x3, 0x10003, 0x10000, 0x4, 0x10007, 0x8000)))
    aout = None
    if flags & 0x10000:
        addr = st.sampled_from((0, 0x100000, 0x1000000, 0x1000108, 0x1004000, 0x1014000, 0xFFFFFFFF, 0x1000000 - 8))
        aout = (draw(addr), draw(addr), draw(addr), draw(addr), draw(addr))
    body = image_body(mb1_header(flags, aout=aout), None)
    seed = elf32([(0x1000000, body, draw(st.sampled_from((0x4000, 0x14000))))], 0x1000000,
                 e_machine=draw(st.sampled_from((3, 62))))
    return draw(raw_or_mutated(seed, MB_HOT, max_size=0x400))


@fuzz_settings(250)
@given(kernel=mb1_images(), data=st.data())
def test_multiboot1(kernel: bytes, data: st.DataObject) -> None:
    outcome(multiboot.find_header, kernel)
    probe_and_plan(multiboot.MULTIBOOT_X86, kernel, data)


# --- the type table and gzip -------------------------------------------------------------

ANY_IMAGE = st.one_of(bzimages(), elf_vmlinuxes(), mb2_images(), mb1_images(), st.binary(max_size=256))


@fuzz_settings(200)
@given(kernel=ANY_IMAGE, forced=st.none() | st.sampled_from([t.name for t in images.image_types()] + ["zImage"]))
def test_select(kernel: bytes, forced: str | None) -> None:
    chosen = outcome(images.select, kernel, forced)
    if isinstance(chosen, images.ImageType):
        assert chosen.probe(kernel) is None


@st.composite
def gzips(draw: st.DrawFn) -> bytes:
    payload = draw(st.binary(max_size=256) | st.integers(0, 1 << 20).map(bytes))
    packed = gzip.compress(payload, compresslevel=1, mtime=0)
    # Trailer (CRC, ISIZE) and header flags are the fields worth lying in.
    hot = (3, 8, 9, len(packed) - 8, len(packed) - 4)
    return draw(mutated(packed, hot) | st.binary(max_size=64).map(lambda b: b"\x1f\x8b" + b))


@fuzz_settings(200)
@given(data=gzips())
def test_decompress(data: bytes) -> None:
    out = outcome(images.decompress, data, "fuzz-kernel")
    assert isinstance(out, (bytes, KexecError))


def test_decompress_bound_is_enforced(monkeypatch: object) -> None:
    """A bomb past MAX_DECOMPRESSED is refused after at most that much output (the
    real bound is 1 GiB; shrunk here so the test is cheap)."""
    import pytest

    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(images, "MAX_DECOMPRESSED", 1 << 20)
        bomb = gzip.compress(bytes(64 << 20), compresslevel=9, mtime=0)
        with fuzzlib.memory_bound(64 << 20):
            err = outcome(images.decompress, bomb, "bomb")
    finally:
        mp.undo()
    assert isinstance(err, KexecError) and "decompresses to more than" in str(err)


# --- purgatory ---------------------------------------------------------------------------

@fuzz_settings(200)
@given(data=st.data())
def test_purgatory_blob(data: st.DataObject) -> None:
    from pykexec.purgatory import Purgatory, PurgatoryHeader

    blob = Purgatory.load().blob
    hot = tuple(getattr(PurgatoryHeader, name).offset for name, *_ in PurgatoryHeader._fields_)
    mutant = data.draw(raw_or_mutated(blob, hot, max_size=ctypes.sizeof(PurgatoryHeader) + 64))
    p = outcome(Purgatory.from_blob, mutant)
    if isinstance(p, Purgatory):
        assert p.entry_offset < len(mutant) <= p.memsz
