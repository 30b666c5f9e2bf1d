"""Xen kexec ABI layouts pinned to the public headers' x86-64 layout
(xen-kexec-abi.md §1.3, §3.1, §3.6, §4.2) and to hand-written bytes."""

from __future__ import annotations

import ctypes
import struct

import pytest

from pykexec.layouts import xen as abi


def offsets(cls: type[ctypes.Structure]) -> dict[str, int]:
    return {name: getattr(cls, name).offset for name, *_ in cls._fields_}


@pytest.mark.parametrize("cls,size,fields", [
    (abi.XenKexecExec, 4, {"type": 0}),
    (abi.XenKexecRange, 24, {"range": 0, "nr": 4, "size": 8, "start": 16}),
    (abi.XenKexecSegment, 32, {"buf": 0, "buf_size": 8, "dest_maddr": 16, "dest_size": 24}),
    (abi.XenKexecLoad, 24, {"type": 0, "_pad": 1, "arch": 2, "nr_segments": 4, "segments": 8,
                            "entry_maddr": 16}),
    (abi.XenKexecUnload, 1, {"type": 0}),
    (abi.XenKexecStatus, 1, {"type": 0}),
    (abi.XenMemoryMap, 16, {"nr_entries": 0, "_pad": 4, "buffer": 8}),
    (abi.E820Entry, 20, {"addr": 0, "size": 8, "type": 16}),
    (abi.PrivcmdHypercall, 48, {"op": 0, "arg": 8}),
    (abi.CrashXenCore, 32, {"cr0": 0, "cr2": 8, "cr3": 16, "cr4": 24}),
    (abi.CrashXenInfo, 80, {"xen_major_version": 0, "xen_minor_version": 8, "xen_extra_version": 16,
                            "xen_changeset": 24, "xen_compiler": 32, "xen_compile_date": 40,
                            "xen_compile_time": 48, "tainted": 56, "xen_phys_start": 64,
                            "dom0_pfn_to_mfn_frame_list_list": 72}),
])
def test_sizes_and_offsets(cls: type[ctypes.Structure], size: int, fields: dict[str, int]) -> None:
    assert ctypes.sizeof(cls) == size
    assert offsets(cls) == fields


def test_struct_formats_of_the_reference_agree() -> None:
    # xen-kexec-abi.md §1.3's Python formats.
    for cls, fmt in [(abi.XenKexecExec, "<i"), (abi.XenKexecRange, "<iiQQ"), (abi.XenKexecSegment, "<QQQQ"),
                     (abi.XenKexecLoad, "<BBHIQQ"), (abi.XenKexecUnload, "<B"), (abi.E820Entry, "<QQI"),
                     (abi.PrivcmdHypercall, "<6Q"), (abi.CrashXenInfo, "<10Q")]:
        assert ctypes.sizeof(cls) == struct.calcsize(fmt), cls


def test_known_bytes() -> None:
    load = abi.XenKexecLoad(abi.KEXEC_TYPE_CRASH, 0, 62, 3, 0x00007F0000001000, 0x41000000)
    assert bytes(load) == bytes.fromhex("01 00 3e 00 03 00 00 00" "00 10 00 00 00 7f 00 00" "00 00 00 41 00 00 00 00")
    rng = abi.XenKexecRange(abi.KEXEC_RANGE_MA_CPU, 1, 0x194, 0x12345000)
    assert bytes(rng) == bytes.fromhex("02 00 00 00 01 00 00 00" "94 01 00 00 00 00 00 00" "00 50 34 12 00 00 00 00")
    seg = abi.XenKexecSegment(0, 0, 0x9F000, 0x1000)
    assert bytes(seg) == bytes.fromhex("00" * 16 + "00 f0 09 00 00 00 00 00" "00 10 00 00 00 00 00 00")
    e820 = abi.E820Entry(0x100000, 0x7FF00000, abi.E820_RAM)
    assert bytes(e820) == bytes.fromhex("00 00 10 00 00 00 00 00" "00 00 f0 7f 00 00 00 00" "01 00 00 00")
    call = abi.PrivcmdHypercall(37, (ctypes.c_uint64 * 5)(3, 0x7F00DEAD0000))
    assert bytes(call) == struct.pack("<6Q", 37, 3, 0x7F00DEAD0000, 0, 0, 0)
    assert bytes(abi.XenKexecExec(-1)) == b"\xff\xff\xff\xff"


def test_constants() -> None:
    assert abi.IOCTL_PRIVCMD_HYPERCALL == 0x00305000
    assert (abi.HYPERVISOR_kexec_op, abi.HYPERVISOR_memory_op, abi.HYPERVISOR_xen_version) == (37, 12, 17)
    assert (abi.KEXEC_CMD_kexec, abi.KEXEC_CMD_kexec_get_range, abi.KEXEC_CMD_kexec_load,
            abi.KEXEC_CMD_kexec_unload, abi.KEXEC_CMD_kexec_status) == (0, 3, 4, 5, 6)
    assert (abi.KEXEC_TYPE_DEFAULT, abi.KEXEC_TYPE_CRASH, abi.KEXEC_TYPE_CRASH_EFI) == (0, 1, 3)
    assert (abi.KEXEC_RANGE_MA_CRASH, abi.KEXEC_RANGE_MA_XEN, abi.KEXEC_RANGE_MA_CPU,
            abi.KEXEC_RANGE_MA_VMCOREINFO) == (0, 1, 2, 6)
    assert abi.XENMEM_machine_memory_map == 10
    assert (abi.XENVER_version, abi.XENVER_extraversion, abi.XENVER_capabilities) == (0, 1, 3)
    assert (abi.XEN_ELFNOTE_CRASH_INFO, abi.XEN_ELFNOTE_CRASH_REGS) == (0x1000001, 0x1000002)
    assert abi.XEN_MAX_SEGMENTS == 15
    assert abi.VMCOREINFO_BYTES == 4096


def test_parse_crash_xen_info_all_generations() -> None:
    words = [4, 17, 0x1000, 0x1010, 0x1020, 0x1030, 0x1040, 0x8]
    new = abi.parse_crash_xen_info(struct.pack("<10Q", *words, 0x7C800000, 0x12345))
    assert (new.major, new.minor, new.tainted, new.xen_phys_start, new.dom0_p2m_root) == (4, 17, 8, 0x7C800000, 0x12345)
    # The ctypes view agrees with the word-wise reading.
    info = abi.CrashXenInfo.from_buffer_copy(struct.pack("<10Q", *words, 0x7C800000, 0x12345))
    assert info.xen_phys_start == 0x7C800000 and info.dom0_pfn_to_mfn_frame_list_list == 0x12345
    v1 = abi.parse_crash_xen_info(struct.pack("<9Q", *words, 0x12345))
    assert (v1.xen_phys_start, v1.dom0_p2m_root) == (None, 0x12345)
    v0 = abi.parse_crash_xen_info(struct.pack("<8Q", *words))
    assert (v0.xen_phys_start, v0.dom0_p2m_root) == (None, None)
    with pytest.raises(ValueError, match="expected 64, 72 or 80"):
        abi.parse_crash_xen_info(b"\0" * 60)


def test_page_info_count_info_bits_per_release() -> None:
    """PG_mask(x, idx) = x << (64 - idx) (xen/arch/x86/include/asm/mm.h); 4.17 moved
    PGC_broken from idx 7 to 4 and PGC_state from 9 to 6."""
    from pykexec.layouts import xen as X

    def pg_mask(x: int, idx: int) -> int:
        return x << (64 - idx)

    assert (X.PGC_ALLOCATED, X.PGC_XEN_HEAP) == (pg_mask(1, 1), pg_mask(1, 2)) == (0x8000000000000000,
                                                                                  0x4000000000000000)
    new, old = X.pgc_layout(4, 17), X.pgc_layout(4, 16)
    assert new is X.pgc_layout(4, 20) and old is X.pgc_layout(4, 4) and X.pgc_layout(4, 3) is None
    assert new is not None and old is not None
    assert new.broken == pg_mask(1, 4) == 0x1000000000000000 and 3 << new.state_shift == pg_mask(3, 6)
    assert old.broken == pg_mask(1, 7) == 0x0200000000000000 and 3 << old.state_shift == pg_mask(3, 9)
    assert (X.DOMID_IO, X.DOMID_XEN, X.DOMID_COW) == (0x7FF1, 0x7FF2, 0x7FF3)
