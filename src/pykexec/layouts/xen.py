"""Xen's kexec ABI as a 64-bit PV dom0 sees it: the ``kexec_op`` hypercall's argument
structures and constants, the few other hypercalls a kexec tool needs (machine memory
map, version), Linux's privcmd ioctl, and Xen's crash notes.

This is the only definition of these layouts in pykexec. Sources: Xen's public headers
(``xen/include/public/kexec.h``, ``xen.h``, ``memory.h``, ``version.h``, ``elfnote.h``)
and Linux's ``include/uapi/xen/privcmd.h``; sizes and offsets are those of x86-64
(``unsigned long`` is 8 bytes), pinned by ``tests/unit/test_xen_layouts.py``.

Structures (little-endian)::

    xen_kexec_exec_t     4 B  int type
    xen_kexec_range_t   24 B  int range, int nr, unsigned long size (out), unsigned long start (out)
    xen_kexec_segment_t 32 B  u64 buf (guest handle, 0 = no buffer), u64 buf_size, u64 dest_maddr, u64 dest_size
    xen_kexec_load_t    24 B  u8 type, u8 pad, u16 arch (EM_*), u32 nr_segments, u64 segments, u64 entry_maddr
    xen_kexec_unload_t   1 B  u8 type          (xen_kexec_status_t: the same)
    xen_memory_map      16 B  u32 nr_entries (in/out), 4 B pad, u64 buffer (guest handle)
    e820 entry          20 B  u64 addr, u64 size, u32 type (packed)
    privcmd_hypercall   48 B  u64 op, u64 arg[5]
    crash_xen_info_t    80 B  10 x u64 (older Xen: 72 B without xen_phys_start, 64 B without the p2m root too)
    crash_xen_core_t    32 B  u64 cr0, cr2, cr3, cr4
"""

from __future__ import annotations

import ctypes
from collections import namedtuple

from pykexec.layouts.elf import EM_386, EM_X86_64

# --- hypercall numbers (public/xen.h) ---------------------------------------------------
HYPERVISOR_memory_op = 12
HYPERVISOR_xen_version = 17
HYPERVISOR_kexec_op = 37

# --- kexec_op commands (public/kexec.h) --------------------------------------------------
KEXEC_CMD_kexec = 0
KEXEC_CMD_kexec_load_v1 = 1  # obsolete since Xen 4.4; never used here
KEXEC_CMD_kexec_unload_v1 = 2
KEXEC_CMD_kexec_get_range = 3
KEXEC_CMD_kexec_load = 4
KEXEC_CMD_kexec_unload = 5
KEXEC_CMD_kexec_status = 6  # Xen 4.9+; see backends/xen/state.py for its 4.17 bug

KEXEC_CMD_NAMES = {
    KEXEC_CMD_kexec: "kexec", KEXEC_CMD_kexec_load_v1: "kexec_load_v1",
    KEXEC_CMD_kexec_unload_v1: "kexec_unload_v1", KEXEC_CMD_kexec_get_range: "kexec_get_range",
    KEXEC_CMD_kexec_load: "kexec_load", KEXEC_CMD_kexec_unload: "kexec_unload",
    KEXEC_CMD_kexec_status: "kexec_status",
}

# --- image types ------------------------------------------------------------------------
KEXEC_TYPE_DEFAULT = 0
KEXEC_TYPE_CRASH = 1
#: 2 is kexec-tools' out-of-tree KEXEC_TYPE_LIVE_UPDATE: never use it.
KEXEC_TYPE_LIVE_UPDATE = 2
#: Proposed by the unmerged 2026 Secure Boot series; Xen 4.17 refuses it (EINVAL).
KEXEC_TYPE_CRASH_EFI = 3

KEXEC_TYPE_NAMES = {KEXEC_TYPE_DEFAULT: "default", KEXEC_TYPE_CRASH: "crash",
                    KEXEC_TYPE_LIVE_UPDATE: "live-update", KEXEC_TYPE_CRASH_EFI: "crash-efi"}

# --- get_range ranges -------------------------------------------------------------------
KEXEC_RANGE_MA_CRASH = 0       # the crashkernel= area (start = size = 0 without one)
KEXEC_RANGE_MA_XEN = 1         # the Xen image (text, data, bss)
KEXEC_RANGE_MA_CPU = 2         # crash-note buffer of pCPU nr
KEXEC_RANGE_MA_XENHEAP = 3     # ia64 only: EINVAL on x86
KEXEC_RANGE_MA_BOOT_PARAM = 4  # obsolete: EINVAL
KEXEC_RANGE_MA_EFI_MEMMAP = 5  # ia64 only: EINVAL on x86
KEXEC_RANGE_MA_VMCOREINFO = 6  # VMCOREINFO_XEN note, always 4096 bytes

KEXEC_RANGE_NAMES = {
    KEXEC_RANGE_MA_CRASH: "MA_CRASH", KEXEC_RANGE_MA_XEN: "MA_XEN", KEXEC_RANGE_MA_CPU: "MA_CPU",
    KEXEC_RANGE_MA_XENHEAP: "MA_XENHEAP", KEXEC_RANGE_MA_BOOT_PARAM: "MA_BOOT_PARAM",
    KEXEC_RANGE_MA_EFI_MEMMAP: "MA_EFI_MEMMAP", KEXEC_RANGE_MA_VMCOREINFO: "MA_VMCOREINFO",
}

#: ``xen/include/xen/kimage.h``. Xen refuses ``nr_segments >= KEXEC_SEGMENT_MAX``
#: (``xen/common/kexec.c``), so a load carries at most 15 segments, the null-buffer
#: ones included -- one fewer than Linux, which refuses only ``nr > 16``.
KEXEC_SEGMENT_MAX = 16
XEN_MAX_SEGMENTS = KEXEC_SEGMENT_MAX - 1

#: The ``arch`` of a v2 load: how Xen enters the image. EM_X86_64: 64-bit mode, paging
#: on, identity-mapped segments. EM_386: 32-bit protected mode, paging off.
KEXEC_ARCHES = {EM_386: "EM_386", EM_X86_64: "EM_X86_64"}

#: Xen's image starts this far above ``xen_phys_start`` (x86-64 ``XEN_IMG_OFFSET``): the
#: start of KEXEC_RANGE_MA_XEN is ``xen_phys_start + XEN_IMG_OFFSET``.
XEN_IMG_OFFSET = 0x200000
XEN_VIRT_START = 0xFFFF82D040000000

#: Size of Xen's VMCOREINFO_XEN buffer (KEXEC_RANGE_MA_VMCOREINFO's size).
VMCOREINFO_BYTES = 4096

# --- memory_op, xen_version ---------------------------------------------------------------
XENMEM_machine_memory_map = 10
XENVER_version = 0       # returns (major << 16) | minor, no argument
XENVER_extraversion = 1  # char[16]
XENVER_capabilities = 3  # char[1024], e.g. "xen-3.0-x86_64 hvm-3.0-x86_32 ..."
XENVER_commandline = 9   # char[1024]: Xen's own command line
XEN_EXTRAVERSION_LEN = 16
XEN_CAPABILITIES_INFO_LEN = 1024
XEN_COMMANDLINE_LEN = 1024

# e820 types (as Xen reports them)
E820_RAM = 1
E820_RESERVED = 2
E820_ACPI = 3
E820_NVS = 4
E820_UNUSABLE = 5

# --- Linux privcmd (include/uapi/xen/privcmd.h) -------------------------------------------
_IOC_NONE = 0
_IOC_NRSHIFT, _IOC_TYPESHIFT, _IOC_SIZESHIFT, _IOC_DIRSHIFT = 0, 8, 16, 30


def _ioc(direction: int, type_: str, nr: int, size: int) -> int:
    """Linux's ``_IOC()``."""
    return ((direction << _IOC_DIRSHIFT) | (ord(type_) << _IOC_TYPESHIFT)
            | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT))


# --- Xen crash notes (public/elfnote.h; xen/include/xen/elfcore.h) ---------------------------
XEN_ELFNOTE_CRASH_INFO = 0x1000001  # crash_xen_info_t, CPU0's buffer only
XEN_ELFNOTE_CRASH_REGS = 0x1000002  # crash_xen_core_t, every pCPU
XEN_NOTE_NAME = b"Xen"
VMCOREINFO_XEN_NOTE_NAME = b"VMCOREINFO_XEN"

# --- Xen's frame table: struct page_info's count_info (xen/arch/x86/include/asm/mm.h) ----------
# Flags count down from the top bit (``PG_shift(idx) = 64 - idx``).  Xen 4.17 moved
# PGC_broken and the page state up (4.4-4.16: broken PG_mask(1, 7), state PG_mask(3, 9);
# 4.17-4.20 and master: broken PG_mask(1, 4), state PG_mask(3, 6)).  Checked per release tag.
PGC_ALLOCATED = 1 << 63   # PG_mask(1, 1): a domain's page (cleared when the domain frees it)
PGC_XEN_HEAP = 1 << 62    # PG_mask(1, 2): Xen heap page


class PgcState(namedtuple("PgcState", "broken state_shift")):
    """Where one Xen release keeps PGC_broken (a mask) and the 2-bit page state
    (``count_info >> state_shift & 3``: 0 inuse, 1 offlining, 2 offlined, 3 free)."""

    __slots__ = ()
    broken: int
    state_shift: int


PGC_4_4 = PgcState(1 << 57, 55)
PGC_4_17 = PgcState(1 << 60, 58)
PGC_STATE_INUSE, PGC_STATE_OFFLINING, PGC_STATE_OFFLINED, PGC_STATE_FREE = range(4)


def pgc_layout(major: int, minor: int) -> PgcState | None:
    """The count_info layout of Xen ``major.minor``; None before 4.4 (not checked)."""
    if (major, minor) >= (4, 17):
        return PGC_4_17
    if (major, minor) >= (4, 4):
        return PGC_4_4
    return None


#: Xen's own pseudo-domains (public/xen.h): owners of Xen's shared and I/O pages.
DOMID_IO = 0x7FF1
DOMID_XEN = 0x7FF2
DOMID_COW = 0x7FF3
#: Xen's 1:1 map of machine memory (x86_64 without CONFIG_BIGMEM, up to 5 TiB): ``pdx_to_virt``.
DIRECTMAP_VIRT_START = 0xFFFF830000000000
DIRECTMAP_VIRT_END = 0xFFFF880000000000


# --- structures ---------------------------------------------------------------------------
class XenKexecExec(ctypes.LittleEndianStructure):
    """xen_kexec_exec_t: argument of KEXEC_CMD_kexec."""

    _fields_ = [("type", ctypes.c_int32)]


class XenKexecRange(ctypes.LittleEndianStructure):
    """xen_kexec_range_t: argument of KEXEC_CMD_kexec_get_range (size, start written back)."""

    _fields_ = [
        ("range", ctypes.c_int32),
        ("nr", ctypes.c_int32),
        ("size", ctypes.c_uint64),
        ("start", ctypes.c_uint64),
    ]


class XenKexecSegment(ctypes.LittleEndianStructure):
    """xen_kexec_segment_t: ``buf`` is a dom0 virtual address Xen copies from (0 = none)."""

    _fields_ = [
        ("buf", ctypes.c_uint64),
        ("buf_size", ctypes.c_uint64),
        ("dest_maddr", ctypes.c_uint64),
        ("dest_size", ctypes.c_uint64),
    ]


class XenKexecLoad(ctypes.LittleEndianStructure):
    """xen_kexec_load_t (the v2 load, Xen 4.4+): ``segments`` is the array's virtual address."""

    _fields_ = [
        ("type", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8),
        ("arch", ctypes.c_uint16),
        ("nr_segments", ctypes.c_uint32),
        ("segments", ctypes.c_uint64),
        ("entry_maddr", ctypes.c_uint64),
    ]


class XenKexecUnload(ctypes.LittleEndianStructure):
    """xen_kexec_unload_t."""

    _fields_ = [("type", ctypes.c_uint8)]


class XenKexecStatus(ctypes.LittleEndianStructure):
    """xen_kexec_status_t: the hypercall returns 0 or 1."""

    _fields_ = [("type", ctypes.c_uint8)]


class XenMemoryMap(ctypes.LittleEndianStructure):
    """struct xen_memory_map: XENMEM_machine_memory_map's argument."""

    _fields_ = [
        ("nr_entries", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("buffer", ctypes.c_uint64),
    ]


class E820Entry(ctypes.LittleEndianStructure):
    """One e820 entry as Xen writes it: packed, 20 bytes."""

    _pack_ = 1
    _fields_ = [
        ("addr", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("type", ctypes.c_uint32),
    ]


class PrivcmdHypercall(ctypes.LittleEndianStructure):
    """struct privcmd_hypercall: what IOCTL_PRIVCMD_HYPERCALL hands to the hypervisor."""

    _fields_ = [
        ("op", ctypes.c_uint64),
        ("arg", ctypes.c_uint64 * 5),
    ]


class CrashXenCore(ctypes.LittleEndianStructure):
    """crash_xen_core_t: descriptor of the "Xen"/XEN_ELFNOTE_CRASH_REGS note (x86-64)."""

    _fields_ = [("cr0", ctypes.c_uint64), ("cr2", ctypes.c_uint64),
                ("cr3", ctypes.c_uint64), ("cr4", ctypes.c_uint64)]


class CrashXenInfo(ctypes.LittleEndianStructure):
    """crash_xen_info_t on x86-64: descriptor of "Xen"/XEN_ELFNOTE_CRASH_INFO.

    The string fields are *machine addresses* of NUL-terminated strings in Xen's image.
    """

    _fields_ = [
        ("xen_major_version", ctypes.c_uint64),
        ("xen_minor_version", ctypes.c_uint64),
        ("xen_extra_version", ctypes.c_uint64),
        ("xen_changeset", ctypes.c_uint64),
        ("xen_compiler", ctypes.c_uint64),
        ("xen_compile_date", ctypes.c_uint64),
        ("xen_compile_time", ctypes.c_uint64),
        ("tainted", ctypes.c_uint64),
        ("xen_phys_start", ctypes.c_uint64),
        ("dom0_pfn_to_mfn_frame_list_list", ctypes.c_uint64),
    ]


assert ctypes.sizeof(XenKexecExec) == 4
assert ctypes.sizeof(XenKexecRange) == 24
assert ctypes.sizeof(XenKexecSegment) == 32
assert ctypes.sizeof(XenKexecLoad) == 24
assert ctypes.sizeof(XenKexecUnload) == ctypes.sizeof(XenKexecStatus) == 1
assert ctypes.sizeof(XenMemoryMap) == 16
assert ctypes.sizeof(E820Entry) == 20
assert ctypes.sizeof(PrivcmdHypercall) == 48
assert ctypes.sizeof(CrashXenCore) == 32
assert ctypes.sizeof(CrashXenInfo) == 80

#: IOCTL_PRIVCMD_HYPERCALL = _IOC(_IOC_NONE, 'P', 0, sizeof(struct privcmd_hypercall)) = 0x305000.
#: The ioctl returns the hypercall's own return value (negative ones as -1/errno).
IOCTL_PRIVCMD_HYPERCALL = _ioc(_IOC_NONE, "P", 0, ctypes.sizeof(PrivcmdHypercall))

#: Sizes of the crash-info note by Xen generation: 80 (xen_phys_start and the dom0 p2m
#: root), 72 (p2m root only, before Xen changeset 439a3e9459f2), 64 (neither).
CRASH_XEN_INFO_SIZES = (80, 72, 64)


class XenCrashInfo(namedtuple("XenCrashInfo", "major minor extra_version_maddr tainted "
                                              "xen_phys_start dom0_p2m_root")):
    """What a crash-info note says. ``xen_phys_start`` / ``dom0_p2m_root`` are None when
    the note is too old to carry them."""

    __slots__ = ()
    major: int
    minor: int
    extra_version_maddr: int
    tainted: int
    xen_phys_start: int | None
    dom0_p2m_root: int | None


def parse_crash_xen_info(desc: bytes) -> XenCrashInfo:
    """Decode a XEN_ELFNOTE_CRASH_INFO descriptor of any known size.

    Read as crash(8) and makedumpfile do: an array of u64 where the p2m root is the last
    word and ``xen_phys_start`` the second-last once there are more than 9 words.
    """
    if len(desc) < 64 or len(desc) % 8:
        raise ValueError(f"Xen crash-info note of {len(desc)} bytes: expected 64, 72 or 80")
    words = (ctypes.c_uint64 * (len(desc) // 8)).from_buffer_copy(desc)
    n = len(words)
    p2m = words[n - 1] if n > 8 else None
    phys = words[n - 2] if n > 9 else None
    return XenCrashInfo(words[0], words[1], words[2], words[7], phys, p2m)
