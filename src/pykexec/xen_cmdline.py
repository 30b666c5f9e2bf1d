"""The console of a kernel that Xen's kexec starts, when its command line reuses dom0's.

Xen's kexec (a crash, or ``kexec -e`` through the hypercall) starts the next kernel on the
bare machine, without Xen: dom0's ``console=hvc0`` (Xen's console, reached by hypercalls)
names a device that kernel has no driver behind, so it would print nothing, the crash
capture's progress and errors included.  Its console is the one Xen itself used: Xen's
``console=com1`` is Linux's ``ttyS0`` (at the speed of Xen's ``com1=``), ``vga`` is ``tty0``.
"""

from __future__ import annotations

import re

#: dom0's words that only make sense under Xen: its console, Xen's early console.
_DOM0_ONLY = ("console=hvc", "xencons=", "earlyprintk=xen")
_SERIAL = re.compile(r"com([1-4])[HL]?$")
_BAUD = re.compile(r"(\d+)")


def xen_consoles(xen_cmdline: str) -> list[str]:
    """Linux's ``console=`` words for the consoles Xen's command line names, in its order
    (the last is /dev/console); Xen's default console, ``vga``, when it names none."""
    options: dict[str, str] = {}
    for word in xen_cmdline.split():
        name, _, value = word.partition("=")
        options[name] = value  # Xen, like Linux, takes the last of a repeated option
    out: list[str] = []
    for console in (options.get("console") or "vga").split(","):
        serial = _SERIAL.match(console)
        if serial:
            port = int(serial.group(1))
            baud = _BAUD.match(options.get(f"com{port}", ""))
            out.append(f"console=ttyS{port - 1}" + (f",{baud.group(1)}" if baud else ""))
        elif console == "vga":
            out.append("console=tty0")
    return out


def bare_metal_words(words: list[str], xen_cmdline: str | None, append: str | None) -> list[str]:
    """dom0's reused command line ``words`` for a kernel Xen kexecs: without dom0's Xen
    console words, with Xen's consoles instead when dom0 had one and ``append`` (which comes
    after) chooses none.  ``xen_cmdline`` None (unknown): dom0's console words dropped only."""
    kept = [w for w in words if not w.startswith(_DOM0_ONLY)]
    had_console = any(w.startswith("console=") for w in words)
    if xen_cmdline is None or not had_console or "console=" in (append or ""):
        return kept
    consoles = [c for c in xen_consoles(xen_cmdline) if c not in kept]
    return kept + consoles
