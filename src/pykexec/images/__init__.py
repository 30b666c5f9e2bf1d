"""The table of image types, in probe order, each with ``probe`` / ``plan`` / ``usage``
(the shape of kexec-tools' file_type table). ``-t NAME`` picks one by its kexec-tools name."""

from __future__ import annotations

from pykexec.errors import ImageFormatError, UsageError
from pykexec.images.image_type import ImageType


def _table() -> list[ImageType]:
    # Imported on first use: the loaders cost imports a vmcore command does not need.
    from pykexec.images import bzimage, elf, multiboot, multiboot2, uki

    # kexec-tools' x86_64 order: a Xen image (ELF32 with both headers) is Multiboot 2.
    # A UKI (a PE file, "MZ") before bzImage64: the bzImage inside it is in .linux, and
    # a bzImage is itself a PE file (its EFI stub) without one.
    return [multiboot2.MULTIBOOT2_X86, elf.ELF_X86_64, multiboot.MULTIBOOT_X86, uki.UKI, bzimage.BZIMAGE64]


def image_types() -> list[ImageType]:
    return _table()


GZIP_MAGIC = b"\x1f\x8b"
MAX_DECOMPRESSED = 1 << 30  # a kernel or hypervisor image is far smaller; more is an attack


def decompress(data: bytes, what: str) -> bytes:
    """A gzip'd image (Xen ships as xen.gz) unpacked, anything else unchanged."""
    if not data.startswith(GZIP_MAGIC):
        return data
    import zlib

    # First pass: inflate in 1 MiB pieces and throw them away, so that a bomb is refused
    # (or a truncated or broken stream named) without holding its output.
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    size, rest = 0, data
    try:
        while not d.eof:
            piece = d.decompress(rest, 1 << 20)
            rest = d.unconsumed_tail
            size += len(piece)
            if size > MAX_DECOMPRESSED:
                raise ImageFormatError(f"{what}: decompresses to more than {MAX_DECOMPRESSED >> 20} MiB")
            if not piece and not rest:
                break  # input used up before the end of the stream
    except zlib.error as err:
        raise ImageFormatError(f"{what}: broken gzip data ({err})") from None
    if not d.eof:
        raise ImageFormatError(f"{what}: gzip data is truncated")
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, size + 1)


def select(data: bytes, forced: str | None = None) -> ImageType:
    """The first type whose probe accepts ``data``; with ``forced``, that type or an error
    that says what the file actually is."""
    types = _table()
    reasons = {t.name: t.probe(data) for t in types}
    if forced is not None:
        chosen = next((t for t in types if t.name == forced), None)
        if chosen is None:
            raise UsageError(f"unknown image type {forced!r}; known: {', '.join(t.name for t in types)}")
        if reasons[forced] is not None:
            actual = next((t.name for t in types if reasons[t.name] is None), None)
            also = f"; it looks like {actual}" if actual else ""
            raise ImageFormatError(f"not a {forced} image: {reasons[forced]}{also}")
        return chosen
    for t in types:
        if reasons[t.name] is None:
            return t
    detail = "; ".join(f"{name}: {why}" for name, why in reasons.items())
    raise ImageFormatError(f"cannot determine the image type ({detail})")
