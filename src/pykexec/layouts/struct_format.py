"""``struct`` formats derived from ctypes structures.

A layout is written once, as its ctypes class; readers and writers that handle records
in bulk (program headers, notes, page descriptors) use the format derived here, which
unpacks to tuples without building a ctypes object per record. Padding comes from the
ctypes field offsets, so alignment is the structure's own.
"""

from __future__ import annotations

import ctypes
import struct

_INTEGER_CODES = {1: "b", 2: "h", 4: "i", 8: "q"}
# ctypes type codes of signed integers (c_byte .. c_longlong); upper case is unsigned.
_SIGNED = frozenset("bhilq")
_UNSIGNED = frozenset("BHILQ")
# Arrays of these are byte strings ("Ns"), as readers want e_ident or a name.
_BYTE_TYPES = (ctypes.c_char, ctypes.c_uint8)


def _scalar_code(ctype: type) -> str:
    code = getattr(ctype, "_type_", None)
    if code in _SIGNED or code in _UNSIGNED:
        # By size, not by letter: ctypes' "L" is 8 bytes on x86-64, struct's "<L" is 4.
        letter = _INTEGER_CODES[ctypes.sizeof(ctype)]
        return letter if code in _SIGNED else letter.upper()
    if ctype is ctypes.c_char:
        return "c"
    raise TypeError(f"no struct code for a {ctype.__name__} field")


def _field_code(ctype: type) -> str:
    if issubclass(ctype, ctypes.Array):
        # An array class's _type_ is its element class (typeshed types it per instance).
        element: type = getattr(ctype, "_type_")
        length = ctype._length_
        if element in _BYTE_TYPES:
            return f"{length}s"
        return f"{length}{_scalar_code(element)}"
    return _scalar_code(ctype)


def struct_format(layout: type[ctypes.Structure]) -> struct.Struct:
    """The little-endian ``struct.Struct`` with ``layout``'s fields in order: integers as
    integers, arrays of integers as that many values, byte arrays as ``bytes``, and the
    structure's padding as pad bytes. Nested structures and bit fields are refused."""
    parts = ["<"]
    pos = 0
    for name, ctype, *bits in layout._fields_:
        if bits:
            raise TypeError(f"{layout.__name__}.{name}: bit fields have no struct code")
        field = getattr(layout, name)
        if field.offset > pos:
            parts.append(f"{field.offset - pos}x")
        parts.append(_field_code(ctype))
        pos = field.offset + field.size
    if ctypes.sizeof(layout) > pos:
        parts.append(f"{ctypes.sizeof(layout) - pos}x")
    fmt = struct.Struct("".join(parts))
    assert fmt.size == ctypes.sizeof(layout), layout.__name__
    return fmt
