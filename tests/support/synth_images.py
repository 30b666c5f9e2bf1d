"""Synthetic images and machines for the unit tests, small enough to build in a test."""

from __future__ import annotations

import struct

from pykexec.layouts import boot_params as bp

# A QEMU-like 1 GiB BIOS machine as /proc/iomem's top level shows it.
MACHINE_1G = {
    "memory": [
        {"start": "0x0", "end": "0xfff", "type": "Reserved"},
        {"start": "0x1000", "end": "0x9fbff", "type": "System RAM"},
        {"start": "0x9fc00", "end": "0x9ffff", "type": "Reserved"},
        {"start": "0xf0000", "end": "0xfffff", "type": "Reserved"},
        {"start": "0x100000", "end": "0x3ffdffff", "type": "System RAM"},
        {"start": "0x3ffe0000", "end": "0x3fffffff", "type": "Reserved"},
        {"start": "0xfffc0000", "end": "0xffffffff", "type": "Reserved"},
    ],
    "cmdline": "BOOT_IMAGE=/boot/vmlinuz root=/dev/vda1 ro crashkernel=256M quiet",
}


def make_bzimage(*, version: int = 0x020F, setup_sects: int = 4, body: bytes = b"\x90" * 0x3000,
                 init_size: int = 0x800000, kernel_alignment: int = 0x200000, pref_address: int = 0x1000000,
                 xloadflags: int = bp.XLF_KERNEL_64 | bp.XLF_CAN_BE_LOADED_ABOVE_4G,
                 loadflags: int = bp.LOADED_HIGH, relocatable: int = 1, cmdline_size: int = 2047,
                 initrd_addr_max: int = 0x7FFFFFFF) -> bytes:
    """A bzImage with a real-looking setup header and ``body`` as its protected-mode part."""
    setup = bytearray((setup_sects + 1) * 512)
    hdr = bp.SetupHeader()
    hdr.setup_sects = setup_sects
    hdr.boot_flag = bp.BOOT_FLAG
    hdr.jump = 0x66EB  # jmp short to 0x268: the header runs to 0x26c
    hdr.header = bp.HDRS_MAGIC
    hdr.version = version
    hdr.loadflags = loadflags
    hdr.code32_start = 0x100000
    hdr.initrd_addr_max = initrd_addr_max
    hdr.kernel_alignment = kernel_alignment
    hdr.relocatable_kernel = relocatable
    hdr.xloadflags = xloadflags
    hdr.cmdline_size = cmdline_size
    hdr.pref_address = pref_address
    hdr.init_size = init_size
    raw = bytes(hdr)
    setup[0x1F1:0x1F1 + len(raw)] = raw
    return bytes(setup) + body


def with_header_field(image: bytes, field: str, value: int) -> bytes:
    """``image`` with one setup-header field (of any width) set to ``value``."""
    out = bytearray(image)
    desc = getattr(bp.SetupHeader, field)
    at = bp.SETUP_HEADER_OFFSET + desc.offset
    out[at:at + desc.size] = value.to_bytes(desc.size, "little")
    return bytes(out)


#: A zstd frame's magic and some bytes: what Debian's 6.12 kernel carries as its payload.
ZSTD_PAYLOAD = b"\x28\xb5\x2f\xfd" + bytes(0x1000)
#: Where Debian's 6.1 and 6.12 kernels put their payload in the protected-mode part.
PAYLOAD_OFFSET = 0x2CC
#: What sbsign appends to a signed kernel, past the end syssize declares.
SIGNATURE = b"S" * 1472


def make_kernel_shaped_bzimage(payload: bytes = ZSTD_PAYLOAD, *, tail: bytes = SIGNATURE, **header: int) -> bytes:
    """make_bzimage with the sizes a kernel build writes: syssize covers the protected-mode
    part (payload and a 4-byte CRC, in 16-byte paragraphs) and payload_offset/length point
    at the compressed vmlinux; ``tail`` follows (a signature)."""
    body = b"\x90" * PAYLOAD_OFFSET + payload
    body += bytes(-(len(body) + 4) % 16 + 4)
    image = make_bzimage(body=body, **header)
    image = with_header_field(image, "syssize", len(body) // bp.SYSSIZE_UNIT)
    image = with_header_field(image, "payload_offset", PAYLOAD_OFFSET)
    return with_header_field(image, "payload_length", len(payload)) + tail


def make_elf_vmlinux(loads: list[tuple[int, bytes, int]], entry: int) -> bytes:
    """A minimal ELF64 x86_64 executable: loads are (paddr, file bytes, memsz)."""
    ehsize, phentsize = 64, 56
    phoff = ehsize
    data_off = phoff + phentsize * len(loads)
    phdrs = b""
    blobs = b""
    for paddr, body, memsz in loads:
        off = data_off + len(blobs)
        phdrs += struct.pack("<IIQQQQQQ", 1, 7, off, 0xFFFFFFFF80000000 + paddr, paddr, len(body), memsz, 0x1000)
        blobs += body
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, entry, phoff, 0, 0, ehsize, phentsize,
                               len(loads), 64, 0, 0)
    return ehdr + phdrs + blobs
