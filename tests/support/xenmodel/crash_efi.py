"""A model of what the June 2026 series' Xen accepts for a KEXEC_TYPE_CRASH_EFI load
(xen-kexec-abi.md §5.2-5.3), written from the series' description and independently of
pykexec's planner, so that each can catch the other's mistakes.

Segments are as the hypercall carries them: (buf, buf_size, dest_maddr, dest_size).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

KEXEC_SEGMENT_MAX = 16
PAGE = 4096
MB = 1 << 20


class XenSegment(NamedTuple):
    buf: bytes | None
    buf_size: int
    dest_maddr: int
    dest_size: int


class Rejected(Exception):
    """Xen would fail the load with -EINVAL (the message says which check)."""


def _pages(seg: XenSegment) -> tuple[int, int]:
    # Patch 4: dest rounded down to a page, size up, data copied at the page offset.
    start = seg.dest_maddr & ~(PAGE - 1)
    end = (seg.dest_maddr + seg.dest_size + PAGE - 1) & ~(PAGE - 1)
    return start, end


def _memory_at(segments: list[XenSegment], maddr: int, size: int) -> bytes:
    """What Xen finds at maddr after copying the segments (zeros elsewhere)."""
    out = bytearray(size)
    for seg in segments:
        if seg.buf is None:
            continue
        lo, hi = max(maddr, seg.dest_maddr), min(maddr + size, seg.dest_maddr + len(seg.buf))
        if lo < hi:
            out[lo - maddr:hi - maddr] = seg.buf[lo - seg.dest_maddr:hi - seg.dest_maddr]
    return bytes(out)


def accept(segments: list[XenSegment], parameters: int, crash_area: tuple[int, int]) -> int:
    """The kernel entry Xen would use, or Rejected."""
    if not segments or len(segments) > KEXEC_SEGMENT_MAX:
        raise Rejected("segment count")
    area_start, area_end = crash_area
    spans = []
    for i, seg in enumerate(segments):
        if seg.buf_size > seg.dest_size:
            raise Rejected(f"segment {i}: buf_size > dest_size")
        start, end = _pages(seg)
        if start < area_start or end > area_end:
            raise Rejected(f"segment {i}: outside the crash area")
        spans.append((start, end, i))
    spans.sort()
    for (s1, e1, i1), (s2, _, i2) in zip(spans, spans[1:]):
        if s2 < e1:
            raise Rejected(f"segments {i1} and {i2} overlap")
    # kimage_find_kernel_entry_maddr: the header is read from the page segment 0 starts in.
    dest = segments[0].dest_maddr
    page = _memory_at(segments, dest & ~(PAGE - 1), PAGE)
    if struct.unpack_from("<I", page, 0x202)[0] != 0x53726448:
        raise Rejected("no HdrS magic")
    if struct.unpack_from("<H", page, 0x206)[0] < 0x0202:
        raise Rejected("boot protocol < 2.02")
    kern16 = ((page[0x1F1] or 4) + 1) * 512
    align = struct.unpack_from("<I", page, 0x230)[0]
    if align % (2 * MB) or not 2 * MB <= align <= 16 * MB:
        raise Rejected("kernel_alignment not a multiple of 2 MiB in 2..16 MiB")
    if (dest + kern16) % align:
        raise Rejected("kernel dest addr is not aligned")
    return dest + kern16 + 0x200
