"""The Linux kexec syscall ABI (include/uapi/linux/kexec.h): struct kexec_segment and flags."""

from __future__ import annotations

import ctypes

from pykexec.layouts.elf import EM_386, EM_X86_64

# kexec_load flags
KEXEC_ON_CRASH = 0x00000001
KEXEC_PRESERVE_CONTEXT = 0x00000002
# The image's architecture: its ELF machine in the high 16 bits.
KEXEC_ARCH_X86_64 = EM_X86_64 << 16
KEXEC_ARCH_386 = EM_386 << 16

# kexec_file_load flags
KEXEC_FILE_UNLOAD = 0x00000001
KEXEC_FILE_ON_CRASH = 0x00000002
KEXEC_FILE_NO_INITRAMFS = 0x00000004

KEXEC_SEGMENT_MAX = 16

# reboot(2)
LINUX_REBOOT_MAGIC1 = 0xFEE1DEAD
LINUX_REBOOT_MAGIC2 = 672274793
LINUX_REBOOT_CMD_KEXEC = 0x45584543

# x86_64 syscall numbers
NR_KEXEC_LOAD = 246
NR_KEXEC_FILE_LOAD = 320
NR_REBOOT = 169


class KexecSegment(ctypes.Structure):
    """struct kexec_segment as the x86_64 kernel reads it (native alignment, 32 bytes)."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("bufsz", ctypes.c_size_t),
        ("mem", ctypes.c_ulong),
        ("memsz", ctypes.c_size_t),
    ]


assert ctypes.sizeof(KexecSegment) == 32
