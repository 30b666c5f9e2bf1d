"""The console of a kernel Xen kexecs (a crash kernel loaded from a dom0): dom0's Xen
console words dropped, Xen's own consoles (its command line) in their place."""

from __future__ import annotations

import pytest

from pykexec.kexec import compose_cmdline
from pykexec.machine import XenInfo
from pykexec.xen_cmdline import bare_metal_words, xen_consoles


@pytest.mark.parametrize("xen, consoles", [
    ("console=com1 dom0_mem=768M crashkernel=256M@1G", ["console=ttyS0"]),
    ("console=com2 com2=115200,8n1", ["console=ttyS1,115200"]),
    ("com1=57600,8n1,0x3f8,4 console=com1H", ["console=ttyS0,57600"]),
    ("console=vga,com1", ["console=tty0", "console=ttyS0"]),
    ("dom0_mem=1G", ["console=tty0"]),              # Xen's default console is vga
    ("console=com1 console=com3", ["console=ttyS2"]),  # the last of a repeated option
    ("console=dbgp,none", []),                        # nothing Linux can take over
])
def test_xen_consoles(xen: str, consoles: list[str]) -> None:
    assert xen_consoles(xen) == consoles


DOM0 = "root=/dev/vda rw console=hvc0 earlyprintk=xen panic=-1"


@pytest.mark.parametrize("words, xen, append, expected", [
    # dom0's console swapped for Xen's serial port
    (DOM0, "console=com1", None, "root=/dev/vda rw panic=-1 console=ttyS0"),
    # Xen's command line unknown: dom0's Xen words dropped only
    (DOM0, None, None, "root=/dev/vda rw panic=-1"),
    # the appended words choose a console: theirs
    (DOM0, "console=com1", "console=ttyS1", "root=/dev/vda rw panic=-1"),
    # dom0 chose no console: none is added
    ("root=/dev/vda xencons=tty", "console=com1", None, "root=/dev/vda"),
    # a console dom0 shares with Xen is not repeated
    ("console=ttyS0 console=hvc0", "console=com1", None, "console=ttyS0"),
    ("console=tty0 console=hvc0", "console=com1,vga", None, "console=tty0 console=ttyS0"),
])
def test_bare_metal_words(words: str, xen: str | None, append: str | None, expected: str) -> None:
    assert " ".join(bare_metal_words(words.split(), xen, append)) == expected


def test_compose_cmdline_in_a_dom0() -> None:
    info = XenInfo(version="4.17", cmdline="console=com1 crashkernel=256M@1G")
    assert compose_cmdline(f"BOOT_IMAGE=/vmlinuz {DOM0} crashkernel=1G", True, "irqpoll nr_cpus=1", info) == \
        "root=/dev/vda rw panic=-1 console=ttyS0 irqpoll nr_cpus=1"
    # Not reused: the appended words only, as anywhere.
    assert compose_cmdline(DOM0, False, "irqpoll", info) == "irqpoll"
    # Not under Xen: dom0's words, console=hvc0 included, are the running kernel's own.
    assert compose_cmdline(DOM0, True, None) == DOM0
