"""VMCOREINFO: the ``KEY=VALUE`` lines the kernel leaves for dump readers.

Key spellings (``kernel/crash_core.c`` macros)::

    SYMBOL(name)=hex address        SIZE(type)=decimal
    OFFSET(type.field)=decimal      LENGTH(name)=decimal
    NUMBER(name)=decimal or 0x-hex (may be negative)
    OSRELEASE=..., PAGESIZE=..., KERNELOFFSET=hex, CRASHTIME=decimal, CONFIG_X=y

The last line may lack its newline (``CRASHTIME=`` is appended at panic time
by some kernels without one); lines without ``=`` and trailing NULs are
ignored.  The first occurrence of a key wins, as in vmcore-dmesg.
"""

from __future__ import annotations

from pykexec.vmcore.errors import VmcoreError


class VmcoreInfo:
    """Parsed VMCOREINFO.  Lookups raise :class:`VmcoreError` naming the key."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.entries: dict[str, str] = {}
        text = raw.split(b"\0", 1)[0].decode("ascii", errors="replace")
        for line in text.split("\n"):
            key, sep, value = line.partition("=")
            if sep and key and key not in self.entries:
                self.entries[key] = value.strip()

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def _int(self, key: str, base: int) -> int:
        value = self.entries.get(key)
        if value is None:
            raise VmcoreError(f"no {key} in VMCOREINFO")
        try:
            return int(value, base)
        except ValueError:
            raise VmcoreError(f"VMCOREINFO {key}={value!r} is not a number") from None

    def has_symbol(self, name: str) -> bool:
        return f"SYMBOL({name})" in self.entries

    def symbol(self, name: str) -> int:
        """``SYMBOL(name)``: a kernel virtual address (hex, KASLR already applied)."""
        return self._int(f"SYMBOL({name})", 16)

    def size(self, name: str) -> int:
        return self._int(f"SIZE({name})", 10)

    def offset(self, struct_field: str) -> int:
        """``OFFSET(struct.field)``, e.g. ``offset("printk_info.seq")``."""
        return self._int(f"OFFSET({struct_field})", 10)

    def length(self, name: str) -> int:
        return self._int(f"LENGTH({name})", 10)

    def number(self, name: str) -> int:
        """``NUMBER(name)``: decimal, or hex with a 0x prefix; may be negative."""
        value = self.entries.get(f"NUMBER({name})", "")
        return self._int(f"NUMBER({name})", 16 if value.lower().lstrip("-").startswith("0x") else 10)

    def has_number(self, name: str) -> bool:
        return f"NUMBER({name})" in self.entries

    def first_size(self, *names: str) -> int:
        """``SIZE`` of the first of ``names`` present (types renamed across kernels)."""
        for name in names:
            if f"SIZE({name})" in self.entries:
                return self.size(name)
        raise VmcoreError(f"no SIZE({names[0]}) in VMCOREINFO")

    @property
    def crashtime(self) -> int | None:
        """``CRASHTIME``: seconds since the epoch when the kernel panicked, if recorded."""
        return self._int("CRASHTIME", 10) if "CRASHTIME" in self.entries else None

    @property
    def osrelease(self) -> str | None:
        return self.entries.get("OSRELEASE")
