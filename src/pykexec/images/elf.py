"""ELF vmlinux for x86_64 (kexec-tools type ``elf-x86_64``, with its ``--args-linux``
behaviour): PT_LOADs at their physical addresses, entered at e_entry with RSI =
boot_params built from a synthetic setup header (a vmlinux has none)."""

from __future__ import annotations

import io

from pykexec.errors import ImageFormatError
from pykexec.images.image_type import ImageType
from pykexec.layouts import boot_params as bp
from pykexec.layouts.x86_paging import PAGE_SIZE
from pykexec.memory import Allocator, Range, align_down, align_up
from pykexec.plan import LoadPlan, Segment
from pykexec.request import LoadRequest

TYPE_CHECKING = False  # typing costs an import; this name is all type checkers need
if TYPE_CHECKING:
    from elftools.elf.elffile import ELFFile

EM_X86_64 = "EM_X86_64"
MAX_PT_LOADS = 64  # a vmlinux has about five; far more means a hostile file
MAX_ZERO_FILL = 64 << 20  # zeros written between two PT_LOADs sharing a page (a vmlinux: < 4 KiB)


def _elf(data: bytes) -> "ELFFile":
    if data[:4] != b"\x7fELF":
        raise ImageFormatError("no ELF magic")
    # pyelftools costs an import; most images are not ELF.
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        return ELFFile(io.BytesIO(data))
    except (ELFError, ValueError, KeyError) as err:
        raise ImageFormatError(f"broken ELF header: {err}") from None


def probe(data: bytes) -> str | None:
    try:
        elf = _elf(data)
        if elf["e_machine"] != EM_X86_64:
            return f"ELF for {elf['e_machine']}, not x86_64"
        if elf["e_type"] not in ("ET_EXEC",):
            return f"ELF type {elf['e_type']}, expected an executable"
    except ImageFormatError as err:
        return str(err)
    return None


def load_segments(data: bytes) -> tuple[list[tuple[int, int, bytes]], int]:
    """PT_LOADs as (paddr, memsz, file bytes), and e_entry; checks the headers' numbers
    against the file so that a hostile header cannot make us read or allocate wildly."""
    from elftools.common.exceptions import ELFError

    elf = _elf(data)
    loads = []
    try:
        phoff, phnum, phentsize = elf["e_phoff"], elf["e_phnum"], elf["e_phentsize"]
        if phnum and (phentsize < (56 if elf.elfclass == 64 else 32) or phoff + phnum * phentsize > len(data)):
            raise ImageFormatError(f"{phnum} program headers of {phentsize} bytes at offset {phoff:#x} "
                                   f"do not fit in the {len(data)}-byte file")
        for ph in elf.iter_segments():
            if ph["p_type"] != "PT_LOAD" or ph["p_memsz"] == 0:
                continue
            off, filesz, memsz, paddr = ph["p_offset"], ph["p_filesz"], ph["p_memsz"], ph["p_paddr"]
            if filesz > memsz or off + filesz > len(data):
                raise ImageFormatError(f"PT_LOAD at {paddr:#x} claims {filesz:#x} file bytes at offset "
                                       f"{off:#x}, beyond the file or its memsz")
            loads.append((paddr, memsz, data[off:off + filesz]))
            if len(loads) > MAX_PT_LOADS:
                raise ImageFormatError(f"more than {MAX_PT_LOADS} PT_LOAD segments")
        entry = elf["e_entry"]
    except (ELFError, ValueError, KeyError, OverflowError) as err:
        raise ImageFormatError(f"broken ELF program headers: {err}") from None
    if not loads:
        raise ImageFormatError("no PT_LOAD segments")
    return loads, entry


def merge_loads(loads: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytearray]]:
    """Page-align PT_LOADs into kexec segments, merging those that share a page
    (kexec segments must be page aligned and must not overlap)."""
    merged: list[tuple[int, int, bytearray]] = []
    prev_end = 0
    for paddr, memsz, body in sorted(loads, key=lambda x: x[0]):
        start, end = align_down(paddr, PAGE_SIZE), align_up(paddr + memsz, PAGE_SIZE)
        if merged and start < merged[-1][0] + merged[-1][1]:
            mstart, msize, buf = merged[-1]
            if paddr < prev_end:
                raise ImageFormatError(f"PT_LOADs overlap at {paddr:#x}")
            if body and paddr - mstart - len(buf) > MAX_ZERO_FILL:
                # The previous PT_LOAD's zeros up to here would have to be materialised.
                raise ImageFormatError(f"PT_LOAD at {paddr:#x} shares a page with one whose "
                                       f"{paddr - mstart - len(buf):#x} bytes of zeros precede it")
            msize = max(msize, end - mstart)
        else:
            mstart, msize, buf = start, end - start, bytearray()
            merged.append((mstart, msize, buf))
        if body:
            rel = paddr - mstart
            if len(buf) < rel:
                buf.extend(bytes(rel - len(buf)))
            buf[rel:rel + len(body)] = body
        merged[-1] = (mstart, msize, buf)
        prev_end = max(prev_end, paddr + memsz)
    return merged


def synthetic_header() -> bp.SetupHeader:
    """What a vmlinux would have said had it carried a setup header: protocol 2.15, loaded
    high, 64-bit, a 2 KiB command line limit."""
    h = bp.SetupHeader()
    h.boot_flag = bp.BOOT_FLAG
    h.header = bp.HDRS_MAGIC
    h.version = 0x020F
    h.loadflags = bp.LOADED_HIGH
    h.initrd_addr_max = 0x7FFFFFFF
    h.kernel_alignment = 0x200000
    h.xloadflags = bp.XLF_KERNEL_64 | bp.XLF_CAN_BE_LOADED_ABOVE_4G
    h.cmdline_size = 2047
    h.vid_mode = 0xFFFF
    return h


def plan(req: LoadRequest) -> LoadPlan:
    why = probe(req.kernel)
    if why is not None:
        raise ImageFormatError(f"{req.kernel_path}: {why}")
    from pykexec.linux_boot import PlacedKernel, plan_linux

    loads, entry = load_segments(req.kernel)
    merged = merge_loads(loads)

    def place_kernel(alloc: Allocator) -> PlacedKernel:
        segments = []
        for start, size, buf in merged:
            alloc.reserve(Range.sized(start, size))
            segments.append(Segment("kernel", start, size, bytes(buf)))
        if not any(s.range.contains(entry) for s in segments):
            raise ImageFormatError(f"{req.kernel_path}: entry point {entry:#x} is outside every PT_LOAD")
        return PlacedKernel(segments, entry)

    return plan_linux(req, "elf-x86_64", synthetic_header(), place_kernel,
                      kernel_memsz=sum(size for _, size, _ in merged))


ELF_X86_64 = ImageType(
    name="elf-x86_64",
    probe=probe,
    plan=plan,
    usage="elf-x86_64: x86_64 ELF vmlinux, loaded at its physical addresses (like --args-linux).\n"
          "    --command-line/--append STRING, --reuse-cmdline, --initrd/--ramdisk FILE",
)
