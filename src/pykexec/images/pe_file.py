"""A PE/COFF file's section table, read and checked against the file
(layouts: :mod:`pykexec.layouts.pe`).

Every check a loader relies on happens here, once, before anything uses a section:
headers and table inside the file, each section's data inside the file, no two
sections sharing file bytes or memory. A file that fails one gets an
:class:`ImageFormatError` naming the rule.
"""

from __future__ import annotations

import ctypes
from collections import namedtuple

from pykexec.errors import ImageFormatError
from pykexec.layouts import pe

MAX_SECTIONS = 96  # the PE format allows 96 sections in an image; a UKI has about 15
MAX_SECTION_SIZE = 1 << 30  # a kernel or initrd is far smaller; more is an attack
# Zeros a used section may have past its file data (objcopy'd UKI sections have none).
MAX_ZERO_FILL = 1 << 20


class Section(namedtuple("Section", "index name virtual_address virtual_size file_offset file_size")):
    """One section: ``file_size`` bytes at ``file_offset`` are its data, zero-filled up to
    ``virtual_size`` (the loader reads min(SizeOfRawData, VirtualSize))."""

    __slots__ = ()
    index: int
    name: str
    virtual_address: int
    virtual_size: int
    file_offset: int
    file_size: int


class PeFile(namedtuple("PeFile", "machine sections data")):
    __slots__ = ()
    machine: int
    sections: tuple[Section, ...]
    data: bytes

    def section_data(self, section: Section) -> bytes:
        """The section as a loader puts it in memory (systemd-stub reads it there)."""
        body = self.data[section.file_offset:section.file_offset + section.file_size]
        if section.virtual_size - len(body) > MAX_ZERO_FILL:
            raise ImageFormatError(f"PE section {section.name!r} has {section.virtual_size:#x} bytes in memory but "
                                   f"only {len(body):#x} in the file (more than {MAX_ZERO_FILL >> 20} MiB of zeros)")
        if section.virtual_size > len(body):
            body += bytes(section.virtual_size - len(body))
        return body

    def find(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)


def looks_like_pe(data: bytes) -> str | None:
    """None when ``data`` starts like a PE file (DOS stub pointing at a PE signature),
    else why not. Cheap: for probing, before :func:`parse` checks the rest."""
    if data[:2] != pe.DOS_MAGIC:
        return "no 'MZ' DOS header"
    if len(data) < pe.DOS_HEADER_SIZE:
        return f"PE file cut short in its DOS header ({len(data)} bytes)"
    lfanew = int.from_bytes(data[pe.E_LFANEW_OFFSET:pe.E_LFANEW_OFFSET + 4], "little")
    if lfanew + pe.PE_HEADER_SIZE > len(data):
        return f"PE file cut short: its PE header at {lfanew:#x} lies past the end of the {len(data)}-byte file"
    if data[lfanew:lfanew + 4] != pe.PE_SIGNATURE:
        return f"no PE signature at {lfanew:#x} (an MZ file that is not PE)"
    return None


def parse(data: bytes) -> PeFile:
    """The checked section table of ``data``; raises ImageFormatError in one line."""
    why = looks_like_pe(data)
    if why is not None:
        raise ImageFormatError(why)
    lfanew = int.from_bytes(data[pe.E_LFANEW_OFFSET:pe.E_LFANEW_OFFSET + 4], "little")
    coff = pe.CoffFileHeader.from_buffer_copy(data, lfanew + len(pe.PE_SIGNATURE))
    opt = lfanew + pe.PE_HEADER_SIZE
    if coff.size_of_optional_header < 2 or opt + coff.size_of_optional_header > len(data):
        raise ImageFormatError(f"PE optional header ({coff.size_of_optional_header} bytes at {opt:#x}) "
                               f"does not fit in the {len(data)}-byte file")
    magic = int.from_bytes(data[opt:opt + 2], "little")
    if magic not in pe.OPTIONAL_HEADER_MAGICS:
        raise ImageFormatError(f"PE optional header magic {magic:#x}, expected 0x10b or 0x20b")
    count = coff.number_of_sections
    if not 0 < count <= MAX_SECTIONS:
        raise ImageFormatError(f"PE file declares {count} sections (1 to {MAX_SECTIONS} expected)")
    table = opt + coff.size_of_optional_header
    entry = ctypes.sizeof(pe.SectionHeader)
    if table + count * entry > len(data):
        raise ImageFormatError(f"PE file cut short: its {count} section headers at {table:#x} end past "
                               f"the end of the {len(data)}-byte file")
    sections = tuple(_section(i, pe.SectionHeader.from_buffer_copy(data, table + i * entry), len(data))
                     for i in range(count))
    _check_overlaps(sections, table + count * entry)
    return PeFile(coff.machine, sections, data)


def _section(index: int, h: pe.SectionHeader, size: int) -> Section:
    name = h.name.decode("ascii", "replace")  # c_char arrays stop at the first NUL
    file_size = min(h.size_of_raw_data, h.virtual_size) if h.virtual_size else h.size_of_raw_data
    if h.virtual_size > MAX_SECTION_SIZE:
        raise ImageFormatError(f"PE section {name!r} claims {h.virtual_size:#x} bytes in memory "
                               f"(more than {MAX_SECTION_SIZE >> 20} MiB)")
    if file_size and h.pointer_to_raw_data + h.size_of_raw_data > size:
        cut = "cut short" if h.pointer_to_raw_data < size else "beyond the end of the file"
        raise ImageFormatError(f"PE section {name!r} lies outside the file: {h.size_of_raw_data:#x} bytes at "
                               f"{h.pointer_to_raw_data:#x}, the file has {size:#x} ({cut})")
    return Section(index, name, h.virtual_address, h.virtual_size or h.size_of_raw_data,
                   h.pointer_to_raw_data if file_size else 0, file_size)


def _check_overlaps(sections: tuple[Section, ...], headers_end: int) -> None:
    """No section's data overlaps the headers or another's, in the file or in memory
    (a loader would lay one over the other, and which bytes win is nobody's guess)."""
    in_file = sorted((s for s in sections if s.file_size), key=lambda s: s.file_offset)
    if in_file and in_file[0].file_offset < headers_end:
        raise ImageFormatError(f"PE section {in_file[0].name!r} at file offset {in_file[0].file_offset:#x} "
                               f"overlaps the headers (which end at {headers_end:#x})")
    for a, b in zip(in_file, in_file[1:]):
        if b.file_offset < a.file_offset + a.file_size:
            raise ImageFormatError(f"PE sections {a.name!r} and {b.name!r} overlap in the file "
                                   f"({a.file_offset:#x}+{a.file_size:#x} and {b.file_offset:#x})")
    in_memory = sorted((s for s in sections if s.virtual_size), key=lambda s: s.virtual_address)
    for a, b in zip(in_memory, in_memory[1:]):
        if b.virtual_address < a.virtual_address + a.virtual_size:
            raise ImageFormatError(f"PE sections {a.name!r} and {b.name!r} overlap in memory "
                                   f"({a.virtual_address:#x}+{a.virtual_size:#x} and {b.virtual_address:#x})")
