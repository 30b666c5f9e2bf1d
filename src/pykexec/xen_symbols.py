"""Xen's console-ring symbols, recorded at load time for the dump reader.

Loading a crash kernel in dom0, pykexec reads the addresses of Xen's console-ring
variables from ``/proc/xen/xensyms`` and writes them into the elfcorehdr as a note
(:data:`~pykexec.layouts.elf.NT_PYKEXEC_XEN_SYMBOLS`): ASCII ``name=0xADDRESS``
lines.  Xen's link addresses do not move with ``xen_phys_start``, so they stay valid
until the crash; ``vmcore dmesg --xen`` (:mod:`pykexec.vmcore.xen`) parses the note
back.  Machine probing imports this module: it must not pull in the dump readers.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

#: Symbols the console ring needs (``conringc`` is optional: without it the whole
#: ring up to the producer is printed).
CONRING_SYMBOLS = ("conring", "conring_size", "conringp", "conringc")
#: The ones the ring cannot be found without.
REQUIRED_CONRING_SYMBOLS = CONRING_SYMBOLS[:3]


def parse_xensyms(lines: Iterable[bytes], names: tuple[str, ...] = CONRING_SYMBOLS) -> dict[str, int]:
    """Addresses of ``names`` in ``/proc/xen/xensyms`` lines (``%016llx %c %s``).

    Xen's symbol table qualifies static symbols with their file, as
    ``drivers/char/console.c#conring``; such a name matches ``conring``.  The first
    match of each name wins.
    """
    want = set(names)
    found: dict[str, int] = {}
    for raw in lines:
        parts = raw.split()
        if len(parts) != 3:
            continue
        name = parts[2].decode("ascii", "replace").rpartition("#")[2]
        if name in want and name not in found:
            try:
                found[name] = int(parts[0], 16)
            except ValueError:
                continue
            if len(found) == len(want):
                break
    return found


def xensyms_note_desc(path: str = "/proc/xen/xensyms", names: tuple[str, ...] = CONRING_SYMBOLS) -> bytes | None:
    """The descriptor of an ``NT_PYKEXEC_XEN_SYMBOLS`` note, for the loader.

    Read at load time in dom0 from ``/proc/xen/xensyms`` (Linux ``CONFIG_XEN_SYMS``,
    through Xen's ``XENPF_get_symbol``; Xen built with ``CONFIG_LIVEPATCH`` -- Debian's
    4.17 is -- lists data symbols too, statics as ``file#name``).  None when the file
    is missing or lacks the console-ring symbols.
    """
    try:
        with open(path, "rb") as f:
            found = parse_xensyms(f, names)
    except OSError:
        return None
    if any(n not in found for n in REQUIRED_CONRING_SYMBOLS):
        return None
    return "".join(f"{n}={found[n]:#x}\n" for n in names if n in found).encode()


def parse_symbol_lines(text: bytes) -> dict[str, int]:
    """``name=0xADDR`` lines (the note :func:`xensyms_note_desc` makes) as a dict; bad
    lines are skipped."""
    out: dict[str, int] = {}
    for line in text.split(b"\0", 1)[0].decode("ascii", "replace").splitlines():
        name, eq, value = line.partition("=")
        if eq:
            try:
                out[name.strip()] = int(value.strip(), 16)
            except ValueError:
                continue
    return out
