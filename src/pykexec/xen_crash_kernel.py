"""Xen as a crash kernel (issue 16): the pure pieces of the plan, no loading yet.

See docs/xen-crash-kernel.md. Xen 4.17's early boot writes low memory it never checks
against the Multiboot map: 4 bytes of stack just below 0x1000, and a 64 KiB trampoline
area whose place it derives from the BIOS data area and Multiboot ``mem_lower``
(xen/arch/x86/boot/head.S, ``trampoline_bios_setup``). So the crash plan copies low
memory aside (purgatory's backup) and checks that copy covers what Xen will write; the
crash Xen's map holds only the backed-up low RAM and the crash region; ``no-real-mode``
keeps Xen from asking the BIOS for the whole machine's E820 instead; dom0 learns the
elfcorehdr from its module string.
"""

from __future__ import annotations

from pykexec import crash
from pykexec.errors import UsageError
from pykexec.images import multiboot_common as common
from pykexec.memory import MemoryMap, Range

TRAMPOLINE_AREA = 64 * 1024  # TRAMPOLINE_SPACE + TRAMPOLINE_STACK_SPACE (asm/config.h)
EARLY_STACK = Range(0xFFC, 0x1000)  # head.S __start: esp = 0x1000, one call/pop
NO_REAL_MODE = "no-real-mode"
DOM0_CMDLINE_MAX = 1023  # MAX_GUEST_CMDLINE (1024) with its NUL; Xen truncates silently
_U32 = 0xFFFFFFFF


def trampoline(ebda_segment: int, base_memory_kib: int, mem_lower_kib: int = 0) -> Range:
    """Where Xen 4.17 puts its trampoline on a BIOS boot, computed as head.S does: the
    EBDA segment (BDA 0x40e) if within [0x4000, 0xa000), else base memory (BDA 0x413,
    KiB); the Multiboot ``mem_lower`` instead when it is at least 256 KiB and smaller;
    minus 64 KiB, rounded down to a page. 32-bit arithmetic, wrap-around included."""
    seg = ebda_segment if 0x4000 <= ebda_segment < 0xA000 else (base_memory_kib << 6) & _U32
    if mem_lower_kib >= 0x100:
        seg = min(seg, (mem_lower_kib << 6) & _U32)
    seg = ((seg - (TRAMPOLINE_AREA >> 4)) & _U32) & ~0xFF
    start = (seg << 4) & _U32
    return Range.sized(start, TRAMPOLINE_AREA)


def low_writes(tramp: Range) -> list[Range]:
    """What Xen writes below 1 MiB outside any memory map: the early stack bytes and
    the trampoline area (code, boot information copy, low stack, AP entry)."""
    return [EARLY_STACK, tramp]


def uncovered(writes: list[Range], backup: Range | None) -> list[Range]:
    """The parts of ``writes`` the low-memory backup does not cover (empty = safe)."""
    out: list[Range] = []
    for w in writes:
        out.extend(w.minus(backup) if backup is not None else [w])
    return out


def xen_cmdline(cmdline: str) -> str:
    """The crash Xen's command line with ``no-real-mode`` in Xen's part (before any
    ``--``, after which words go to dom0): without it Xen takes the BIOS E820, i.e. the
    whole machine, over our Multiboot map."""
    xen_part, sep, dom0_part = cmdline.partition(" -- ")
    if NO_REAL_MODE not in xen_part.split():
        xen_part = f"{xen_part} {NO_REAL_MODE}".strip()
    return f"{xen_part}{sep}{dom0_part}"


def dom0_module_cmdline(module_cmdline: str, elfcorehdr: int, *, kextra: str = "") -> str:
    """Module 0's string with ``elfcorehdr=`` for dom0 (Xen drops the first word, the
    file name, and appends ``kextra``, the words after `` -- ``); refuses a string that
    would not fit Xen's 1024-byte buffer, or one that already names an elfcorehdr."""
    if any(w.startswith("elfcorehdr=") for w in module_cmdline.split()):
        raise UsageError("-p: the dom0 module's arguments already have elfcorehdr=; pykexec sets it")
    out = f"{module_cmdline} elfcorehdr={elfcorehdr:#x}"
    words = out.split(None, 1)
    seen = len(words[1] if len(words) > 1 else "") + (1 + len(kextra) if kextra else 0)
    if seen > DOM0_CMDLINE_MAX:
        raise UsageError(f"-p: dom0's command line would be {seen} bytes with elfcorehdr=; Xen keeps "
                         f"{DOM0_CMDLINE_MAX}")
    return out


def memory_map(memory: MemoryMap, crash_region: Range, kept: list[Range]) -> MemoryMap:
    """The crash Xen's memory map: the same one a Linux crash kernel gets
    (:func:`pykexec.crash.crash_memory_map`): low RAM (backed up), the crash region
    minus ``kept`` (elfcorehdr, backup copy: left out so Xen does not reuse them and
    dom0 may map them as I/O), firmware regions as they are, the crashed RAM absent."""
    return crash.crash_memory_map(memory, crash_region, kept)


def multiboot_mmap(crash_map: MemoryMap) -> list[tuple[int, int, int]]:
    """The map as Multiboot (base, length, type) entries, refused when Xen would
    ignore it (``copy_e820_map`` drops maps of fewer than 2 entries)."""
    entries = common.memory_map(crash_map)
    if len(entries) < 2:
        raise UsageError("-p: the crash Xen's memory map has fewer than 2 entries, which Xen 4.17 ignores")
    return entries
