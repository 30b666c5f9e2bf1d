"""A small synthetic crash dump for the kdump service's tests: an ELF core as
/proc/vmcore lays it out, with VMCOREINFO (release 6.1.0-synthetic, crash time
1700000000), a lockless printk ring ending in a sysrq panic, and 512 KiB of
incompressible memory (so that a target of 64 KiB fills up)."""

from __future__ import annotations

import random
from pathlib import Path

from support.vmcore_synth import DIRECT_MAP, Memory, Msg, Region, base_vmcoreinfo, lockless_log, write_core

PANIC = b"Kernel panic - not syncing: sysrq triggered crash"
RANDOM_PADDR = 0x8000000
RANDOM_BYTES = 1 << 19


def synthetic_crash(path: Path) -> Path:
    mem = Memory.standard()
    msgs = [Msg(b"Linux version 6.1.0-synthetic", 1_000_000), Msg(b"sysrq: Trigger a crash", 5_000_000_000),
            Msg(PANIC, 5_000_100_000, level=0)]
    info, _ = lockless_log(mem, msgs, count_bits=5, size_bits=12)
    noise = bytearray(random.Random(1).randbytes(RANDOM_BYTES))
    mem.regions.append(Region(DIRECT_MAP + RANDOM_PADDR, RANDOM_PADDR, noise, RANDOM_BYTES))
    return write_core(path, mem, "\n".join(base_vmcoreinfo() + info) + "\n")
