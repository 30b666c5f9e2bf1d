"""pykexec.layouts.elf: the ELF64 header/note layouts, pinned against hand-written bytes."""

from __future__ import annotations

import ctypes
import struct

import pytest

from pykexec.layouts.elf import (
    EHDR64_FMT,
    EM_X86_64,
    ET_CORE,
    NHDR_FMT,
    NT_PRSTATUS,
    PHDR64_FMT,
    PT_LOAD,
    PT_NOTE,
    Elf64_Ehdr,
    Elf64_Nhdr,
    Elf64_Phdr,
    Note,
    NoteFormatError,
    iter_notes,
    note_pad,
    pack_note,
)


def test_constants() -> None:
    assert (PT_LOAD, PT_NOTE, ET_CORE, EM_X86_64, NT_PRSTATUS) == (1, 4, 4, 62, 1)


def test_sizes_and_offsets() -> None:
    assert ctypes.sizeof(Elf64_Ehdr) == 64 == EHDR64_FMT.size
    assert ctypes.sizeof(Elf64_Phdr) == 56 == PHDR64_FMT.size
    assert ctypes.sizeof(Elf64_Nhdr) == 12 == NHDR_FMT.size
    assert Elf64_Ehdr.e_phoff.offset == 32 and Elf64_Ehdr.e_phnum.offset == 56
    assert Elf64_Phdr.p_offset.offset == 8 and Elf64_Phdr.p_memsz.offset == 40


def test_ehdr_bytes() -> None:
    h = Elf64_Ehdr()
    h.e_ident[:7] = [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1]
    h.e_type, h.e_machine, h.e_version = ET_CORE, EM_X86_64, 1
    h.e_phoff, h.e_ehsize, h.e_phentsize, h.e_phnum = 64, 64, 56, 3
    expected = bytes.fromhex(
        "7f454c46020101000000000000000000"  # e_ident
        "0400" "3e00" "01000000"            # e_type, e_machine, e_version
        "0000000000000000"                  # e_entry
        "4000000000000000"                  # e_phoff
        "0000000000000000"                  # e_shoff
        "00000000" "4000" "3800" "0300"     # e_flags, e_ehsize, e_phentsize, e_phnum
        "0000" "0000" "0000")               # e_shentsize, e_shnum, e_shstrndx
    assert bytes(h) == expected
    assert EHDR64_FMT.pack(bytes(h.e_ident), 4, 62, 1, 0, 64, 0, 0, 64, 56, 3, 0, 0, 0) == expected


def test_phdr_bytes() -> None:
    p = Elf64_Phdr(PT_LOAD, 7, 0x2000, 0xFFFFFFFF81000000, 0x1000000, 0x3000, 0x4000, 0)
    expected = bytes.fromhex("01000000" "07000000" "0020000000000000" "00000081ffffffff"
                             "0000000100000000" "0030000000000000" "0040000000000000"
                             "0000000000000000")
    assert bytes(p) == expected
    assert PHDR64_FMT.pack(1, 7, 0x2000, 0xFFFFFFFF81000000, 0x1000000, 0x3000, 0x4000, 0) == expected


def test_pack_note_pads_name_and_desc_to_4() -> None:
    n = pack_note(b"CORE", NT_PRSTATUS, b"\x01\x02\x03\x04\x05")
    assert n == (struct.pack("<III", 5, 5, 1) + b"CORE\0\0\0\0" + b"\x01\x02\x03\x04\x05\0\0\0")
    assert note_pad(0) == 0 and note_pad(1) == 4 and note_pad(11) == 12 and note_pad(12) == 12


def test_iter_notes_roundtrip_and_empty_terminator() -> None:
    buf = (pack_note(b"CORE", 1, bytes(336)) + pack_note(b"VMCOREINFO", 0, b"A=1\nB=2")
           + bytes(12) + pack_note(b"after", 9, b"x"))
    notes = list(iter_notes(buf))
    assert notes == [Note(b"CORE", 1, bytes(336)), Note(b"VMCOREINFO", 0, b"A=1\nB=2")]
    assert len(list(iter_notes(buf, stop_at_empty=False))) == 4


def test_iter_notes_last_desc_unpadded_and_overrun() -> None:
    n = pack_note(b"X", 3, b"abcde")
    assert list(iter_notes(n[:-3])) == [Note(b"X", 3, b"abcde")]  # desc padding missing: fine
    with pytest.raises(NoteFormatError):
        list(iter_notes(n[:-4]))  # desc itself cut
    with pytest.raises(NoteFormatError):
        list(iter_notes(struct.pack("<III", 4, 0xFFFFFFF0, 1) + b"CORE"))
