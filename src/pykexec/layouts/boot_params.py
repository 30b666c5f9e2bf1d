"""The x86 Linux boot protocol: setup header, boot_params ("zero page"), e820, setup_data,
and the limits the setup header states (setup size, command line length).

The one definition of these layouts in pykexec (see Linux's Documentation/arch/x86/boot.rst
and zero-page.rst). Offsets are pinned by tests against known bytes.
"""

from __future__ import annotations

import ctypes
from ctypes import c_uint8 as u8, c_uint16 as u16, c_uint32 as u32, c_uint64 as u64

from pykexec.errors import UsageError

SETUP_HEADER_OFFSET = 0x1F1
HDRS_MAGIC = 0x53726448  # "HdrS"
BOOT_FLAG = 0xAA55
SECTOR_SIZE = 512
#: syssize counts the protected-mode kernel in 16-byte paragraphs.
SYSSIZE_UNIT = 16
STARTUP_64_OFFSET = 0x200  # 64-bit entry, relative to the protected-mode kernel's start

# loadflags
LOADED_HIGH = 0x01
KEEP_SEGMENTS = 0x40
CAN_USE_HEAP = 0x80

# xloadflags
XLF_KERNEL_64 = 1 << 0
XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1
XLF_EFI_HANDOVER_32 = 1 << 2
XLF_EFI_HANDOVER_64 = 1 << 3
XLF_EFI_KEXEC = 1 << 4

# Protocol versions that added the fields checked here.
PROTOCOL_CMDLINE_SIZE = 0x0206
PROTOCOL_PAYLOAD = 0x0208
#: The command line limit before cmdline_size existed (protocol < 2.06).
OLD_CMDLINE_MAX = 255
#: What Linux's kexec_file_load keeps free in cmdline_size for "elfcorehdr=0x<64-bit> "
#: (MAX_ELFCOREHDR_STR_LEN in arch/x86/kernel/kexec-bzimage64.c), on every load.
FILE_LOAD_ELFCOREHDR_RESERVE = 30

LOADER_TYPE_KEXEC = 0xD0  # boot loader id 0xD ("kexec-tools"), version 0
CL_MAGIC = 0xA33F
E820_MAX_ENTRIES_ZEROPAGE = 128

# setup_data types
SETUP_E820_EXT = 1
SETUP_DTB = 2
SETUP_PCI = 3
SETUP_EFI = 4
SETUP_RNG_SEED = 9


class _Packed(ctypes.LittleEndianStructure):
    _pack_ = 1

    def to_bytes(self) -> bytes:
        return bytes(self)


class SetupHeader(_Packed):
    """struct setup_header, at offset 0x1f1 of both the bzImage and boot_params."""

    _fields_ = [
        ("setup_sects", u8),
        ("root_flags", u16),
        ("syssize", u32),
        ("ram_size", u16),
        ("vid_mode", u16),
        ("root_dev", u16),
        ("boot_flag", u16),
        ("jump", u16),
        ("header", u32),
        ("version", u16),
        ("realmode_swtch", u32),
        ("start_sys_seg", u16),
        ("kernel_version", u16),
        ("type_of_loader", u8),
        ("loadflags", u8),
        ("setup_move_size", u16),
        ("code32_start", u32),
        ("ramdisk_image", u32),
        ("ramdisk_size", u32),
        ("bootsect_kludge", u32),
        ("heap_end_ptr", u16),
        ("ext_loader_ver", u8),
        ("ext_loader_type", u8),
        ("cmd_line_ptr", u32),
        ("initrd_addr_max", u32),
        ("kernel_alignment", u32),
        ("relocatable_kernel", u8),
        ("min_alignment", u8),
        ("xloadflags", u16),
        ("cmdline_size", u32),
        ("hardware_subarch", u32),
        ("hardware_subarch_data", u64),
        ("payload_offset", u32),
        ("payload_length", u32),
        ("setup_data", u64),
        ("pref_address", u64),
        ("init_size", u32),
        ("handover_offset", u32),
        ("kernel_info_offset", u32),
    ]


class ScreenInfo(_Packed):
    _fields_ = [
        ("orig_x", u8),
        ("orig_y", u8),
        ("ext_mem_k", u16),
        ("orig_video_page", u16),
        ("orig_video_mode", u8),
        ("orig_video_cols", u8),
        ("flags", u8),
        ("unused2", u8),
        ("orig_video_ega_bx", u16),
        ("unused3", u16),
        ("orig_video_lines", u8),
        ("orig_video_isVGA", u8),
        ("orig_video_points", u16),
        ("lfb_width", u16),
        ("lfb_height", u16),
        ("lfb_depth", u16),
        ("lfb_base", u32),
        ("lfb_size", u32),
        ("cl_magic", u16),
        ("cl_offset", u16),
        ("lfb_linelength", u16),
        ("red_size", u8),
        ("red_pos", u8),
        ("green_size", u8),
        ("green_pos", u8),
        ("blue_size", u8),
        ("blue_pos", u8),
        ("rsvd_size", u8),
        ("rsvd_pos", u8),
        ("vesapm_seg", u16),
        ("vesapm_off", u16),
        ("pages", u16),
        ("vesa_attributes", u16),
        ("capabilities", u32),
        ("ext_lfb_base", u32),
        ("_reserved", u8 * 2),
    ]


class EfiInfo(_Packed):
    _fields_ = [
        ("efi_loader_signature", u32),
        ("efi_systab", u32),
        ("efi_memdesc_size", u32),
        ("efi_memdesc_version", u32),
        ("efi_memmap", u32),
        ("efi_memmap_size", u32),
        ("efi_systab_hi", u32),
        ("efi_memmap_hi", u32),
    ]


class E820Entry(_Packed):
    _fields_ = [("addr", u64), ("size", u64), ("type", u32)]


class SetupDataHeader(_Packed):
    """struct setup_data without its flexible payload; ``len`` counts the payload only."""

    _fields_ = [("next", u64), ("type", u32), ("len", u32)]


class EfiSetupData(_Packed):
    """Payload of SETUP_EFI setup_data: what a kexec'd kernel cannot learn from firmware
    again, because ExitBootServices and SetVirtualAddressMap happen only once."""

    _fields_ = [
        ("fw_vendor", u64),
        ("runtime", u64),  # "__unused" in newer kernels, which find it via the system table
        ("tables", u64),
        ("smbios", u64),
        ("reserved", u64 * 8),
    ]


class EfiMemoryDesc(_Packed):
    """efi_memory_desc_t, as passed in the runtime map (efi_info.efi_memmap)."""

    _fields_ = [
        ("type", u32),
        ("pad", u32),
        ("phys_addr", u64),
        ("virt_addr", u64),
        ("num_pages", u64),
        ("attribute", u64),
    ]


EFI64_LOADER_SIGNATURE = 0x34364C45  # "EL64"


class BootParams(_Packed):
    """struct boot_params: exactly one 4 KiB page."""

    _fields_ = [
        ("screen_info", ScreenInfo),            # 0x000
        ("apm_bios_info", u8 * 0x14),           # 0x040
        ("_pad2", u8 * 4),                      # 0x054
        ("tboot_addr", u64),                    # 0x058
        ("ist_info", u8 * 0x10),                # 0x060
        ("acpi_rsdp_addr", u64),                # 0x070
        ("_pad3", u8 * 8),                      # 0x078
        ("hd0_info", u8 * 16),                  # 0x080
        ("hd1_info", u8 * 16),                  # 0x090
        ("sys_desc_table", u8 * 0x10),          # 0x0a0
        ("olpc_ofw_header", u8 * 0x10),         # 0x0b0
        ("ext_ramdisk_image", u32),             # 0x0c0
        ("ext_ramdisk_size", u32),              # 0x0c4
        ("ext_cmd_line_ptr", u32),              # 0x0c8
        ("_pad4", u8 * 112),                    # 0x0cc
        ("cc_blob_address", u32),               # 0x13c
        ("edid_info", u8 * 0x80),               # 0x140
        ("efi_info", EfiInfo),                  # 0x1c0
        ("alt_mem_k", u32),                     # 0x1e0
        ("scratch", u32),                       # 0x1e4
        ("e820_entries", u8),                   # 0x1e8
        ("eddbuf_entries", u8),                 # 0x1e9
        ("edd_mbr_sig_buf_entries", u8),        # 0x1ea
        ("kbd_status", u8),                     # 0x1eb
        ("secure_boot", u8),                    # 0x1ec
        ("_pad5", u8 * 2),                      # 0x1ed
        ("sentinel", u8),                       # 0x1ef
        ("_pad6", u8 * 1),                      # 0x1f0
        ("hdr", SetupHeader),                   # 0x1f1
        ("_pad7", u8 * (0x290 - 0x1F1 - 0x7B)),
        ("edd_mbr_sig_buffer", u32 * 16),       # 0x290
        ("e820_table", E820Entry * E820_MAX_ENTRIES_ZEROPAGE),  # 0x2d0
        ("_pad8", u8 * 48),                     # 0xcd0
        ("eddbuf", u8 * (6 * 82)),              # 0xd00
        ("_pad9", u8 * 276),                    # 0xeec
    ]


assert ctypes.sizeof(SetupHeader) == 0x7B
#: Where the setup header (protocol 2.12+: all of SetupHeader) ends in the image, 0x26c.
SETUP_HEADER_END = SETUP_HEADER_OFFSET + ctypes.sizeof(SetupHeader)
assert ctypes.sizeof(ScreenInfo) == 0x40
assert ctypes.sizeof(BootParams) == 0x1000
assert ctypes.sizeof(EfiSetupData) == 96
assert ctypes.sizeof(EfiMemoryDesc) == 40


def setup_size(header: SetupHeader) -> int:
    """Bytes of real-mode setup (boot sector included) before the protected-mode kernel;
    setup_sects 0 means 4, as the oldest kernels left it."""
    return ((header.setup_sects or 4) + 1) * SECTOR_SIZE


def cmdline_limit(header: SetupHeader, *, file_load: bool = False) -> int:
    """The longest command line, without its NUL, this kernel takes: ``cmdline_size``
    from protocol 2.06 on, 255 before. Through kexec_file_load, Linux counts the NUL
    and keeps room for the elfcorehdr= it may prepend, even for a normal load."""
    if header.version < PROTOCOL_CMDLINE_SIZE:
        return OLD_CMDLINE_MAX
    if file_load:
        return max(0, header.cmdline_size - 1 - FILE_LOAD_ELFCOREHDR_RESERVE)
    return int(header.cmdline_size)


def check_cmdline(header: SetupHeader, cmdline: bytes, *, with_crash_additions: bool = False,
                  file_load: bool = False) -> None:
    """Refuse, before any syscall, a command line the kernel (and kexec-tools) would refuse:
    longer than :func:`cmdline_limit`, or with a NUL inside. ``with_crash_additions`` says
    that ``cmdline`` already carries what pykexec appends for a crash kernel."""
    limit = cmdline_limit(header, file_load=file_load)
    if len(cmdline) > limit:
        what = " with the crash kernel's additions" if with_crash_additions else ""
        how = (f" through kexec_file_load (cmdline_size {header.cmdline_size}, less the NUL and "
               f"{FILE_LOAD_ELFCOREHDR_RESERVE} bytes kept for elfcorehdr=)") if file_load else ""
        raise UsageError(f"command line{what} is {len(cmdline)} bytes; this kernel accepts at most {limit}{how}")
    if b"\0" in cmdline:
        raise UsageError("command line contains a NUL byte")
