"""Unified Kernel Images for tests, built the way distributions build them: a PE stub
and ``objcopy --add-section`` (the recipe of systemd-stub(7) before ukify).

The unit tests use a minimal PE32+ stub written here byte by byte (a real stub's code
is irrelevant to a kexec loader, which never runs it); the VM tests pass Debian's
systemd-stub (linuxx64.efi.stub) instead.
"""

from __future__ import annotations

import struct
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

SECTION_ALIGN = 0x1000
FILE_ALIGN = 0x200
#: Where the first added section goes in memory (above any stub's own sections); each
#: next one starts on the first 1 MiB boundary past the previous one's end.
FIRST_VMA = 0x1000000
VMA_ALIGN = 0x100000


def minimal_pe_stub() -> bytes:
    """A PE32+ x86_64 EFI application with one 512-byte .text section: DOS header
    (e_lfanew 0x40), signature, COFF header, a 240-byte optional header (16 data
    directories), one section header, headers padded to 0x200."""
    dos = bytearray(0x40)
    dos[0:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 0x40)
    coff = struct.pack("<HHIIIHH", 0x8664, 1, 0, 0, 0, 240, 0x0206)  # executable, large-address aware
    opt = bytearray(240)
    struct.pack_into("<HBBIIIII", opt, 0, 0x20B, 2, 40, FILE_ALIGN, 0, 0, 0x1000, 0x1000)  # ... entry, base of code
    struct.pack_into("<QII", opt, 24, 0, SECTION_ALIGN, FILE_ALIGN)  # image base, alignments
    struct.pack_into("<HHHHHH", opt, 40, 0, 0, 0, 0, 0, 0)
    struct.pack_into("<IIII", opt, 56, 0x2000, FILE_ALIGN, 0, 0)  # size of image, size of headers, checksum
    struct.pack_into("<HH", opt, 68, 10, 0)  # subsystem: EFI application
    struct.pack_into("<QQQQII", opt, 72, 0x100000, 0x1000, 0x100000, 0x1000, 0, 16)
    text = struct.pack("<8sIIIIIIHHI", b".text", 0x10, 0x1000, FILE_ALIGN, FILE_ALIGN, 0, 0, 0, 0, 0x60000020)
    headers = bytes(dos) + b"PE\0\0" + coff + bytes(opt) + text
    body = b"\xc3".ljust(FILE_ALIGN, b"\0")  # ret
    return headers.ljust(FILE_ALIGN, b"\0") + body


def build_uki(out: Path, sections: Sequence[tuple[str, bytes]], stub: Path | None = None) -> Path:
    """``objcopy`` the ``sections`` (name, contents), in order, into ``stub`` (default:
    :func:`minimal_pe_stub`) at increasing VMAs; a name may repeat (profiles)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if stub is None:
            stub = work / "stub.efi"
            stub.write_bytes(minimal_pe_stub())
        add, rename = ["objcopy"], ["objcopy"]
        vma = FIRST_VMA
        for i, (name, data) in enumerate(sections):
            path = work / f"s{i}"
            path.write_bytes(data)
            # A name may repeat: add each under a unique name, then rename them all.
            tmp_name = f".s{i}"
            add += ["--add-section", f"{tmp_name}={path}", "--change-section-vma", f"{tmp_name}={vma:#x}",
                    "--set-section-flags", f"{tmp_name}=data,readonly"]
            vma += -(-max(len(data), 1) // VMA_ALIGN) * VMA_ALIGN
            rename += ["--rename-section", f"{tmp_name}={name}"]
        subprocess.run([*add, str(stub), str(work / "added.efi")], check=True, capture_output=True)
        subprocess.run([*rename, str(work / "added.efi"), str(out)], check=True, capture_output=True)
    return out
