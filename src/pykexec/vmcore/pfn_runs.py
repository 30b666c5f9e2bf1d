"""Runs of page frames: sorted, half-open ``(start, end)`` pfn pairs, as ``vmcore save``
and the dump-level scan pass them around, and the kdump bitmaps made of them.

Plain int pairs, not :class:`pykexec.memory.Range`: a dump's scan yields tens of
thousands of runs (every free block, every run of cache pages), and ``memory.py``'s
algebra is made for memory maps of a dozen regions -- a ``Range`` checks its bounds
on every construction and ``memory.subtract`` rebuilds the list once per hole
(quadratic).  The functions here are single linear passes over int tuples.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


def merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` sorted (in place) and coalesced where they overlap or touch."""
    ranges.sort()
    out: list[tuple[int, int]] = []
    for s, e in ranges:
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def subtract(runs: Sequence[tuple[int, int]], holes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted half-open ``runs`` minus sorted, merged ``holes``."""
    out: list[tuple[int, int]] = []
    i = 0
    for start, end in runs:
        while i < len(holes) and holes[i][1] <= start:
            i += 1
        j = i
        while start < end:
            if j >= len(holes) or holes[j][0] >= end:
                out.append((start, end))
                break
            hs, he = holes[j]
            if hs > start:
                out.append((start, hs))
            start = max(start, he)
            j += 1
    return out


def set_bits(bitmap: bytearray, start: int, end: int) -> None:
    """Set bits ``[start, end)`` (bit ``pfn % 8`` of byte ``pfn // 8``)."""
    while start < end and start & 7:
        bitmap[start >> 3] |= 1 << (start & 7)
        start += 1
    full = (end - start) >> 3
    if full > 0:
        bitmap[start >> 3:(start >> 3) + full] = b"\xff" * full
        start += full << 3
    while start < end:
        bitmap[start >> 3] |= 1 << (start & 7)
        start += 1


def mask_runs(mask: bytes | bytearray, base: int, out: list[tuple[int, int]]) -> None:
    """Append the runs of 1 bytes in ``mask`` (one byte per page) as pfn ranges from ``base``."""
    i = mask.find(1)
    while i >= 0:
        j = mask.find(0, i)
        if j < 0:
            j = len(mask)
        out.append((base + i, base + j))
        i = mask.find(1, j)
