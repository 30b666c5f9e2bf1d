"""Synthetic x86_64 kernel dumps for the vmcore tests.

A :class:`Memory` holds a few PT_LOAD-backed regions of a pretend kernel
(a "kernel image" region for variables, a direct-map region for buffers);
the ``*_log`` functions write the printk structures of one of the three
formats into it, simulating how the kernel fills and wraps its buffers, and
return the VMCOREINFO lines that describe them.  :func:`write_core` writes
an ELF64 core (CORE + VMCOREINFO notes, one PT_LOAD per region) as
``/proc/vmcore`` lays it out.

The struct layouts and VMCOREINFO values are those of real x86_64 kernels
(see docs: vmcore-formats.md section 1), so the real vmcore-dmesg accepts
these files and serves as the oracle.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from pykexec.layouts.elf import (
    EHDR64_FMT,
    ELFCLASS64,
    ELFDATA2LSB,
    EM_X86_64,
    ET_CORE,
    EV_CURRENT,
    NT_PRSTATUS,
    PHDR64_FMT,
    PT_LOAD,
    PT_NOTE,
    pack_note,
)

KERNEL_VADDR = 0xFFFFFFFF81000000
KERNEL_PADDR = 0x1000000
DIRECT_MAP = 0xFFFF888000000000
BUF_PADDR = 0x4000000

ID_MASK = (1 << 62) - 1
DESC_RESERVED, DESC_COMMITTED, DESC_FINALIZED, DESC_REUSABLE = 0, 1, 2, 3


@dataclass
class Region:
    vaddr: int
    paddr: int
    data: bytearray
    memsz: int            # may exceed len(data): the tail reads as zeros (p_filesz < p_memsz)
    used: int = 0


@dataclass
class Memory:
    """Kernel memory as PT_LOAD regions with bump allocators."""

    regions: list[Region] = field(default_factory=list)

    @classmethod
    def standard(cls, buf_size: int = 1 << 20) -> "Memory":
        m = cls()
        m.regions.append(Region(KERNEL_VADDR, KERNEL_PADDR, bytearray(0x10000), 0x10000))
        m.regions.append(Region(DIRECT_MAP + BUF_PADDR, BUF_PADDR, bytearray(buf_size), buf_size))
        return m

    def alloc(self, size: int, region: int = 0, align: int = 8) -> int:
        r = self.regions[region]
        r.used = (r.used + align - 1) & ~(align - 1)
        addr = r.vaddr + r.used
        r.used += size
        assert r.used <= len(r.data), "synthetic region too small"
        return addr

    def _find(self, vaddr: int) -> tuple[Region, int]:
        for r in self.regions:
            if r.vaddr <= vaddr < r.vaddr + len(r.data):
                return r, vaddr - r.vaddr
        raise ValueError(f"{vaddr:#x} not in synthetic memory")

    def write(self, vaddr: int, data: bytes) -> None:
        r, off = self._find(vaddr)
        assert off + len(data) <= len(r.data)
        r.data[off:off + len(data)] = data

    def read(self, vaddr: int, size: int) -> bytes:
        r, off = self._find(vaddr)
        return bytes(r.data[off:off + size])

    def pack(self, vaddr: int, fmt: str, *values: int) -> None:
        self.write(vaddr, struct.pack("<" + fmt, *values))


def write_core(path: Path, mem: Memory, vmcoreinfo: str | bytes, *, extra_notes: bytes = b"",
               vmcoreinfo_note: bool = True) -> Path:
    """An ELF64 LE ET_CORE like /proc/vmcore: one PT_NOTE, then the PT_LOADs."""
    info = vmcoreinfo.encode() if isinstance(vmcoreinfo, str) else vmcoreinfo
    notes = pack_note(b"CORE", NT_PRSTATUS, bytes(336))
    if vmcoreinfo_note:
        notes += pack_note(b"VMCOREINFO", 0, info)
    notes += extra_notes
    phnum = 1 + len(mem.regions)
    off = EHDR64_FMT.size + phnum * PHDR64_FMT.size
    phdrs = [PHDR64_FMT.pack(PT_NOTE, 0, off, 0, 0, len(notes), len(notes), 0)]
    body = [notes]
    off += len(notes)
    for r in mem.regions:
        phdrs.append(PHDR64_FMT.pack(PT_LOAD, 7, off, r.vaddr, r.paddr, len(r.data), r.memsz, 0))
        body.append(bytes(r.data))
        off += len(r.data)
    ident = bytes([0x7F, ord("E"), ord("L"), ord("F"), ELFCLASS64, ELFDATA2LSB, EV_CURRENT]) + bytes(9)
    ehdr = EHDR64_FMT.pack(ident, ET_CORE, EM_X86_64, EV_CURRENT, 0, EHDR64_FMT.size, 0, 0,
                           EHDR64_FMT.size, PHDR64_FMT.size, phnum, 0, 0, 0)
    path.write_bytes(ehdr + b"".join(phdrs) + b"".join(body))
    return path


def base_vmcoreinfo() -> list[str]:
    return ["OSRELEASE=6.1.0-synthetic", "PAGESIZE=4096", "CRASHTIME=1700000000"]


@dataclass
class Msg:
    """A message to log: text, timestamp, level/facility, caller id."""

    text: bytes
    ts_nsec: int = 0
    level: int = 6
    facility: int = 0
    caller_id: int = 1


# --------------------------------------------------------------------------- #
# 5.10+ lockless ring
# --------------------------------------------------------------------------- #

LOCKLESS_LAYOUT = """SIZE(printk_ringbuffer)=88
OFFSET(printk_ringbuffer.desc_ring)=0
OFFSET(printk_ringbuffer.text_data_ring)=48
OFFSET(printk_ringbuffer.fail)=80
SIZE(prb_desc_ring)=48
OFFSET(prb_desc_ring.count_bits)=0
OFFSET(prb_desc_ring.descs)=8
OFFSET(prb_desc_ring.infos)=16
OFFSET(prb_desc_ring.head_id)=24
OFFSET(prb_desc_ring.tail_id)=32
SIZE(prb_desc)=24
OFFSET(prb_desc.state_var)=0
OFFSET(prb_desc.text_blk_lpos)=8
SIZE(prb_data_blk_lpos)=16
OFFSET(prb_data_blk_lpos.begin)=0
OFFSET(prb_data_blk_lpos.next)=8
SIZE(printk_info)=88
OFFSET(printk_info.seq)=0
OFFSET(printk_info.ts_nsec)=8
OFFSET(printk_info.text_len)=16
OFFSET(printk_info.caller_id)=20
OFFSET(printk_info.dev_info)=24
SIZE(dev_printk_info)=64
OFFSET(dev_printk_info.subsystem)=0
LENGTH(printk_info_subsystem)=16
OFFSET(dev_printk_info.device)=16
LENGTH(printk_info_device)=48
SIZE(prb_data_ring)=32
OFFSET(prb_data_ring.size_bits)=0
OFFSET(prb_data_ring.data)=8
OFFSET(prb_data_ring.head_lpos)=16
OFFSET(prb_data_ring.tail_lpos)=24
SIZE(atomic_long_t)=8
OFFSET(atomic_long_t.counter)=0
SIZE(latched_seq)=24
OFFSET(latched_seq.val)=8""".split("\n")


@dataclass
class LocklessRing:
    """Addresses of a written lockless ring, for tests that corrupt it."""

    prb: int            # the struct printk_ringbuffer
    prb_ptr: int        # SYMBOL(prb): the pointer variable
    descs: int
    infos: int
    data: int
    count: int
    size: int
    head_id: int
    tail_id: int
    slots: dict[int, int] = field(default_factory=dict)   # id -> desc index of surviving records


def lockless_log(mem: Memory, msgs: Sequence[Msg], *, count_bits: int = 4, size_bits: int = 9,
                 last_state: int = DESC_FINALIZED, start_lpos: int | None = None,
                 dataless: Sequence[int] = ()) -> tuple[list[str], LocklessRing]:
    """Log ``msgs`` into a new lockless ring the way the kernel does.

    Old records are dropped when the descriptor or data ring is full.  The
    last record gets ``last_state`` (DESC_RESERVED to simulate one being
    written).  Indexes in ``dataless`` are logged as data-less records
    (kernel FAILED_LPOS).  ``start_lpos`` defaults to the kernel's first
    position, ``-size`` as an unsigned long.
    """
    count, size = 1 << count_bits, 1 << size_bits
    prb = mem.alloc(88)
    prb_ptr = mem.alloc(8)
    descs = mem.alloc(count * 24, region=1)
    infos = mem.alloc(count * 88, region=1)
    data = mem.alloc(size, region=1)
    mem.pack(prb_ptr, "Q", prb)

    mask64 = (1 << 64) - 1
    head_lpos = (-size & mask64) if start_lpos is None else start_lpos
    desc0 = (-(count + 1)) & ID_MASK
    head_id = tail_id = desc0
    live: list[tuple[int, int, int]] = []   # (id, begin_lpos, next_lpos), oldest first
    tail_lpos = head_lpos
    # The kernel marks the desc0 slot reusable so that readers skip it.
    mem.pack(descs + (desc0 % count) * 24, "QQQ", (DESC_REUSABLE << 62) | desc0, 1, 1)

    def drop_oldest() -> None:
        nonlocal tail_id, tail_lpos
        rid, _b, nxt = live.pop(0)
        idx = rid % count
        sv, b, n = struct.unpack("<QQQ", mem.read(descs + idx * 24, 24))
        mem.pack(descs + idx * 24, "QQQ", (DESC_REUSABLE << 62) | rid, b, n)
        tail_id = (rid + 1) & ID_MASK
        if nxt & 1 == 0:
            tail_lpos = nxt

    for i, msg in enumerate(msgs):
        rid = (head_id + 1) & ID_MASK
        # Descriptor ring full: the slot of id - count must be free.
        while live and ((rid - live[0][0]) & ID_MASK) >= count:
            drop_oldest()
        if i in dataless:
            begin = nxt = 1  # FAILED_LPOS
        else:
            blk = (8 + len(msg.text) + 7) & ~7
            begin = head_lpos
            nxt = begin + blk
            if begin // size != nxt // size:
                nxt = (nxt // size) * size + blk  # wrapping blocks are stored at the ring's start
            while live and nxt - tail_lpos > size:
                drop_oldest()
            if not live:
                tail_lpos = begin
            data_off = (nxt - blk) % size
            mem.pack(data + begin % size, "Q", rid)  # the id at begin, even for wrapped blocks
            mem.pack(data + data_off, "Q", rid)
            mem.write(data + data_off + 8, msg.text)
            head_lpos = nxt
        idx = rid % count
        state = last_state if i == len(msgs) - 1 else DESC_FINALIZED
        mem.pack(descs + idx * 24, "QQQ", (state << 62) | rid, begin & mask64, nxt & mask64)
        mem.pack(infos + idx * 88, "QQHBBI", i, msg.ts_nsec, len(msg.text), msg.facility,
                 msg.level << 5, msg.caller_id)
        live.append((rid, begin, nxt))
        head_id = rid
    if live:
        tail_id = live[0][0]
    mem.pack(prb, "IxxxxQQQQ", count_bits, descs, infos, head_id, tail_id)
    mem.pack(prb + 48, "IxxxxQQQ", size_bits, data, head_lpos & mask64, tail_lpos & mask64)
    info = [f"SYMBOL(prb)={prb_ptr:x}", f"SYMBOL(printk_rb_static)={prb:x}",
            f"SYMBOL(clear_seq)={mem.alloc(24):x}", *LOCKLESS_LAYOUT]
    ring = LocklessRing(prb, prb_ptr, descs, infos, data, count, size, head_id, tail_id,
                        {rid: rid % count for rid, _, _ in live})
    return info, ring


# --------------------------------------------------------------------------- #
# 3.5-5.9 structured records
# --------------------------------------------------------------------------- #

@dataclass
class StructuredLog:
    log_buf: int
    buf_len: int
    first_idx_sym: int
    next_idx_sym: int
    len_sym: int
    wrapped: bool


def structured_log(mem: Memory, msgs: Sequence[Msg], *, buf_len: int = 512, old_names: bool = False,
                   caller: bool = True, dicts: bool = False) -> tuple[list[str], StructuredLog]:
    """Log ``msgs`` as the 3.5-5.9 kernel's log_store() does.

    ``old_names`` uses the 3.5-3.10 ``struct log`` key names (and no
    dict_len offset); ``caller`` adds the 5.1+ caller_id (24-byte header
    instead of 16).  ``dicts`` appends a ``KEY=VALUE`` dictionary.
    """
    hdr = 24 if caller else 16
    log_buf = mem.alloc(buf_len, region=1)
    ptr, len_sym, first_sym, next_sym = (mem.alloc(8) for _ in range(4))
    mem.pack(ptr, "Q", log_buf)
    mem.pack(len_sym, "I", buf_len)
    buf = bytearray(buf_len)
    first_idx = next_idx = 0
    n_live = 0
    wrapped = False

    def rec_len(idx: int) -> int:
        return int(struct.unpack_from("<H", buf, idx + 8)[0])

    def has_space(size: int) -> bool:
        free = (max(buf_len - next_idx, first_idx) if next_idx > first_idx or n_live == 0
                else first_idx - next_idx)
        return free >= size + hdr

    for msg in msgs:
        dict_data = b"SUBSYSTEM=test\0DEVICE=+t:1" if dicts else b""
        size = (hdr + len(msg.text) + len(dict_data) + 7) & ~7
        while n_live and not has_space(size):
            ln = rec_len(first_idx)
            if ln == 0:
                first_idx = 0
                ln = rec_len(0)
            first_idx += ln
            n_live -= 1
        if next_idx + size + hdr > buf_len:
            buf[next_idx:next_idx + hdr] = bytes(hdr)
            next_idx = 0
            wrapped = True
        fields = struct.pack("<QHHHBB", msg.ts_nsec, size, len(msg.text), len(dict_data),
                             msg.facility, msg.level << 5)
        if caller:
            fields += struct.pack("<I", msg.caller_id) + bytes(4)
        buf[next_idx:next_idx + size] = (fields + msg.text + dict_data).ljust(size, b"\0")
        next_idx += size
        n_live += 1
    mem.write(log_buf, bytes(buf))
    mem.pack(first_sym, "I", first_idx)
    mem.pack(next_sym, "I", next_idx)
    name = "log" if old_names else "printk_log"
    info = [f"SYMBOL(log_buf)={ptr:x}", f"SYMBOL(log_buf_len)={len_sym:x}",
            f"SYMBOL(log_first_idx)={first_sym:x}", f"SYMBOL(log_next_idx)={next_sym:x}",
            f"SIZE({name})={hdr}", f"OFFSET({name}.ts_nsec)=0", f"OFFSET({name}.len)=8",
            f"OFFSET({name}.text_len)=10"]
    if not old_names:
        info.append(f"OFFSET({name}.dict_len)=12")
    return info, StructuredLog(log_buf, buf_len, first_sym, next_sym, len_sym, wrapped)


# --------------------------------------------------------------------------- #
# Before 3.5: character ring
# --------------------------------------------------------------------------- #

def legacy_log(mem: Memory, text: bytes, *, buf_len: int = 256) -> tuple[list[str], int]:
    """Write ``text`` through a ``buf_len`` character ring; returns the info
    lines and the address of ``log_end``."""
    log_buf = mem.alloc(buf_len, region=1)
    ptr, end_sym, len_sym, chars_sym = (mem.alloc(8) for _ in range(4))
    buf = bytearray(buf_len)
    for i, c in enumerate(text):
        buf[i % buf_len] = c
    mem.write(log_buf, bytes(buf))
    mem.pack(ptr, "Q", log_buf)
    mem.pack(end_sym, "Q", len(text))
    mem.pack(len_sym, "i", buf_len)
    mem.pack(chars_sym, "Q", min(len(text), buf_len))
    info = [f"SYMBOL(log_buf)={ptr:x}", f"SYMBOL(log_end)={end_sym:x}",
            f"SYMBOL(log_buf_len)={len_sym:x}", f"SYMBOL(logged_chars)={chars_sym:x}"]
    return info, end_sym


def make_msgs(n: int, *, prefix: str = "message", start_ts: int = 1_000_000) -> list[Msg]:
    """``n`` messages of varying length and level, timestamps increasing."""
    return [Msg(f"{prefix} {i:03d} {'x' * (i * 7 % 23)}".encode(), start_ts + i * 1_234_567,
                level=i % 8, facility=0 if i % 5 else 1, caller_id=(0x80000000 | (i % 4)) if i % 3 == 0 else 100 + i)
            for i in range(n)]
