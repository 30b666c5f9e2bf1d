"""Load, unload and report the crash kernel of the kdump service, through the library
(:mod:`pykexec.kexec`: in a Xen dom0 it loads through Xen's kexec_op by itself).

The crash kernel is ``kernel`` (default: the running release's ``/boot/vmlinuz-*``)
with ``initrd`` (default: the crash initramfs pykexec builds, whose ``/init`` is the
capture and which embeds the configuration) and the running command line
(``reuse_cmdline``: without ``crashkernel=`` and ``BOOT_IMAGE=``) plus the
configuration's ``append``.  What was loaded is recorded in a stamp (``loaded.json``
in the state directory: digests of the kernel, the initrd and the configuration, and
the boot it was loaded in), so that ``load`` reloads only after a change.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from pykexec import kexec
from pykexec.errors import KexecError, MachineError
from pykexec.kdump.config import to_toml
from pykexec.kdump.xen_dom0 import under_xen
from pykexec.plan import BACKEND_XEN

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from pykexec.kdump.config import KdumpConfig
    from pykexec.kdump.paths import Paths
    from pykexec.kdump.records import CrashRecord
    from pykexec.plan import LoadPlan

STAMP_VERSION = 1
#: After a panic of the crash kernel itself, reboot (rather than hang) when the
#: failure action is to reboot.
CRASH_PANIC_TIMEOUT = 10


@dataclass(frozen=True)
class CrashKernel:
    """What the crash kernel is made of: files as the running system names them, and
    what is appended to the reused command line."""

    kernel: Path
    initrd: Path
    append: str


@dataclass(frozen=True)
class LoadOutcome:
    """What :func:`load` did: ``action`` is ``loaded``, ``reloaded`` or ``unchanged``;
    ``changed`` names what differed from the stamp (for ``reloaded``)."""

    action: str
    crash_kernel: CrashKernel
    changed: tuple[str, ...] = ()
    plan: LoadPlan | None = None
    collected: CrashRecord | None = None   # a raw target's dump, collected first
    collect_error: str | None = None       # why it could not be (the load went on)


def crash_append(config: KdumpConfig) -> str:
    """The configuration's ``append``, plus ``panic=`` when the failure action is a
    reboot and ``append`` does not choose one: a crash kernel that panics then reboots."""
    words = config.append.split()
    if config.failure_action == "reboot" and not any(w.startswith("panic=") for w in words):
        words.append(f"panic={CRASH_PANIC_TIMEOUT}")
    return " ".join(words)


def kernel_path(config: KdumpConfig, paths: Paths, release: str | None = None) -> Path:
    """The crash kernel: the configured one, else the running release's."""
    if config.kernel:
        return paths.under(config.kernel)
    return paths.kernel(release or os.uname().release)


def initrd_path(config: KdumpConfig, paths: Paths, *, build: bool = True) -> Path:
    """The crash initramfs: the configured one, else pykexec's (brought up to date
    first when ``build``; else where it is, built or not)."""
    if config.initrd:
        return paths.under(config.initrd)
    if not build:
        return paths.initramfs
    from pykexec.kdump import initramfs

    return initramfs.build(config, paths)


def crash_kernel(config: KdumpConfig, paths: Paths, *, build: bool = True) -> CrashKernel:
    return CrashKernel(kernel_path(config, paths), initrd_path(config, paths, build=build), crash_append(config))


# -- the stamp ------------------------------------------------------------------------------

def file_digest(path: Path) -> str:
    """sha256 of a file's bytes; "" if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return ""


def boot_id(paths: Paths) -> str:
    try:
        return (paths.proc / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def make_stamp(config: KdumpConfig, paths: Paths, crash: CrashKernel) -> dict[str, object]:
    """What a load is made of, by digest: compared with the stamp of the last load."""
    return {
        "version": STAMP_VERSION,
        "kernel": str(crash.kernel), "kernel_sha256": file_digest(crash.kernel),
        "initrd": str(crash.initrd), "initrd_sha256": file_digest(crash.initrd),
        "config_sha256": hashlib.sha256(to_toml(config).encode()).hexdigest(),
        "append": crash.append,
        "boot_id": boot_id(paths),
    }


#: Stamp keys, and what their change is called.
_STAMP_PARTS = (("kernel", "kernel"), ("kernel_sha256", "kernel"), ("initrd", "initrd"),
                ("initrd_sha256", "initrd"), ("config_sha256", "configuration"), ("append", "command line"),
                ("boot_id", "boot"), ("version", "stamp version"))


def stamp_changes(old: dict[str, object] | None, new: dict[str, object]) -> tuple[str, ...]:
    """What differs between two stamps, each part named once ("kernel", "initrd",
    "configuration", "command line", "boot"); ("no stamp",) without an old one."""
    if old is None:
        return ("no stamp",)
    changed: list[str] = []
    for key, name in _STAMP_PARTS:
        if old.get(key) != new.get(key) and name not in changed:
            changed.append(name)
    return tuple(changed)


def read_stamp(paths: Paths) -> dict[str, object] | None:
    try:
        data = json.loads(paths.stamp.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_stamp(paths: Paths, stamp: dict[str, object]) -> None:
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    tmp = paths.stamp.with_name(paths.stamp.name + ".tmp")
    tmp.write_text(json.dumps(stamp, indent=2) + "\n")
    os.replace(tmp, paths.stamp)


def remove_stamp(paths: Paths) -> None:
    try:
        paths.stamp.unlink()
    except FileNotFoundError:
        pass


# -- load, unload, status -----------------------------------------------------------------

def load(config: KdumpConfig, paths: Paths, *, force: bool = False,
         log: Callable[[str], None] | None = None) -> LoadOutcome:
    """Load the crash kernel, unless the one loaded is the one the stamp describes and
    nothing changed since (``force``: load anyway).  A raw target's dump of the last
    crash is collected first (:mod:`pykexec.kdump.raw_target`); failing to, the load
    goes on: the next crash is what the service is for."""
    collected, collect_error = collect_raw(config, paths)
    outcome = _load(config, paths, force=force, log=log)
    return replace(outcome, collected=collected, collect_error=collect_error)


def collect_raw(config: KdumpConfig, paths: Paths) -> tuple[CrashRecord | None, str | None]:
    """The dump a raw target holds, collected: (its record or None, why it failed or None)."""
    if config.parsed_target.kind != "raw":
        return None, None
    from pykexec.kdump import raw_target
    from pykexec.vmcore.errors import VmcoreError

    try:
        return raw_target.collect(config, paths), None
    except (OSError, VmcoreError) as err:
        return None, f"cannot collect the dump on {config.target}: {err}"


def _load(config: KdumpConfig, paths: Paths, *, force: bool, log: Callable[[str], None] | None) -> LoadOutcome:
    crash = crash_kernel(config, paths)
    stamp = make_stamp(config, paths, crash)
    if not stamp["kernel_sha256"]:
        raise MachineError(f"crash kernel {crash.kernel} cannot be read "
                           "(set kernel = \"/boot/vmlinuz-...\" in the configuration)")
    loaded = kexec.status(crash=True)
    changed = stamp_changes(read_stamp(paths), stamp) if loaded else ()
    if loaded and not changed and not force:
        return LoadOutcome("unchanged", crash)
    from pykexec.request import KexecRequest

    request = KexecRequest(str(crash.kernel), initrd=str(crash.initrd), append=crash.append, reuse_cmdline=True,
                           crash=True, syscall=crash_syscall(paths))
    remove_stamp(paths)  # a failed load may leave no crash kernel: no stamp may claim one
    plan = kexec.load(request, log=log)
    write_stamp(paths, stamp)
    return LoadOutcome("reloaded" if loaded else "loaded", crash, changed if not force else ("forced",), plan)


def crash_syscall(paths: Paths) -> str:
    """kexec_load ("load") unless the kernel is locked down, where only kexec_file_load
    ("file") is allowed.  kexec_file_load reads the crash kernel and its initramfs into
    kernel buffers that stay in memory every later dump keeps: 18 MB of incompressible
    pages, a third of a 6.1 dump on the test bed (benchmarks/kdump_service.py); kexec_load
    copies them from our memory straight into the crash area, as kdump-tools' kexec does.
    (In a Xen dom0 either way goes through Xen.)"""
    from pykexec.probe import parse_lockdown

    try:
        lockdown = parse_lockdown((paths.sys / "kernel/security/lockdown").read_text())
    except OSError:
        lockdown = "none"  # no securityfs lockdown file: a kernel without lockdown support
    return "load" if lockdown == "none" else "file"


def unload(paths: Paths) -> bool:
    """Unload the crash kernel; False if none was loaded (not an error: the unit's
    ExecStop runs after anything)."""
    loaded = kexec.status(crash=True)
    if loaded:
        kexec.unload(crash=True)
    remove_stamp(paths)
    return loaded


def reserved_bytes(paths: Paths) -> int | None:
    """The memory reserved for a crash kernel (crashkernel=): the kernel's
    kexec_crash_size, or in a Xen dom0 Xen's crash area; None if unknown."""
    xen = under_xen(paths)
    if not xen:
        try:
            return int((paths.sys / "kernel/kexec_crash_size").read_text())
        except (OSError, ValueError):
            pass
    if paths.root != Path("/"):
        return None  # what follows asks this machine, not the one under paths
    try:
        if xen:  # Xen reserved the area; dom0's /proc/iomem does not show it
            from pykexec.kdump.xen_dom0 import crash_area_bytes

            return crash_area_bytes()
        from pykexec import probe

        region = probe.probe().crash_kernel
    except KexecError:
        return None
    return region.size if region is not None else 0


def status(config: KdumpConfig, paths: Paths, *, crashes: int = 3) -> dict[str, object]:
    """Loaded or not, since when and whether its files changed; reserved against needed
    memory; target, dump level, compression; the last ``crashes`` crashes saved."""
    out: dict[str, object] = {}
    try:
        out["loaded"] = kexec.status(crash=True)
    except KexecError as err:
        out["loaded"] = None
        out["loaded_error"] = str(err)
    # Who holds the crash kernel: Xen (kexec_op, from a dom0) or this kernel.
    out["loaded_through"] = BACKEND_XEN if under_xen(paths) else "kernel"
    stamp = read_stamp(paths)
    crash = crash_kernel(config, paths, build=False)
    if stamp is not None and isinstance(stamp.get("initrd"), str) and not config.initrd:
        crash = CrashKernel(crash.kernel, Path(str(stamp["initrd"])), crash.append)
    out["kernel"] = str(crash.kernel)
    out["initrd"] = str(crash.initrd)
    out["changed_since_load"] = list(stamp_changes(stamp, make_stamp(config, paths, crash))) \
        if out["loaded"] else []
    out["reserved_bytes"] = reserved_bytes(paths)
    from pykexec.kdump import estimate

    need = estimate.crashkernel_size(crash.kernel, crash.initrd, crash.append, paths, measure_capture=True)
    out["needed_bytes"] = need.total
    out["target"] = config.target
    out["dump_level"] = config.dump_level
    out["compression"] = config.compression
    out["crashes"] = [r.to_dict() for r in recent_crashes(config, paths)[:crashes]]
    return out


def recent_crashes(config: KdumpConfig, paths: Paths) -> list[CrashRecord]:
    """The crashes on a local target, or collected from a raw one, newest first (an ssh
    target: none here)."""
    from pykexec.kdump import records

    target = config.parsed_target
    if target.kind == "raw":
        from pykexec.kdump.raw_target import collect_dir

        return records.list_records(collect_dir(paths))
    if target.kind != "local":
        return []
    return records.list_records(paths.under(target.path))
