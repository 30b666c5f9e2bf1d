"""The pykexec x86_64 purgatory: a prebuilt, position-independent blob.

The kernel's kexec jumps to the purgatory instead of the next kernel.  It
checks the SHA-256 digest of every loaded segment, optionally copies the
kdump backup region, then enters the next kernel either in 64-bit mode
(Linux boot protocol, ``Mode.JUMP_64``) or in 32-bit protected mode with
paging off (Multiboot, ``Mode.JUMP_32``).  On a digest mismatch it halts.

Typical use::

    purg = Purgatory.load()
    params = PurgatoryParams(
        entry=kernel_entry, rsi=boot_params_addr,
        regions=[Region(seg.mem, seg.bufsz, seg.sha256) for seg in segments],
    )
    blob = purg.render(params)   # load it anywhere page aligned,
    start = load_addr + purg.entry_offset   # reserving purg.memsz bytes

The blob is built by ``pykexec.purgatory.build`` from ``src/``; the layout of
its header and parameter block is in :mod:`pykexec.layouts.purgatory`.
"""

from __future__ import annotations

import ctypes
import importlib.resources
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Sequence

from pykexec.errors import KexecError
from pykexec.layouts.purgatory import (
    HEADER_VERSION,
    MAGIC,
    MAX_REGIONS,
    MODE_JUMP_32,
    MODE_JUMP_64,
    PurgatoryHeader,
    PurgatoryParamsBlock,
)

__all__ = ["Mode", "Purgatory", "PurgatoryError", "PurgatoryParams", "Region", "MAX_REGIONS"]

_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1
_PAGE = 4096


class PurgatoryError(KexecError, ValueError):
    """Bad purgatory blob or parameters (a KexecError: one line on the CLI, never a traceback)."""


class Mode(IntEnum):
    """How the purgatory enters the next kernel."""

    JUMP_64 = MODE_JUMP_64
    """64-bit mode, CS=0x10, DS/ES/SS=0x18, RSI=``rsi``, other GPRs zero."""
    JUMP_32 = MODE_JUMP_32
    """32-bit protected mode, paging off, CS=0x20, DS..SS=0x28, EAX=``eax``,
    EBX=``ebx``.  Needs the purgatory and ``entry`` below 4 GiB."""


@dataclass(frozen=True)
class Region:
    """A segment the purgatory verifies.

    ``sha256`` is the digest of the ``data_len`` bytes at physical ``start``:
    for a kexec segment pykexec passes ``start=mem``, ``data_len=bufsz`` and
    the digest of the buffer (the kernel zero-fills the rest of the segment).
    """

    start: int
    data_len: int
    sha256: bytes

    def __post_init__(self) -> None:
        if len(self.sha256) != 32:
            raise PurgatoryError("sha256 must be 32 bytes")
        if not (0 <= self.start <= _U64 and 0 <= self.data_len <= _U64 - self.start):
            raise PurgatoryError(f"region {self.start:#x}+{self.data_len:#x} out of range")


@dataclass(frozen=True)
class PurgatoryParams:
    """Everything the purgatory needs to know; see :class:`Mode`."""

    entry: int
    mode: Mode = Mode.JUMP_64
    rsi: int = 0
    eax: int = 0
    ebx: int = 0
    regions: Sequence[Region] = field(default_factory=tuple)
    backup_src: int = 0
    backup_dst: int = 0
    backup_size: int = 0
    console_port: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode(self.mode))
        object.__setattr__(self, "regions", tuple(self.regions))
        if len(self.regions) > MAX_REGIONS:
            raise PurgatoryError(f"at most {MAX_REGIONS} regions, got {len(self.regions)}")
        for name in ("entry", "rsi", "backup_src", "backup_dst", "backup_size"):
            if not 0 <= getattr(self, name) <= _U64:
                raise PurgatoryError(f"{name} does not fit in 64 bits")
        for name in ("eax", "ebx"):
            if not 0 <= getattr(self, name) <= _U32:
                raise PurgatoryError(f"{name} does not fit in 32 bits")
        if self.mode == Mode.JUMP_32 and self.entry > _U32:
            raise PurgatoryError("JUMP_32 entry must be below 4 GiB")
        if not 0 <= self.console_port <= 0xFFFF:
            raise PurgatoryError("console_port must be a 16-bit I/O port")
        if self.backup_size and (
            self.backup_src + self.backup_size > _U64 + 1
            or self.backup_dst + self.backup_size > _U64 + 1
        ):
            raise PurgatoryError("backup range out of range")

    def pack(self) -> bytes:
        """The parameter block as the purgatory expects it."""
        block = PurgatoryParamsBlock(
            entry=self.entry,
            rsi=self.rsi,
            mode=int(self.mode),
            eax=self.eax,
            ebx=self.ebx,
            console_port=self.console_port,
            nr_regions=len(self.regions),
            backup_src=self.backup_src,
            backup_dst=self.backup_dst,
            backup_size=self.backup_size,
        )
        for slot, region in zip(block.regions, self.regions):
            slot.start = region.start
            slot.len = region.data_len
            slot.sha256[:] = region.sha256
        return bytes(block)


@dataclass(frozen=True)
class Purgatory:
    """The committed purgatory blob and where things are inside it."""

    blob: bytes
    """The committed ``purgatory.bin`` (parameter block zeroed)."""
    memsz: int
    """Bytes to reserve at the load address (blob + bss + stack), page rounded."""
    entry_offset: int
    """Offset of the entry point from the load address."""
    params_offset: int
    """Offset of the parameter block in the blob."""

    @classmethod
    def load(cls) -> "Purgatory":
        """Read ``purgatory.bin`` from the package and validate its header."""
        blob = importlib.resources.files(__name__).joinpath("purgatory.bin").read_bytes()
        return cls.from_blob(blob)

    @classmethod
    def from_blob(cls, blob: bytes) -> "Purgatory":
        """Validate a purgatory blob's header and wrap it."""
        size = ctypes.sizeof(PurgatoryHeader)
        if len(blob) < size:
            raise PurgatoryError("purgatory blob too short")
        hdr = PurgatoryHeader.from_buffer_copy(blob, 0)
        if hdr.magic != MAGIC:
            raise PurgatoryError("purgatory blob has no PYKXPURG magic")
        if hdr.version != HEADER_VERSION or hdr.header_size != size:
            raise PurgatoryError(f"unsupported purgatory header version {hdr.version}")
        if hdr.params_size != ctypes.sizeof(PurgatoryParamsBlock):
            raise PurgatoryError("purgatory parameter block size mismatch")
        if hdr.file_size != len(blob):
            raise PurgatoryError("purgatory blob length does not match its header")
        if not (size <= hdr.params_offset and hdr.params_offset + hdr.params_size <= len(blob)):
            raise PurgatoryError("purgatory parameter block outside the blob")
        if not size <= hdr.entry_offset < len(blob):
            raise PurgatoryError("purgatory entry point outside the blob")
        if hdr.memsz < len(blob) or hdr.memsz % _PAGE:
            raise PurgatoryError("purgatory memsz invalid")
        return cls(
            blob=bytes(blob),
            memsz=hdr.memsz,
            entry_offset=hdr.entry_offset,
            params_offset=hdr.params_offset,
        )

    def render(self, params: PurgatoryParams) -> bytes:
        """The blob with ``params`` written into its parameter block.

        The result is position independent: load it at any page-aligned
        address (below 4 GiB for :attr:`Mode.JUMP_32`) with ``memsz`` bytes
        reserved, and start it at load address + ``entry_offset``.
        """
        packed = params.pack()
        end = self.params_offset + len(packed)
        return self.blob[: self.params_offset] + packed + self.blob[end:]
