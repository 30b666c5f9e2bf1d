"""Reading what is left of an incomplete dump's kernel log (``vmcore dmesg`` of a dump
flagged incomplete or cut short): a buffer read page by page where a whole read fails,
the pages the dump lacks read as zeros and named, so that :mod:`pykexec.vmcore.printk`
skips the records on them and counts them instead of failing the whole log."""

from __future__ import annotations

from pykexec.vmcore.errors import VmcoreError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pykexec.vmcore.dump_memory import DumpMemory
    from pykexec.vmcore.elfcore import Buffer

#: The unit of a lenient read: a page the dump may lack.
PAGE = 4096


def read_with_holes(core: DumpMemory, addr: int, size: int) -> tuple[Buffer, list[tuple[int, int]]]:
    """``size`` bytes at kernel virtual address ``addr``, and the ``[start, end)``
    pieces of them the dump lacks (zeros in the bytes returned).  If it lacks all of
    them, the reader's own error."""
    try:
        return core.read(addr, size), []
    except VmcoreError:
        pass
    out = bytearray(size)
    holes: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        n = min(size - pos, PAGE - (addr + pos) % PAGE)
        try:
            out[pos:pos + n] = core.read(addr + pos, n)
        except VmcoreError:
            if holes and holes[-1][1] == pos:
                holes[-1] = (holes[-1][0], pos + n)
            else:
                holes.append((pos, pos + n))
        pos += n
    if holes == [(0, size)]:
        core.read(addr, size)  # raises: nothing of it is there
    return bytes(out), holes


def blank_holes(buf: Buffer, holes: list[tuple[int, int]]) -> bytes:
    """A legacy character ring with each missing piece made line breaks: no line of
    the log joins text from both sides of a hole."""
    kept = bytearray(buf)
    for a, b in holes:
        kept[a:b] = b"\n" * (b - a)
    return bytes(kept)
