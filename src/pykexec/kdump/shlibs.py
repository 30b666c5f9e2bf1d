"""The shared libraries a program needs, found as the dynamic loader finds them
(ld.so(8)): each ELF's ``DT_NEEDED`` names, searched in its ``DT_RPATH`` (when it
has no ``DT_RUNPATH``), its ``DT_RUNPATH``, the directories of ``/etc/ld.so.conf``
and the default ones; plus the loader itself (``PT_INTERP``).  Read with
pyelftools, so no ``ldd`` (which runs the program's loader) is needed.
"""

from __future__ import annotations

import glob
import os

from pykexec.errors import InputError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

#: Where ld.so looks last on x86_64 Debian, Fedora and SUSE (multiarch first).
DEFAULT_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib")
LD_SO_CONF = "/etc/ld.so.conf"
_STRING_TAGS = {"DT_NEEDED": "needed", "DT_RPATH": "rpath", "DT_RUNPATH": "runpath"}


def ld_so_conf_dirs(path: str = LD_SO_CONF, _depth: int = 0) -> list[str]:
    """The directories ``ld.so.conf`` lists, its ``include`` globs followed."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found: list[str] = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line.startswith("include") and _depth < 8:
            pattern = line.split(None, 1)[1] if len(line.split(None, 1)) > 1 else ""
            if not pattern.startswith("/"):
                pattern = os.path.join(os.path.dirname(path), pattern)
            for conf in sorted(glob.glob(pattern)):
                found += ld_so_conf_dirs(conf, _depth + 1)
        elif line.startswith("/"):
            found.append(line)
    return found


class ElfDeps:
    """What one ELF file asks of the loader."""

    def __init__(self, path: str) -> None:
        from elftools.common.exceptions import ELFError
        from elftools.elf.dynamic import DynamicSection
        from elftools.elf.elffile import ELFFile
        from elftools.elf.segments import InterpSegment

        self.path = path
        self.needed: list[str] = []
        self.rpath: list[str] = []
        self.runpath: list[str] = []
        self.interp = ""
        try:
            with open(path, "rb") as f:
                elf = ELFFile(f)
                self.elfclass = elf.elfclass
                self.machine = elf["e_machine"]
                for segment in elf.iter_segments():
                    if isinstance(segment, InterpSegment):
                        self.interp = segment.get_interp_name()
                dynamic = elf.get_section_by_name(".dynamic")
                for tag in dynamic.iter_tags() if isinstance(dynamic, DynamicSection) else ():
                    kind = tag.entry.d_tag
                    if kind in _STRING_TAGS:
                        # pyelftools sets the tag's string as an attribute named after it
                        value = str(getattr(tag, _STRING_TAGS[kind]))
                        if kind == "DT_NEEDED":
                            self.needed.append(value)
                        else:
                            getattr(self, _STRING_TAGS[kind]).extend(self._expand(value))
        except (OSError, ELFError) as err:
            raise InputError(f"{path}: not a readable ELF file ({err})") from None

    def _expand(self, text: str) -> list[str]:
        origin = os.path.dirname(os.path.realpath(self.path))
        return [d.replace("${ORIGIN}", origin).replace("$ORIGIN", origin) for d in text.split(":") if d]

    def fits(self, other: ElfDeps) -> bool:
        """``other`` can be loaded into this one's process (same class and machine)."""
        return (self.elfclass, self.machine) == (other.elfclass, other.machine)


def library_closure(programs: Iterable[str], system_dirs: Iterable[str] | None = None) -> list[str]:
    """Every shared library (and loader) the ELF files ``programs`` need, directly or
    through each other, as the paths the loader opens (maybe symlinks), sorted.
    :class:`InputError` naming the library and who needs it if one is not found."""
    dirs = list(system_dirs) if system_dirs is not None else [*ld_so_conf_dirs(), *DEFAULT_DIRS]
    found: set[str] = set()
    todo = [ElfDeps(p) for p in programs]
    seen = {os.path.realpath(d.path) for d in todo}
    while todo:
        elf = todo.pop()
        wanted: list[str] = []
        if elf.interp:
            wanted.append(elf.interp)
            found.add(elf.interp)
        search = (elf.rpath if not elf.runpath else []) + elf.runpath + dirs
        for name in elf.needed:
            path = name if "/" in name else _find(name, search, elf)
            if path is None:
                raise InputError(f"{elf.path} needs {name}, found in none of {', '.join(search)}")
            found.add(path)
            wanted.append(path)
        for path in wanted:
            real = os.path.realpath(path)
            if real not in seen:
                seen.add(real)
                todo.append(ElfDeps(path))
    return sorted(found)


def _find(name: str, search: list[str], needer: ElfDeps) -> str | None:
    for directory in search:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            try:
                if needer.fits(ElfDeps(path)):
                    return path
            except InputError:
                continue
    return None


def stripped(data: bytes) -> bytes:
    """An ELF64 little-endian file cut after its last loaded byte, without section
    headers: what the dynamic loader reads (program headers and segments) and no
    more -- debug information and symbol tables go (a wheel's extension can be 90%
    debug information).  Anything else is returned as it is."""
    import struct

    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1 or len(data) < 64:
        return data
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    end = phoff + phentsize * phnum
    for i in range(phnum):
        offset, _vaddr, _paddr, filesz = struct.unpack_from("<QQQQ", data, phoff + i * phentsize + 8)
        end = max(end, offset + filesz)
    if not phnum or end > len(data) or shoff < end:
        return data  # section headers among the segments, or no segments: leave it alone
    head = bytearray(data[:end])
    struct.pack_into("<Q", head, 0x28, 0)          # e_shoff
    struct.pack_into("<HHH", head, 0x3A, 0, 0, 0)  # e_shentsize, e_shnum, e_shstrndx
    return bytes(head)
