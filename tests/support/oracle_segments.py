"""Recognising what kexec-tools loaded: each segment's role by its content, the
purgatory's digest as it should hold it, and a printable segment table."""

from __future__ import annotations

import hashlib
import struct

from support.oracle import MachineSpec, OracleResult, OracleSegment

SETUP_RNG_SEED = 9  # the setup_data type of the random seed kexec-tools adds


def bzimage_payload(image: bytes) -> bytes:
    """The protected-mode part of a bzImage (what kexec loads as the kernel)."""
    setup_sects = image[0x1F1] or 4
    return image[(setup_sects + 1) * 512:]


def u32(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", data, off)[0])


def u64(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<Q", data, off)[0])


def roles(result: OracleResult, kernel: bytes, initrd: bytes) -> dict[str, int]:
    """Map role name -> segment index, recognising each segment by content."""
    found: dict[str, int] = {}
    for i, seg in enumerate(result.segments):
        data = seg.data
        if data == kernel:
            found["kernel"] = i
        elif data == initrd:
            found["initrd"] = i
        elif len(data) > 0x206 and data[0x202:0x206] == b"HdrS":
            found["boot_params"] = i
        elif seg.bufsz == 0x30 and u32(data, 8) == SETUP_RNG_SEED:
            found["rng_seed"] = i
        elif data[:4] == b"\x7fELF":
            found["elfcorehdr"] = i
        elif seg.contains(result.entry):
            found["purgatory"] = i
        elif data and not any(data):
            found["backup"] = i
        else:
            found[f"unknown{i}"] = i
    return found


def ram_ranges(machine: MachineSpec) -> list[tuple[int, int]]:
    return [(r.start, r.end) for r in machine.memory if r.type == "System RAM"]


def inside(seg: OracleSegment, lo: int, hi_inclusive: int) -> bool:
    return lo <= seg.mem and seg.end - 1 <= hi_inclusive


def purgatory_digest(result: OracleResult, purgatory: int) -> tuple[bytes, bytes]:
    """(sha256 digest, sha256_regions) as purgatory should hold them.

    Every segment but the purgatory is hashed as its buffer zero-padded to
    memsz, in the order kexec-tools keeps them (sorted by address).
    """
    digest = hashlib.sha256()
    regions = b""
    for i, seg in enumerate(sorted(result.segments, key=lambda s: s.mem)):
        if seg is result.segments[purgatory]:
            continue
        digest.update(seg.data + bytes(seg.memsz - len(seg.data)))
        regions += struct.pack("<QQ", seg.mem, seg.memsz)
    return digest.digest(), regions


def segment_table(result: OracleResult, names: dict[str, int]) -> str:
    by_index = {i: n for n, i in names.items()}
    return "\n".join(f"{i}: mem={s.mem:#x} memsz={s.memsz:#x} bufsz={s.bufsz:#x} "
                     f"{by_index.get(i, '?')}" for i, s in enumerate(result.segments))
