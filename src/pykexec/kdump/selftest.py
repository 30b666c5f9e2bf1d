"""``kdump test``: every check of the kdump service possible without crashing, each a
:class:`~pykexec.doctor.Finding` (one line, and the fix), as ``pykexec doctor`` reports:

* the crash kernel is loaded, and its kernel, initrd, configuration and command line
  are those it was loaded with (the load stamp of :mod:`pykexec.kdump.service`);
* the reservation (``crashkernel=``) holds what the crash kernel needs
  (:mod:`pykexec.kdump.estimate`);
* the crash initramfs holds the capture (``/init``, its Python, pykexec), this
  configuration, and the modules that reach the target;
* the target is reachable and writable, with room for the predicted dump (a local
  directory: ``statvfs``; ssh: ``test -w`` and ``df`` run on the host; a raw device:
  its size).

``kdump test --crash --yes`` then panics the machine through sysrq (:func:`crash_now`).
"""

from __future__ import annotations

import os
import re
import subprocess

from pykexec.doctor import FAIL, OK, WARN, Finding
from pykexec.errors import KexecError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from pykexec.kdump.config import KdumpConfig, Target
    from pykexec.kdump.cpio_reader import CpioEntry
    from pykexec.kdump.paths import Paths

    Runner = Callable[..., subprocess.CompletedProcess[str]]

MiB = 1 << 20
LOAD_FIX = "pykexec kdump load"
_CAPTURE_CODE = (("the capture", re.compile(r"(^|/)pykexec/kdump/(__pycache__/)?capture(\.[\w-]+)?\.pyc?$")),
                 ("vmcore save", re.compile(r"(^|/)pykexec/vmcore/(__pycache__/)?save(\.[\w-]+)?\.pyc?$")))
_MODULE_SUFFIX = re.compile(r"\.ko(\.xz|\.zst|\.gz)?$")


def check_loaded(paths: Paths) -> list[Finding]:
    from pykexec import kexec
    from pykexec.kdump.service import boot_id, read_stamp

    try:
        loaded = kexec.status(crash=True)
    except KexecError as err:
        return [Finding("loaded", FAIL, f"cannot tell whether a crash kernel is loaded: {err}",
                        "pykexec doctor says what this kernel lacks")]
    if not loaded:
        return [Finding("loaded", FAIL, "no crash kernel is loaded: a panic now would not be captured",
                        f"{LOAD_FIX} (at every boot: pykexec kdump enable)")]
    stamp = read_stamp(paths)
    if stamp is None or stamp.get("boot_id") != boot_id(paths):
        why = "no load stamp" if stamp is None else "its load stamp is from another boot"
        return [Finding("loaded", WARN, f"a crash kernel is loaded, but not by pykexec kdump ({why})", LOAD_FIX)]
    return [Finding("loaded", OK, "the crash kernel is loaded")]


def check_unchanged(config: KdumpConfig, paths: Paths) -> list[Finding]:
    from pykexec.kdump.service import crash_kernel, make_stamp, read_stamp, stamp_changes

    stamp = read_stamp(paths)
    if stamp is None:
        return []
    crash = crash_kernel(config, paths, build=False)
    changed = [c for c in stamp_changes(stamp, make_stamp(config, paths, crash)) if c != "boot"]
    if changed:
        return [Finding("unchanged", FAIL, f"changed since the crash kernel was loaded: {', '.join(changed)}",
                        LOAD_FIX)]
    return [Finding("unchanged", OK, f"{crash.kernel}, {crash.initrd} and the configuration are as loaded")]


def check_reservation(config: KdumpConfig, paths: Paths, ram: tuple[int, int, int] | None) -> list[Finding]:
    """``ram``: (max pfn, RAM pages, exclusion ranges) from a scan of this kernel, if made."""
    from pykexec.kdump.estimate import crashkernel_size
    from pykexec.kdump.service import crash_kernel, reserved_bytes

    crash = crash_kernel(config, paths, build=False)
    scan = dict(zip(("max_pfn", "ram_pages", "exclusion_ranges"), ram)) if ram else {}
    need = crashkernel_size(crash.kernel, crash.initrd, crash.append, paths, measure_capture=True, **scan)
    reserved = reserved_bytes(paths)
    if reserved is None:
        return [Finding("reservation", WARN, f"cannot read the reserved size; the crash kernel needs "
                        f"{need.option}", "run as root")]
    if reserved < need.total:
        return [Finding("reservation", FAIL, f"{reserved // MiB} MiB reserved, the crash kernel needs about "
                        f"{need.total // MiB} MiB (pykexec kdump estimate explains)",
                        f"boot with {need.option}")]
    return [Finding("reservation", OK, f"{reserved // MiB} MiB reserved, about {need.total // MiB} MiB needed")]


def check_initramfs(config: KdumpConfig, paths: Paths, initrd: Path, modules: list[str] | None) -> list[Finding]:
    """What the crash initramfs must hold; ``modules``: the names of the modules that
    reach the target (None: not known here)."""
    from pykexec.kdump.config import to_toml
    from pykexec.kdump.cpio_reader import read_initramfs_file
    from pykexec.kdump.paths import CONFIG

    config_name = CONFIG.lstrip("/")
    try:
        entries = read_initramfs_file(initrd, want=lambda n: n in ("init", config_name))
    except KexecError as err:
        return [Finding("initramfs", FAIL, str(err), LOAD_FIX)]
    names = {e.name: e for e in entries}
    out = [_init_finding(names)]
    for what, pattern in _CAPTURE_CODE:
        if not any(pattern.search(name) for name in names):
            out.append(Finding("initramfs", FAIL, f"{initrd} does not hold {what} (pykexec)", LOAD_FIX))
    embedded = names.get(config_name)
    if embedded is None or embedded.data is None:
        out.append(Finding("initramfs", WARN, f"{initrd} embeds no {CONFIG}: the capture uses its defaults",
                           LOAD_FIX))
    elif embedded.data.decode(errors="replace") != to_toml(config):
        out.append(Finding("initramfs", FAIL, f"{initrd} embeds another configuration than {config.source}",
                           LOAD_FIX))
    if modules is not None:
        held = {_MODULE_SUFFIX.sub("", os.path.basename(n)).replace("-", "_") for n in names
                if _MODULE_SUFFIX.search(n)}
        missing = [m for m in modules if m.replace("-", "_") not in held]
        if missing:
            out.append(Finding("initramfs", FAIL, f"{initrd} lacks the target's modules: {', '.join(missing)}",
                               LOAD_FIX))
    if len(out) == 1 and out[0].status == OK:
        held_modules = f" and the target's {len(modules)} modules" if modules else ""
        return [Finding("initramfs", OK, f"{initrd} holds the capture, the configuration{held_modules}")]
    return [f for f in out if f.status != OK]


def _init_finding(names: dict[str, CpioEntry]) -> Finding:
    init = names.get("init")
    if init is None or not init.is_file or init.data is None:
        return Finding("initramfs", FAIL, "the crash initramfs has no /init", LOAD_FIX)
    first = init.data.split(b"\n", 1)[0]
    if first.startswith(b"#!"):
        words = first[2:].decode(errors="replace").split()
        interpreter = words[0].lstrip("/") if words else ""
        if interpreter not in names:
            return Finding("initramfs", FAIL, f"/init runs /{interpreter}, which the initramfs does not hold",
                           LOAD_FIX)
    if not init.mode & 0o111:
        return Finding("initramfs", FAIL, "/init in the crash initramfs is not executable", LOAD_FIX)
    return Finding("initramfs", OK, "/init is there")


def target_modules(config: KdumpConfig, paths: Paths) -> list[str] | None:
    """The modules (names, load order) that reach the target from the crash kernel, as
    the crash initramfs is built with them; None if they cannot be found here."""
    from pykexec.kdump.initramfs import crash_release, target_plan
    from pykexec.kdump.kmods import ModuleIndex

    try:
        release = crash_release(config, paths)
        _, wanted = target_plan(config, paths, release)
        return ModuleIndex(paths.modules / release).modules_for(wanted)
    except (KexecError, OSError):
        return None


def check_target(config: KdumpConfig, paths: Paths, predicted: int | None,
                 run: Runner = subprocess.run) -> list[Finding]:
    """The target is there, writable, with room for ``predicted`` bytes (None: unknown)."""
    target = config.parsed_target
    if target.kind == "ssh":
        return _check_ssh(config, target, predicted, run)
    path = paths.under(target.path)
    if target.kind == "raw":
        try:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
        except OSError as err:
            return [Finding("target", FAIL, f"raw target {target.path}: {err.strerror}",
                            "set target to a block device that exists")]
        if not os.access(path, os.W_OK):
            return [Finding("target", FAIL, f"raw target {target.path} is not writable", "run as root")]
        return [_room("target", f"raw target {target.path}", size, predicted, "use a larger device")]
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        return [Finding("target", FAIL, f"target {target.path}: {existing} is not a writable directory",
                        f"mkdir -p {target.path} (as root)")]
    st = os.statvfs(existing)
    return [_room("target", f"target {target.path}", st.f_bavail * st.f_frsize, predicted,
                  "free space there, lower keep, or raise dump_level")]


def _room(check: str, what: str, free: int, predicted: int | None, fix: str) -> Finding:
    if predicted is None:
        return Finding(check, WARN, f"{what}: writable, {free // MiB} MiB free; the dump's size is unknown "
                       "(pykexec kdump estimate says why)", "run as root, on a kernel with /proc/kcore")
    if free < predicted:
        return Finding(check, FAIL, f"{what}: {free // MiB} MiB free, the dump needs about {predicted // MiB} MiB",
                       fix)
    return Finding(check, OK, f"{what}: writable, {free // MiB} MiB free for a dump of about "
                   f"{-(-predicted // MiB)} MiB")


def ssh_command(config: KdumpConfig, target: Target, *remote: str) -> list[str]:
    """ssh to the target host as the capture goes there: the key, no questions asked."""
    port = ["-p", str(target.port)] if target.port else []
    return ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-i", config.ssh_key, *port,
            target.ssh_destination, *remote]


def _check_ssh(config: KdumpConfig, target: Target, predicted: int | None, run: Runner) -> list[Finding]:
    import shlex

    where = f"{target.ssh_destination}:{target.path}"
    quoted = shlex.quote(target.path)
    try:
        proc = run(ssh_command(config, target, "test", "-d", quoted, "-a", "-w", quoted),
                   capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            said = proc.stderr.strip().splitlines()
            why = said[-1] if said else f"{target.path} is not a writable directory there"
            return [Finding("target", FAIL, f"ssh target {where}: {why}",
                            f"create {target.path} writable by {target.user or 'the ssh user'}, and put "
                            f"{config.ssh_key}.pub in its authorized_keys")]
        proc = run(ssh_command(config, target, "df", "-Pk", quoted), capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return [Finding("target", FAIL, "no ssh client here to reach the target", "install openssh-client")]
    except subprocess.TimeoutExpired:
        return [Finding("target", FAIL, f"ssh target {where}: no answer in 60 s", "check the host and network")]
    lines = proc.stdout.strip().splitlines()
    try:
        free = int(lines[-1].split()[3]) * 1024
    except (IndexError, ValueError):
        return [Finding("target", WARN, f"ssh target {where}: writable; df there did not say how much is free",
                        "check the space on the host")]
    return [_room("target", f"ssh target {where}", free, predicted, "free space on the host")]


def run_checks(config: KdumpConfig, paths: Paths, *, predicted: int | None = None,
               ram: tuple[int, int, int] | None = None, run: Runner = subprocess.run) -> list[Finding]:
    """Every check, in order; ``predicted`` and ``ram`` as a scan of this kernel's
    memory found them (:func:`pykexec.kdump.dump_size.predict_here`), if one was made."""
    from pykexec.kdump.service import initrd_path

    findings = check_loaded(paths) + check_unchanged(config, paths) + check_reservation(config, paths, ram)
    findings += check_initramfs(config, paths, initrd_path(config, paths, build=False),
                                target_modules(config, paths))
    return findings + check_target(config, paths, predicted, run)


def crash_now(paths: Paths, *, yes: bool) -> None:
    """Panic this machine through sysrq, as ``kdumpctl test`` does: only with ``yes``,
    and only with a crash kernel loaded to capture it.  Returns only by failing."""
    from pykexec import kexec

    if not yes:
        raise UsageError("kdump test --crash panics this machine now; add --yes to mean it")
    if not kexec.status(crash=True):
        raise KexecError("no crash kernel is loaded: the panic would not be captured (pykexec kdump load)")
    os.sync()
    try:
        with open(paths.proc / "sysrq-trigger", "w") as f:
            f.write("c")
    except OSError as err:
        raise KexecError(f"cannot write {paths.proc / 'sysrq-trigger'}: {err.strerror}") from None
