"""A load plan: the segments, entry point and backend of one kexec load. Plans are
pure data; each backend checks them against its own rules (:mod:`pykexec.backends`)."""

from __future__ import annotations

import hashlib
import os
from collections import namedtuple

from pykexec.memory import Range

BACKEND_KEXEC_LOAD = "kexec_load"
BACKEND_KEXEC_FILE_LOAD = "kexec_file_load"
BACKEND_XEN = "xen_kexec_op"  # in a Xen PV dom0: the kexec_op hypercall


class Segment:
    """One block of memory for the next kernel: ``data`` at ``mem``, zero-filled to ``memsz``."""

    __slots__ = ("role", "mem", "memsz", "data", "_sha256")

    def __init__(self, role: str, mem: int, memsz: int, data: bytes = b"") -> None:
        self.role = role
        self.mem = mem
        self.memsz = memsz
        self.data = data
        self._sha256: bytes | None = None

    def __repr__(self) -> str:
        return f"Segment({self.role!r}, {self.mem:#x}, {self.memsz:#x}, bufsz={self.bufsz:#x})"

    @property
    def bufsz(self) -> int:
        return len(self.data)

    @property
    def range(self) -> Range:
        return Range.sized(self.mem, self.memsz)

    @property
    def sha256(self) -> bytes:
        """Digest of the buffer, which purgatory checks before jumping. The zero fill up to
        memsz is the kernel's doing and is not hashed: for a kernel it is the work area the
        decompressor clears itself (37 MiB of a Debian kernel's 51 MiB init_size)."""
        if self._sha256 is None:
            self._sha256 = hashlib.sha256(self.data).digest()
        return self._sha256


class FileLoadInputs(namedtuple("FileLoadInputs", "kernel initrd cmdline kernel_data initrd_data",
                                defaults=(None, None))):
    """What kexec_file_load receives (paths and command line): the kernel places
    everything itself. ``kernel_data``/``initrd_data``, when set, are handed over in
    memory files instead of the paths, which then only name them (a UKI's .linux and
    assembled initrd)."""

    __slots__ = ()
    kernel: str
    initrd: str | None
    cmdline: str
    kernel_data: bytes | None
    initrd_data: bytes | None


class LoadPlan:
    """Segments and entry for kexec_load, or the inputs of kexec_file_load."""

    def __init__(self, image_type: str, backend: str, *, crash: bool = False, entry: int | None = None,
                 segments: list[Segment] | None = None, cmdline: str = "", kernel_entry: int | None = None,
                 file_inputs: FileLoadInputs | None = None, notes: list[str] | None = None,
                 warnings: list[str] | None = None, uki: dict[str, object] | None = None) -> None:
        self.image_type = image_type
        self.backend = backend
        self.crash = crash
        self.entry = entry
        self.segments = segments if segments is not None else []
        self.cmdline = cmdline
        self.kernel_entry = kernel_entry  # where purgatory jumps (informational)
        self.file_inputs = file_inputs
        self.notes = notes if notes is not None else []
        # What the user must hear even on a real load (an option that was ignored).
        self.warnings = warnings if warnings is not None else []
        # A Unified Kernel Image's sections, initrd parts and command line source.
        self.uki = uki
        # What purgatory copies aside before jumping (low memory, for a crash kernel that
        # writes it): a backend that maps only the segments for purgatory (Xen) maps it too.
        self.backup_source: Range | None = None

    def sorted_segments(self) -> list[Segment]:
        return sorted(self.segments, key=lambda s: s.mem)

    def segment_docs(self) -> list[dict[str, str | None]]:
        """The segments as handed over: address, sizes, role and digest, as strings."""
        segs: list[dict[str, str | None]]
        if self.backend == BACKEND_KEXEC_FILE_LOAD and self.file_inputs is not None:
            # The kernel chooses the addresses; we can only describe what we hand it.
            fi = self.file_inputs
            segs = [_file_seg("kernel", fi.kernel, fi.kernel_data)]
            if fi.initrd is not None:
                segs.append(_file_seg("initrd", fi.initrd, fi.initrd_data))
            cmd = fi.cmdline.encode() + b"\0"
            segs.append({"mem": None, "memsz": None, "bufsz": hex(len(cmd)), "role": "cmdline",
                         "sha256": hashlib.sha256(cmd).hexdigest()})
        else:
            # In the order the segments are handed over: by address for kexec_load (the
            # kernel sorts them anyway); as planned for Xen, where segment 0 has a meaning.
            order = self.sorted_segments() if self.backend == BACKEND_KEXEC_LOAD else self.segments
            segs = [{"mem": hex(s.mem), "memsz": hex(s.memsz), "bufsz": hex(s.bufsz), "role": s.role,
                     "sha256": s.sha256.hex()} for s in order]
        return segs

    def to_json(self) -> dict[str, object]:
        return {
            "type": self.image_type,
            "backend": self.backend,
            "crash": self.crash,
            "entry": hex(self.entry) if self.entry is not None else None,
            "kernel_entry": hex(self.kernel_entry) if self.kernel_entry is not None else None,
            "cmdline": self.cmdline,
            "segments": self.segment_docs(),
            "notes": list(self.notes),
            **({"warnings": list(self.warnings)} if self.warnings else {}),
            **({"uki": self.uki} if self.uki is not None else {}),
        }


def _file_seg(role: str, path: str | os.PathLike[str], data: bytes | None = None) -> dict[str, str | None]:
    if data is not None:
        return {"mem": None, "memsz": None, "bufsz": hex(len(data)), "role": role,
                "sha256": hashlib.sha256(data).hexdigest()}
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return {"mem": None, "memsz": None, "bufsz": hex(size), "role": role, "sha256": h.hexdigest()}
