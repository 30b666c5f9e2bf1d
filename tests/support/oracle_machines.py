"""The machines and command line the kexec-tools oracle tests describe to both tools:
the synthetic 1 GiB PC, and the same PC with a crash kernel region and what -p reads."""

from __future__ import annotations

from support.oracle import MachineSpec, MemoryRange, make_kcore

APPEND = "console=ttyS0 foo=bar"

# The synthetic 1 GiB PC from the task description.
LOW_RAM = MemoryRange(0x0, 0x9FBFF, "System RAM")
HIGH_RAM = (0x100000, 0x3FFDFFFF)
BASE_MEMORY = (
    LOW_RAM,
    MemoryRange(0x9FC00, 0x9FFFF, "Reserved"),
    MemoryRange(0xF0000, 0xFFFFF, "Reserved"),
    MemoryRange(*HIGH_RAM, "System RAM"),
    MemoryRange(0x3FFE0000, 0x3FFFFFFF, "Reserved"),
)
CRASH_REGION = (0x30000000, 0x37FFFFFF)


def one_gib_machine(**kwargs: object) -> MachineSpec:
    return MachineSpec(memory=BASE_MEMORY, **kwargs)  # type: ignore[arg-type]


def crash_machine() -> MachineSpec:
    """The 1 GiB machine with 128 MiB reserved by crashkernel= and what -p reads."""
    high = MemoryRange(*HIGH_RAM, "System RAM", children=(
        MemoryRange(0x1000000, 0x1E01FFF, "Kernel code"),
        MemoryRange(0x1E02000, 0x25FFFFF, "Kernel data"),
        MemoryRange(*CRASH_REGION, "Crash kernel"),
    ))
    memory = tuple(high if r.start == HIGH_RAM[0] else r for r in BASE_MEMORY)
    return MachineSpec(
        memory=memory,
        cmdline="BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro crashkernel=128M",
        crash_notes=(0x3FC1D000, 0x3FC5D000),
        vmcoreinfo=(0x2A00000, 0x1000),
        kcore=make_kcore([(0x0, 0x9FBFF), HIGH_RAM]),
        kallsyms="ffffffff81000000 T _stext\n",
    )
