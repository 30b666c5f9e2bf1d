"""What the kdump service needs of Linux in a Xen dom0, set up when it is missing.

Xen loads the crash kernel (kexec_op), and dom0 reaches Xen through Linux's privcmd
driver and ``/proc/xen`` (xenfs: ``capabilities`` tells a control domain; ``xensyms``
gives the dump Xen's console-ring symbols).  Debian's generic kernels build both as
modules (``xenfs``, which needs ``xen-privcmd``), and nothing loads them on a system
without Xen's tools: the service loads them and mounts xenfs itself, as Xen's own init
scripts do, so that ``pykexec kdump enable`` just works on a Xen host.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from pykexec.errors import KexecError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from pykexec.kdump.paths import Paths

    Runner = Callable[..., subprocess.CompletedProcess[str]]

#: ``modprobe`` loads xen-privcmd first: xenfs depends on it.
MODULES = ("xenfs", "xen-privcmd")
PRIVCMD = "/dev/xen/privcmd"
PAGE = 4096


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _run(run: Runner, cmd: list[str]) -> None:
    try:
        proc = run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise KexecError(f"{cmd[0]} not found: cannot set up Xen's dom0 interfaces") from None
    except subprocess.TimeoutExpired:
        raise KexecError(f"{' '.join(cmd)} did not finish in 60 s") from None
    if proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip().splitlines()
        raise KexecError(f"{' '.join(cmd)} failed: {said[-1] if said else f'exit {proc.returncode}'}")


def under_xen(paths: Paths) -> bool:
    """Whether this system runs on Xen (a dom0: Xen loads its crash kernel and reserves its area)."""
    return _read(paths.sys / "hypervisor/type") == "xen"


def prepare(paths: Paths, run: Runner = subprocess.run) -> list[str]:
    """Under Xen, load xenfs and xen-privcmd and mount xenfs on /proc/xen when they are
    missing; returns one line per thing done (none: not Xen, or all there already)."""
    if not under_xen(paths):
        return []
    proc_xen = paths.proc / "xen"
    capabilities = proc_xen / "capabilities"
    privcmd = paths.under(PRIVCMD)
    done: list[str] = []
    if not capabilities.exists() or not privcmd.exists():
        _run(run, ["modprobe", "-a", *MODULES])
        done.append(f"loaded {', '.join(MODULES)}")
    if not capabilities.exists():
        if not proc_xen.is_dir():
            raise KexecError(f"{proc_xen} is missing: this kernel has no Xen support in /proc "
                             "(a PV dom0 needs XEN_DOM0)")
        _run(run, ["mount", "-t", "xenfs", "xenfs", str(proc_xen)])
        done.append(f"mounted xenfs on {proc_xen}")
        if not capabilities.exists():
            raise KexecError(f"xenfs mounted on {proc_xen} but {capabilities} is missing")
    return done


# -- what the service asks Xen ------------------------------------------------------------------
# In a dom0, /proc/iomem and kexec_crash_size show neither the crash area (Xen reserves it
# from its own command line's crashkernel=) nor the machine's memory, which is what the crash
# kernel's dump holds.

def crash_area_bytes() -> int:
    """The size of the crash area Xen reserved (0: none); :class:`KexecError` if Xen
    cannot be asked."""
    from pykexec.backends.xen.kexec_op import XenKexec

    with XenKexec.open() as x:
        return int(x.crash_area().size)


def machine_ram() -> tuple[int, int]:
    """(max pfn, pages of RAM) of the whole machine, from Xen's memory map."""
    from pykexec.backends.xen.kexec_op import XenKexec
    from pykexec.layouts.xen import E820_RAM

    with XenKexec.open() as x:
        ram = [e for e in x.machine_memory_map() if e.type == E820_RAM and e.size]
    if not ram:
        raise KexecError("Xen's machine memory map holds no RAM")
    return max(e.start + e.size for e in ram) // PAGE, sum(e.size for e in ram) // PAGE

