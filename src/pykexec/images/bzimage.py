"""bzImage with the 64-bit boot protocol (kexec-tools type ``bzImage64``).

Only the protected-mode part is loaded; purgatory enters it at ``startup_64`` (load
address + 0x200) with RSI = boot_params, as Documentation/arch/x86/boot.rst describes.
"""

from __future__ import annotations

import ctypes
from collections import namedtuple

from pykexec.errors import ImageFormatError
from pykexec.images.image_type import ImageType
from pykexec.layouts import boot_params as bp
from pykexec.layouts.elf import ELFMAG
from pykexec.layouts.x86_paging import PAGE_SIZE
from pykexec.memory import Allocator, MiB, Range, align_up
from pykexec.plan import LoadPlan, Segment
from pykexec.request import LoadRequest

MIN_PROTOCOL = 0x020C  # 2.12: xloadflags, 64-bit entry, ext_* fields

#: The formats Linux's decompressor knows (lib/decompress.c), by the same two-byte
#: magics: a bzImage's payload (the compressed vmlinux) starts with one, or it is an
#: ELF (CONFIG_KERNEL_UNCOMPRESSED).
COMPRESSION_MAGICS = {
    b"\x1f\x8b": "gzip", b"\x1f\x9e": "gzip", b"BZ": "bzip2", b"\x5d\x00": "lzma", b"\xfd\x37": "xz",
    b"\x89\x4c": "lzo", b"\x02\x21": "lz4", b"\x28\xb5": "zstd",
}


class BzImage(namedtuple("BzImage", "header setup_size data")):
    """A parsed bzImage; ``setup_size`` bytes of real-mode setup precede the kernel."""

    __slots__ = ()
    header: bp.SetupHeader
    setup_size: int
    data: bytes

    @property
    def kernel(self) -> memoryview:
        return memoryview(self.data)[self.setup_size:]

    @property
    def protocol(self) -> str:
        return f"{self.header.version >> 8}.{self.header.version & 0xFF:02d}"


def header_from_image(data: bytes) -> bp.SetupHeader:
    """The setup header as the image declares it: bytes 0x1f1 up to the end announced by
    the jump at 0x200 (older protocols have shorter headers; the rest stays zero)."""
    end = min(0x202 + data[0x201], bp.SETUP_HEADER_END, len(data))
    raw = data[bp.SETUP_HEADER_OFFSET:end]
    return bp.SetupHeader.from_buffer_copy(raw.ljust(ctypes.sizeof(bp.SetupHeader), b"\0"))


def parse(data: bytes) -> BzImage:
    """Parse and check a bzImage's setup header; raises ImageFormatError naming the rule."""
    if len(data) < bp.SETUP_HEADER_END:
        raise ImageFormatError(f"too short for a bzImage ({len(data)} bytes)")
    hdr = header_from_image(data)
    if hdr.header != bp.HDRS_MAGIC:
        raise ImageFormatError("no 'HdrS' signature at offset 0x202")
    if hdr.boot_flag != bp.BOOT_FLAG:
        raise ImageFormatError(f"boot flag at 0x1fe is {hdr.boot_flag:#06x}, expected 0xaa55")
    setup_size = bp.setup_size(hdr)
    if setup_size >= len(data):
        raise ImageFormatError(f"setup_sects={hdr.setup_sects} puts the kernel beyond the end of the file")
    return BzImage(hdr, setup_size, data)


def probe(data: bytes) -> str | None:
    try:
        img = parse(data)
    except ImageFormatError as err:
        return str(err)
    h = img.header
    if h.version < MIN_PROTOCOL:
        return f"boot protocol {img.protocol} is older than 2.12"
    if not h.loadflags & bp.LOADED_HIGH:
        return "not a bzImage (zImage loaded low)"
    need = bp.XLF_KERNEL_64 | bp.XLF_CAN_BE_LOADED_ABOVE_4G
    if h.xloadflags & need != need:
        return "no 64-bit entry point (xloadflags lacks KERNEL_64 or CAN_BE_LOADED_ABOVE_4G)"
    if h.kernel_alignment == 0 or h.kernel_alignment & (h.kernel_alignment - 1):
        return f"kernel_alignment {h.kernel_alignment:#x} is not a power of two"
    return None


def _checked(data: bytes, what: str) -> BzImage:
    """A 64-bit bzImage (:func:`probe`) whose file holds what its setup header declares:
    the protected-mode kernel (syssize) and the payload (payload_offset/length, relative
    to that kernel) inside the file, the payload in a format the kernel can decompress.
    A header that leaves syssize or payload_length 0 states nothing to check; the file
    may be longer than declared (a signed image carries its signature after it)."""
    why = probe(data)
    if why is not None:
        raise ImageFormatError(f"{what}: {why}")
    img = parse(data)
    h, size = img.header, len(data)
    kernel_end = img.setup_size + h.syssize * bp.SYSSIZE_UNIT if h.syssize else size
    if kernel_end > size:
        raise ImageFormatError(f"{what}: bzImage cut short: the setup header says {kernel_end} bytes, "
                               f"the file has {size}")
    if h.version < bp.PROTOCOL_PAYLOAD or not h.payload_length:
        return img
    start = img.setup_size + h.payload_offset
    if start + h.payload_length > kernel_end:
        raise ImageFormatError(f"{what}: the setup header puts the payload (payload_offset {h.payload_offset:#x}, "
                               f"payload_length {h.payload_length:#x}) past the end of the "
                               f"{kernel_end - img.setup_size:#x}-byte kernel")
    head = data[start:start + len(ELFMAG)]
    if head[:2] not in COMPRESSION_MAGICS and head != ELFMAG:
        raise ImageFormatError(f"{what}: the payload at file offset {start:#x} starts with {head.hex()}: "
                               f"neither a compression Linux decompresses "
                               f"({', '.join(dict.fromkeys(COMPRESSION_MAGICS.values()))}) nor ELF")
    return img


def check_bzimage(data: bytes, what: str) -> bp.SetupHeader:
    """What a bzImage load checks before any syscall, kexec_file_load's included (see
    :func:`_checked`); raises ImageFormatError("WHAT: ...") in one line. Returns the setup
    header, for :func:`pykexec.layouts.boot_params.check_cmdline`."""
    return _checked(data, what).header


def plan(req: LoadRequest) -> LoadPlan:
    from pykexec.linux_boot import PlacedKernel, plan_linux  # kexec_load only

    img = _checked(req.kernel, str(req.kernel_path))
    h = img.header

    def place_kernel(alloc: Allocator) -> PlacedKernel:
        body = bytes(img.kernel)
        # init_size covers the decompressor's work area: reserve all of it.
        memsz = align_up(max(h.init_size, len(body)), PAGE_SIZE)
        if h.relocatable_kernel:
            addr = alloc.allocate(memsz, align=h.kernel_alignment, min_addr=max(MiB, h.pref_address),
                                  what="kernel")
        else:
            addr = h.pref_address or h.code32_start
            alloc.reserve(Range.sized(addr, memsz))
        seg = Segment("kernel", addr, memsz, body)
        return PlacedKernel([seg], addr + bp.STARTUP_64_OFFSET)

    result = plan_linux(req, "bzImage64", h, place_kernel,
                        kernel_memsz=align_up(max(h.init_size, len(img.kernel)), PAGE_SIZE))
    result.notes.append(f"bzImage protocol {img.protocol}, init_size {h.init_size:#x}, "
                        f"alignment {h.kernel_alignment:#x}")
    return result


BZIMAGE64 = ImageType(
    name="bzImage64",
    probe=probe,
    plan=plan,
    usage="bzImage64: x86_64 bzImage (boot protocol 2.12+), entered at startup_64.\n"
          "    --command-line/--append STRING, --reuse-cmdline, --initrd/--ramdisk FILE",
    file_load=True,
)

