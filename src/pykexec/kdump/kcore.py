"""The live kernel's memory, read-only, from ``/proc/kcore`` (an ELF core of the
running kernel), for ``kdump estimate``: the same VMCOREINFO and physical memory a
crash dump would hold, read now.

``/proc/kcore`` has no ``mmap`` and a size of about 128 TiB, so it is read with
``pread`` (:class:`~pykexec.vmcore.elfcore.ElfCore` maps its file).  Its PT_LOADs:
the direct map of RAM at ``PAGE_OFFSET + paddr`` (p_paddr set; this is where the
kernel's RAM appears, one PT_LOAD per run of System RAM), the kernel image at
``__START_KERNEL_map`` (p_paddr set, the same bytes again), and vmalloc, modules and
the vmemmap (``struct page`` arrays), whose p_paddr is ``-1``.  The VMCOREINFO note is
there since Linux 4.19.  Root only; refused under lockdown=confidentiality.
"""

from __future__ import annotations

import errno
import os

from pykexec.crash import NO_PADDR
from pykexec.errors import KexecError
from pykexec.layouts import elf as E
from pykexec.layouts.x86_paging import START_KERNEL_MAP
from pykexec.vmcore.elfcore import Load
from pykexec.vmcore.errors import VmcoreError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pykexec.vmcore.vmcoreinfo import VmcoreInfo

KCORE = "/proc/kcore"
#: Largest PT_NOTE read (the kernel writes a few KiB: prstatus, prpsinfo, VMCOREINFO).
MAX_NOTES = 1 << 20


class KcoreUnavailable(KexecError):
    """/proc/kcore cannot be used; the message says why in one line."""


def _why(path: str, err: OSError) -> str:
    if err.errno == errno.ENOENT:
        return f"no {path} (a kernel built without CONFIG_PROC_KCORE)"
    if err.errno in (errno.EACCES, errno.EPERM):
        if os.geteuid() != 0:
            return f"{path} is readable by root only"
        return f"{path} is refused (kernel lockdown=confidentiality, or a security module)"
    return f"cannot read {path}: {err.strerror}"


class Kcore:
    """An open ``/proc/kcore`` (or any ELF64 core read the same way): ``loads``,
    ``notes``, ``vmcoreinfo``, and reads by physical or kernel virtual address.
    Use as a context manager."""

    def __init__(self, path: str | os.PathLike[str] = KCORE) -> None:
        self.path = os.fspath(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise KcoreUnavailable(_why(self.path, err)) from None
        try:
            self._parse()
        except OSError as err:
            self.close()
            raise KcoreUnavailable(_why(self.path, err)) from None
        except BaseException:
            self.close()
            raise

    def _pread(self, size: int, offset: int) -> bytes:
        data = os.pread(self._fd, size, offset)
        if len(data) != size:
            raise VmcoreError(f"{self.path}: {size} bytes at offset {offset:#x} read short ({len(data)})")
        return data

    def _parse(self) -> None:
        ehdr = E.EHDR64_FMT.unpack(self._pread(E.EHDR64_FMT.size, 0))
        ident, phoff, phentsize, phnum = ehdr[0], ehdr[5], ehdr[9], ehdr[10]
        if ident[:4] != E.ELFMAG or ident[E.EI_CLASS] != E.ELFCLASS64 or ident[E.EI_DATA] != E.ELFDATA2LSB:
            raise VmcoreError(f"{self.path}: not an ELF64 little-endian core")
        if phentsize != E.PHDR64_FMT.size or not 0 < phnum < 1 << 16:
            raise VmcoreError(f"{self.path}: unexpected program headers ({phnum} of {phentsize} bytes)")
        self.loads: list[Load] = []
        self.notes: list[E.Note] = []
        table = self._pread(phnum * E.PHDR64_FMT.size, phoff)
        for p_type, _flags, offset, vaddr, paddr, filesz, memsz, _align in E.PHDR64_FMT.iter_unpack(table):
            if p_type == E.PT_LOAD and memsz:
                self.loads.append(Load(offset, vaddr, paddr, filesz, memsz, filesz))
            elif p_type == E.PT_NOTE and 0 < filesz <= MAX_NOTES:
                try:
                    self.notes += E.iter_notes(self._pread(filesz, offset))
                except E.NoteFormatError as err:
                    raise VmcoreError(f"{self.path}: corrupt note: {err}") from None
        from pykexec.vmcore.vmcoreinfo import VmcoreInfo

        raw = next((n.desc for n in self.notes if n.name == b"VMCOREINFO" and n.type == E.NT_VMCOREINFO), None)
        self.vmcoreinfo: VmcoreInfo | None = VmcoreInfo(raw) if raw is not None else None

    def ram_loads(self) -> list[Load]:
        """The direct map's PT_LOADs: the RAM a dump of this kernel holds (the kernel
        image's own PT_LOAD repeats part of it)."""
        return [seg for seg in self.loads if seg.paddr != NO_PADDR and seg.vaddr < START_KERNEL_MAP]

    def read(self, addr: int, size: int, *, physical: bool = False) -> bytes:
        """``size`` bytes at physical (or kernel virtual) ``addr``, across PT_LOADs."""
        out = bytearray()
        while len(out) < size:
            at = addr + len(out)
            seg = self._segment(at, physical)
            rel = at - (seg.paddr if physical else seg.vaddr)
            n = min(size - len(out), seg.filesz - rel)
            try:
                out += self._pread(n, seg.offset + rel)
            except OSError as err:
                raise VmcoreError(f"{self.path}: read at {at:#x}: {err.strerror}") from None
        return bytes(out)

    def _segment(self, addr: int, physical: bool) -> Load:
        for seg in self.loads:
            start = seg.paddr if physical else seg.vaddr
            if physical and seg.paddr == NO_PADDR:
                continue
            if start <= addr < start + seg.filesz:
                return seg
        kind = "physical" if physical else "virtual"
        raise VmcoreError(f"{self.path}: no PT_LOAD covers {kind} address {addr:#x}")

    def require_vmcoreinfo(self) -> VmcoreInfo:
        if self.vmcoreinfo is None:
            raise KcoreUnavailable(f"{self.path} has no VMCOREINFO note (a kernel before 4.19)")
        return self.vmcoreinfo

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Kcore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
