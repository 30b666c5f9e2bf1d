"""Xen's proposed purgatory-less crash load, ``KEXEC_TYPE_CRASH_EFI`` (3), for Secure Boot.

Under Secure Boot Xen must not jump into unsigned purgatory, so the series ("x86/kexec:
Secure Boot support", xen-devel, June 2026, not merged) has Xen enter the kernel
itself. Segment 0 is the whole signed bzImage; the load's entry field carries the
boot_params address instead, which Xen hands to the kernel in RSI. Xen finds the entry
from the image's own header, so the image must sit where that header says it can run:

1. the header has "HdrS" and boot protocol >= 2.02;
2. ``kernel_alignment`` is a multiple of 2 MiB between 2 and 16 MiB;
3. ``dest + (setup_sects or 4, + 1) * 512`` is a multiple of ``kernel_alignment``;
   the entry is then that address + 0x200 (``startup_64``).

The series' Xen reads the header from the start of the page ``dest`` falls in, so in
practice ``dest`` must be page aligned too; and Xen identity-maps only the segments, so
segment 0 reserves the kernel's ``init_size`` past its protected-mode start. All this is
checked here, before any hypercall, with the rule named.
"""

from __future__ import annotations

from pykexec.errors import ImageFormatError, PlacementError, PlanError
from pykexec.images import bzimage
from pykexec.layouts import boot_params as bp
from pykexec.layouts.x86_paging import PAGE_SIZE
from pykexec.memory import Allocator, MiB, Range, align_up
from pykexec.plan import BACKEND_XEN, LoadPlan, Segment
from pykexec.request import LoadRequest

MIN_PROTOCOL = 0x0202
ALIGN_UNIT = 2 * MiB
ALIGN_MAX = 16 * MiB


def check_header(header: bp.SetupHeader, what: str = "kernel") -> None:
    """Xen's header rules for CRASH_EFI, each refusal naming the rule."""
    if header.header != bp.HDRS_MAGIC:
        raise ImageFormatError(f"{what}: CRASH_EFI needs a bzImage: no 'HdrS' magic at 0x202")
    if header.version < MIN_PROTOCOL:
        raise ImageFormatError(f"{what}: CRASH_EFI needs boot protocol >= 2.02, the image has "
                               f"{header.version >> 8}.{header.version & 0xFF:02d}")
    align = header.kernel_alignment
    if align % ALIGN_UNIT or not ALIGN_UNIT <= align <= ALIGN_MAX:
        raise ImageFormatError(f"{what}: CRASH_EFI needs kernel_alignment to be a multiple of 2 MiB between "
                               f"2 and 16 MiB; the image says {align:#x}")
    if bp.setup_size(header) % PAGE_SIZE:
        raise ImageFormatError(f"{what}: its {bp.setup_size(header):#x}-byte setup (setup_sects={header.setup_sects}) "
                               "is not a whole number of pages, so the image cannot start on a page boundary "
                               "with its kernel aligned, and Xen reads the header from the start of the page")


def plan(req: LoadRequest) -> LoadPlan:
    """A CRASH_EFI plan: the bzImage, initrd, elfcorehdr, command line and boot_params in
    the crash area; no purgatory; entry = boot_params."""
    from pykexec.linux_boot import PlacedKernel, plan_linux

    if not req.crash:
        raise PlanError("the CRASH_EFI load type is for crash kernels (-p)")
    if req.backend != BACKEND_XEN:
        raise PlanError(f"the CRASH_EFI load type is Xen's: plan it for {BACKEND_XEN}, not {req.backend}")
    h = bzimage.check_bzimage(req.kernel, str(req.kernel_path))
    check_header(h, str(req.kernel_path))
    setup = bp.setup_size(h)
    body = align_up(max(h.init_size, len(req.kernel) - setup), PAGE_SIZE)

    def place_kernel(alloc: Allocator) -> PlacedKernel:
        # The protected-mode start is aligned; the file's setup part sits right before it.
        start = alloc.allocate(body, align=h.kernel_alignment, min_addr=alloc.window.start + setup,
                               what="kernel (protected-mode part)")
        dest = start - setup
        try:
            alloc.reserve(Range(dest, start))
        except PlacementError:
            raise PlacementError(f"no room for the kernel's {setup:#x}-byte setup below {start:#x}") from None
        return PlacedKernel([Segment("kernel", dest, setup + body, req.kernel)], start + bp.STARTUP_64_OFFSET)

    result = plan_linux(req, "bzImage64", h, place_kernel, kernel_memsz=setup + body, purgatory=False)
    result.notes.append("Xen load type CRASH_EFI (3): segment 0 is the whole signed bzImage, Xen enters "
                        f"it at {result.kernel_entry:#x} with RSI = boot_params ({result.entry:#x})")
    return result


def validate(plan: LoadPlan, crash_area: Range | None) -> None:
    """What Xen checks for a CRASH_EFI load, before we ask it: segment 0 is a bzImage
    placed so that its kernel is aligned, every segment is inside the crash area and
    none overlaps, buffers fit their destinations, the entry is a loaded boot_params."""
    segs = plan.segments
    if not segs or segs[0].role != "kernel":
        raise PlanError("CRASH_EFI: segment 0 must be the bzImage", segs)
    if crash_area is None:
        raise PlanError("CRASH_EFI: no crash area is reserved (Xen's crashkernel=)", segs)
    image = bytes(segs[0].data[:bp.SETUP_HEADER_END])
    header = bzimage.header_from_image(image) if len(image) >= bp.SETUP_HEADER_END else bp.SetupHeader()
    check_header(header, "segment 0")
    dest = segs[0].mem
    kernel_start = dest + bp.setup_size(header)
    if kernel_start % header.kernel_alignment:
        raise PlanError(f"CRASH_EFI: segment 0 at {dest:#x} puts the kernel at {kernel_start:#x}, not a multiple "
                        f"of kernel_alignment {header.kernel_alignment:#x}", segs)
    for s in segs:
        if s.bufsz > s.memsz:
            raise PlanError(f"{s.role} segment at {s.mem:#x}: buffer larger than its destination", segs)
        if not crash_area.contains(s.range):
            raise PlanError(f"{s.role} segment {s.range} is outside the crash area {crash_area}", segs)
    ordered = sorted(segs, key=lambda s: s.mem)
    for a, b in zip(ordered, ordered[1:]):
        if a.range.overlaps(b.range):
            raise PlanError(f"{a.role} segment {a.range} overlaps {b.role} segment {b.range}", segs)
    params = next((s for s in segs if s.role == "boot_params"), None)
    if params is None or plan.entry != params.mem:
        raise PlanError("CRASH_EFI: the entry (parameters) must be the boot_params segment's address", segs)
