"""ELF64 headers and notes (little-endian), as used by core files and elfcorehdr.

This is the only definition of these layouts in pykexec: the vmcore reader
(``pykexec.vmcore.elfcore``) and the elfcorehdr writer both import it.
``tests/unit/test_vmcore_elf_layouts.py`` pins the sizes and the byte images
against hand-written headers.

Notes (``Elf64_Nhdr`` + name + desc) are 4-byte aligned in both the name and
the desc, which is what Linux writes into ``/proc/vmcore`` and the crash
notes, on 64-bit targets too.
"""

from __future__ import annotations

import ctypes
from collections import namedtuple
from collections.abc import Iterator

from pykexec.layouts.struct_format import struct_format

# e_ident
ELFMAG = b"\x7fELF"
EI_CLASS = 4
EI_DATA = 5
EI_VERSION = 6
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
ELFDATA2MSB = 2
EV_CURRENT = 1

# e_type
ET_NONE = 0
ET_REL = 1
ET_EXEC = 2
ET_DYN = 3
ET_CORE = 4

# e_machine
EM_386 = 3
EM_X86_64 = 62
EM_AARCH64 = 183

# p_type
PT_NULL = 0
PT_LOAD = 1
PT_NOTE = 4

# sh_type
SHT_SYMTAB = 2

# p_flags
PF_X = 1
PF_W = 2
PF_R = 4

# n_type, for name "CORE"
NT_PRSTATUS = 1
NT_PRFPREG = 2
NT_PRPSINFO = 3
NT_TASKSTRUCT = 4
NT_AUXV = 6
#: n_type of the "VMCOREINFO" note (and of Xen's "VMCOREINFO_XEN").
NT_VMCOREINFO = 0
#: pykexec's own note in a Xen elfcorehdr: the hypervisor's physical start (u64), for
#: dump tools when Xen's crash-info note is too old to carry it.
PYKEXEC_NOTE_NAME = b"PYKEXEC"
NT_PYKEXEC_XEN_PHYS_START = 1
#: ... and Xen's console-ring symbols as dom0 read them from /proc/xen/xensyms at load
#: time ("name=0xADDR" lines), so the hypervisor's log can be read without xen-syms.
NT_PYKEXEC_XEN_SYMBOLS = 2


class Elf64_Ehdr(ctypes.LittleEndianStructure):
    """ELF64 file header (64 bytes)."""

    _fields_ = [
        ("e_ident", ctypes.c_uint8 * 16),
        ("e_type", ctypes.c_uint16),
        ("e_machine", ctypes.c_uint16),
        ("e_version", ctypes.c_uint32),
        ("e_entry", ctypes.c_uint64),
        ("e_phoff", ctypes.c_uint64),
        ("e_shoff", ctypes.c_uint64),
        ("e_flags", ctypes.c_uint32),
        ("e_ehsize", ctypes.c_uint16),
        ("e_phentsize", ctypes.c_uint16),
        ("e_phnum", ctypes.c_uint16),
        ("e_shentsize", ctypes.c_uint16),
        ("e_shnum", ctypes.c_uint16),
        ("e_shstrndx", ctypes.c_uint16),
    ]


class Elf64_Phdr(ctypes.LittleEndianStructure):
    """ELF64 program header (56 bytes)."""

    _fields_ = [
        ("p_type", ctypes.c_uint32),
        ("p_flags", ctypes.c_uint32),
        ("p_offset", ctypes.c_uint64),
        ("p_vaddr", ctypes.c_uint64),
        ("p_paddr", ctypes.c_uint64),
        ("p_filesz", ctypes.c_uint64),
        ("p_memsz", ctypes.c_uint64),
        ("p_align", ctypes.c_uint64),
    ]


class Elf64_Shdr(ctypes.LittleEndianStructure):
    """ELF64 section header (64 bytes)."""

    _fields_ = [
        ("sh_name", ctypes.c_uint32),
        ("sh_type", ctypes.c_uint32),
        ("sh_flags", ctypes.c_uint64),
        ("sh_addr", ctypes.c_uint64),
        ("sh_offset", ctypes.c_uint64),
        ("sh_size", ctypes.c_uint64),
        ("sh_link", ctypes.c_uint32),
        ("sh_info", ctypes.c_uint32),
        ("sh_addralign", ctypes.c_uint64),
        ("sh_entsize", ctypes.c_uint64),
    ]


class Elf64_Nhdr(ctypes.LittleEndianStructure):
    """ELF64 note header (12 bytes; the same three u32 as ELF32)."""

    _fields_ = [
        ("n_namesz", ctypes.c_uint32),
        ("n_descsz", ctypes.c_uint32),
        ("n_type", ctypes.c_uint32),
    ]


assert ctypes.sizeof(Elf64_Ehdr) == 64
assert ctypes.sizeof(Elf64_Phdr) == 56
assert ctypes.sizeof(Elf64_Shdr) == 64
assert ctypes.sizeof(Elf64_Nhdr) == 12

#: The same layouts as struct formats, for bulk unpacking without constructing
#: ctypes objects (the reader's hot path).
EHDR64_FMT = struct_format(Elf64_Ehdr)
PHDR64_FMT = struct_format(Elf64_Phdr)
SHDR64_FMT = struct_format(Elf64_Shdr)
NHDR_FMT = struct_format(Elf64_Nhdr)

NOTE_ALIGN = 4


def note_pad(n: int) -> int:
    """``n`` rounded up to the note alignment (4)."""
    return (n + NOTE_ALIGN - 1) & ~(NOTE_ALIGN - 1)


class Note(namedtuple("Note", "name type desc")):
    """One ELF note: name without its terminating NUL, type, descriptor bytes."""

    __slots__ = ()
    name: bytes
    type: int
    desc: bytes


def pack_note(name: bytes, n_type: int, desc: bytes) -> bytes:
    """One note: header, name + NUL padded to 4, desc padded to 4.

    ``n_namesz`` counts the NUL, as Linux writes it ("CORE" -> 5).
    """
    name_z = name + b"\0"
    hdr = bytes(Elf64_Nhdr(len(name_z), len(desc), n_type))
    return (hdr + name_z + b"\0" * (note_pad(len(name_z)) - len(name_z))
            + desc + b"\0" * (note_pad(len(desc)) - len(desc)))


class NoteFormatError(ValueError):
    """A note's sizes run past the end of its buffer."""


def iter_notes(buf: bytes | memoryview, *, stop_at_empty: bool = True) -> Iterator[Note]:
    """The notes in ``buf`` (a PT_NOTE's contents), in order.

    Stops at the end of ``buf`` or, with ``stop_at_empty``, at a note with
    ``n_namesz == 0`` and ``n_descsz == 0`` (how Linux terminates a per-CPU
    crash-note buffer).  Trailing bytes shorter than a header are ignored.
    Raises :class:`NoteFormatError` if a note's name or desc runs past the
    buffer.  The name is returned without its trailing NULs.
    """
    mv = memoryview(buf)
    off, end = 0, len(mv)
    while end - off >= NHDR_FMT.size:
        namesz, descsz, n_type = NHDR_FMT.unpack_from(mv, off)
        if stop_at_empty and namesz == 0 and descsz == 0:
            return
        name_off = off + NHDR_FMT.size
        desc_off = name_off + note_pad(namesz)
        next_off = desc_off + note_pad(descsz)
        # The last note's desc padding may be missing; only the bytes themselves must fit.
        if desc_off > end or desc_off + descsz > end:
            raise NoteFormatError(f"note at offset {off} (namesz={namesz}, descsz={descsz}) "
                                  f"runs past the end of its {end}-byte segment")
        name = bytes(mv[name_off:name_off + namesz]).rstrip(b"\0")
        yield Note(name, n_type, bytes(mv[desc_off:desc_off + descsz]))
        off = next_off


# --- NT_PRSTATUS on x86_64 (Linux's and Xen's struct elf_prstatus) -----------------------

#: struct user_regs_struct, in pr_reg order.
X86_64_REGISTERS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
                    "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
                    "gs_base", "ds", "es", "fs", "gs")


class Elf64_Prstatus_x86_64(ctypes.LittleEndianStructure):
    """struct elf_prstatus for x86_64 (336 bytes): the desc of a "CORE" NT_PRSTATUS note,
    which the kernel (or Xen) fills for each CPU when it crashes."""

    _fields_ = [
        ("si_signo", ctypes.c_int32),
        ("si_code", ctypes.c_int32),
        ("si_errno", ctypes.c_int32),
        ("pr_cursig", ctypes.c_int16),
        ("_pad0", ctypes.c_int16),
        ("pr_sigpend", ctypes.c_uint64),
        ("pr_sighold", ctypes.c_uint64),
        ("pr_pid", ctypes.c_int32),
        ("pr_ppid", ctypes.c_int32),
        ("pr_pgrp", ctypes.c_int32),
        ("pr_sid", ctypes.c_int32),
        ("pr_utime", ctypes.c_int64 * 2),
        ("pr_stime", ctypes.c_int64 * 2),
        ("pr_cutime", ctypes.c_int64 * 2),
        ("pr_cstime", ctypes.c_int64 * 2),
        ("pr_reg", ctypes.c_uint64 * len(X86_64_REGISTERS)),
        ("pr_fpvalid", ctypes.c_int32),
        ("_pad1", ctypes.c_int32),
    ]


assert ctypes.sizeof(Elf64_Prstatus_x86_64) == 336
