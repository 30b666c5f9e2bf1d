"""The crash initramfs, built by pykexec from the running system (why not through
initramfs-tools: docs/kdump-service.md, "The crash initramfs").

It holds only what the capture (:mod:`pykexec.kdump.capture`) runs: the system's
Python interpreter and the modules the capture imports, precompiled
(:mod:`pykexec.kdump.pyclosure`); the shared libraries they need
(:mod:`pykexec.kdump.shlibs`, debug information stripped); the kernel modules that
reach the target (:mod:`pykexec.kdump.target_probe`, :mod:`pykexec.kdump.kmods`),
decompressed; an ssh client and its key for ssh targets; the configuration
(``/etc/pykexec/kdump.toml``) and the facts found here
(:mod:`pykexec.kdump.capture_plan`).  ``/init`` is a Python script the kernel runs
through its ``#!`` line: no shell, no busybox.

:func:`build` writes it only when a digest of its inputs (every file's name, size
and time; the configuration; the facts) differs from the one recorded beside it
(:func:`stamp_path`), and atomically (a temporary file renamed).
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import partial
from pathlib import Path

from pykexec.errors import InputError
from pykexec.kdump import capture_plan as CP
from pykexec.kdump.config import to_toml
from pykexec.kdump.paths import CONFIG as CONFIG_PATH
from pykexec.kdump.pid1 import RB_AUTOBOOT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from pykexec.kdump.config import KdumpConfig
    from pykexec.kdump.cpio import CpioWriter
    from pykexec.kdump.paths import Paths

#: Bump when the layout changes, so that every built initramfs is rebuilt.
LAYOUT_VERSION = "1"
#: What the capture imports, directly or not (pyclosure follows the rest).
CAPTURE_MODULE = "pykexec.kdump.capture"
#: ssh needs to know who it runs as; the crash kernel has no user database else.
PASSWD = b"root:x:0:0:root:/root:/bin/sh\n"
GROUP = b"root:x:0:\n"
SSH_CLIENT = "/usr/bin/ssh"
#: Empty directories the capture mounts on or writes to.
DIRECTORIES = ("dev", "proc", "sys", "tmp", "run", "root", CP.MOUNT_POINT)


def init_script(interpreter: str) -> bytes:
    """``/init``: the interpreter runs the capture, which ends in reboot(2); if it cannot
    even start, this reboots (PID 1 exiting would panic the crash kernel)."""
    return (f"#!{interpreter} -S\n"
            "# pykexec's kdump capture, PID 1 of the crash kernel (pykexec.kdump.capture)\n"
            "import sys\n"
            f"sys.path.insert(0, {CP.PYTHON_DIR!r})\n"
            "try:\n"
            f"    from {CAPTURE_MODULE} import main\n"
            "    main()\n"
            "except BaseException as err:\n"
            "    print('pykexec-kdump: the capture cannot run:', repr(err), flush=True)\n"
            "import ctypes\n"
            f"ctypes.CDLL(None).reboot({RB_AUTOBOOT})\n").encode()


# -- what goes in -----------------------------------------------------------------------------

class Entry:
    """One path of the archive: ``kind`` dir, file, link or chr; ``source`` a file's
    bytes or what makes them, a link's target."""

    def __init__(self, kind: str, source: object, mode: int) -> None:
        self.kind, self.source, self.mode = kind, source, mode
        self.rdev = (0, 0)


class Contents:
    """The entries of the archive, in order, each with what identifies its content for
    the digest (bytes' hash; a host file's name, size and time), read only when written."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self._keys: list[str] = []

    def _add(self, path: str, kind: str, source: object, mode: int, key: str) -> None:
        path = "/" + path.strip("/")
        if path not in self.entries:
            self.entries[path] = Entry(kind, source, mode)
            self._keys.append(f"{path} {kind} {mode:o} {key}")

    def directory(self, path: str) -> None:
        self._add(path, "dir", None, 0o755, "")

    def data(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._add(path, "file", data, mode, hashlib.sha256(data).hexdigest())

    def symlink(self, path: str, target: str) -> None:
        self._add(path, "link", target, 0o777, target)

    def char_device(self, path: str, major: int, minor: int) -> None:
        self._add(path, "chr", None, 0o600, f"{major}:{minor}")
        self.entries["/" + path.strip("/")].rdev = (major, minor)

    def host_file(self, guest: str, host: str, make: Callable[[], bytes], mode: int) -> None:
        """``guest`` made by ``make`` from host file ``host`` (its identity in the digest)."""
        st = os.stat(host)
        self._add(guest, "file", make, mode, f"{host} {st.st_size} {st.st_mtime_ns}")

    def place(self, path: str, _depth: int = 0) -> str:
        """``path`` with each symbolic link on the way (a merged /usr's ``/lib``, a
        library's soname) kept as a link, and followed: the path of real directories
        (and, if it exists, the real file) to put the content at."""
        if _depth > 16:
            raise InputError(f"{path}: too many levels of symbolic links")
        current = "/"
        parts = Path(path).parts[1:]
        for i, part in enumerate(parts):
            current = os.path.join(current, part)
            if os.path.islink(current):
                target = os.readlink(current)
                self.symlink(current, target)
                resolved = os.path.normpath(os.path.join(os.path.dirname(current), target))
                return self.place(os.path.join(resolved, *parts[i + 1:]), _depth + 1)
        return path

    def host_path(self, path: str, make: Callable[[str], bytes] = lambda p: Path(p).read_bytes()) -> None:
        """Host file ``path`` at the same place (see :meth:`place`), its content
        ``make(real path)``."""
        real = self.place(path)
        self.host_file(real, real, partial(make, real), os.stat(real).st_mode & 0o7777)

    def digest(self) -> str:
        return hashlib.sha256("\n".join([LAYOUT_VERSION, *self._keys]).encode()).hexdigest()

    def write(self, writer: CpioWriter) -> None:
        for path, e in self.entries.items():
            if e.kind == "dir":
                writer.directory(path, e.mode)
            elif e.kind == "link":
                writer.symlink(path, str(e.source))
            elif e.kind == "chr":
                writer.char_device(path, *e.rdev)
            else:
                data = e.source() if callable(e.source) else e.source
                assert isinstance(data, bytes)
                writer.file(path, data, e.mode)


def _stripped_file(path: str) -> bytes:
    from pykexec.kdump.shlibs import stripped

    return stripped(Path(path).read_bytes())


def add_python(contents: Contents, compression: str) -> str:
    """The interpreter, the capture's modules and every library they need; returns the
    interpreter's path (the ``#!`` of ``/init``).  Of the page codecs' libraries, only
    ``compression``'s: the capture imports its codec's alone (cramjam's takes 1.8 MB of
    a 5.6 MB archive)."""
    from pykexec.kdump.pyclosure import interpreter, pyc, python_files
    from pykexec.kdump.shlibs import library_closure
    from pykexec.vmcore.page_codecs import CODEC_MODULES

    python = interpreter()
    unused = [module for kind, module in CODEC_MODULES.items() if kind != compression]
    files = python_files([CAPTURE_MODULE], CP.PYTHON_DIR, python, leave_out=unused)
    extensions = [f.host for f in files if not f.compile]
    contents.host_path(python, _stripped_file)
    for lib in library_closure([python, *extensions]):
        contents.host_path(lib, _stripped_file)
    for f in files:
        if f.compile:
            contents.host_file(contents.place(f.guest), f.host, partial(pyc, f.host, f.guest[:-1]), 0o644)
        else:
            contents.host_file(contents.place(f.guest), f.host, partial(_stripped_file, f.host), 0o755)
    return python


# -- the target ------------------------------------------------------------------------------

def crash_release(config: KdumpConfig, paths: Paths) -> str:
    """The crash kernel's release: the running kernel's, or the one ``config.kernel``
    names in its setup header (``kernel_version``), or in its file name."""
    if not config.kernel:
        return os.uname().release
    from pykexec.images.bzimage import header_from_image
    from pykexec.layouts.boot_params import SECTOR_SIZE

    kernel = paths.under(config.kernel)
    try:
        data = kernel.read_bytes()
        version_at = header_from_image(data).kernel_version + SECTOR_SIZE
        return data[version_at:version_at + 256].split(b" ", 1)[0].decode()
    except (OSError, ValueError, UnicodeDecodeError):
        if kernel.name.startswith("vmlinuz-"):
            return kernel.name[len("vmlinuz-"):]
        raise InputError(f"{kernel}: cannot tell its kernel release (not a bzImage)") from None


def target_plan(config: KdumpConfig, paths: Paths, release: str) -> tuple[CP.CapturePlan, list[str]]:
    """The capture's facts about the target, and the modules (by name) that reach it."""
    from pykexec.kdump import target_probe as probe
    from pykexec.kdump.fsuuid import read_uuid

    target = config.parsed_target
    if target.kind == "ssh":
        import socket

        try:
            host_ip = socket.gethostbyname(target.host)
        except OSError as err:
            raise InputError(f"ssh target {target.host}: cannot resolve its address ({err})") from None
        nic = probe.interface_to(host_ip, paths)
        network = CP.Network(nic.mac, nic.address, nic.prefix, nic.gateway, host_ip)
        modules = probe.driver_modules(paths.sys / "class" / "net" / nic.name / "device")
        return CP.CapturePlan(release, "ssh", network=network), modules
    if target.kind == "raw":
        try:
            rdev = os.stat(paths.under(target.path)).st_rdev
        except OSError as err:
            raise InputError(f"target {target.path}: {err.strerror}") from None
        disk = probe.block_device_dir(os.major(rdev), os.minor(rdev), paths)
        name = os.path.basename(os.path.realpath(paths.sys / "dev" / "block" / f"{os.major(rdev)}:{os.minor(rdev)}"))
        device = CP.Device(name, os.major(rdev), os.minor(rdev))
        return CP.CapturePlan(release, "raw", device=device), probe.disk_modules(disk)
    mount, inside = probe.mount_of(target.path, paths)
    if mount.major == 0:
        raise InputError(f"target {target.path} is on {mount.fstype} ({mount.source}), not on a disk: "
                         "the crash kernel cannot reach it (use a directory on a disk, or an ssh target)")
    disk = probe.block_device_dir(mount.major, mount.minor, paths)
    name = os.path.basename(os.path.realpath(paths.sys / "dev" / "block" / f"{mount.major}:{mount.minor}"))
    device = CP.Device(name, mount.major, mount.minor, mount.fstype,
                       read_uuid(paths.under(f"/dev/{name}"), mount.fstype),
                       "subvolid=5" if mount.fstype == "btrfs" else "", inside)
    return CP.CapturePlan(release, "local", device=device), [*probe.disk_modules(disk), f"fs-{mount.fstype}"]


def add_modules(contents: Contents, wanted: list[str], paths: Paths, release: str) -> list[str]:
    """The modules ``wanted`` (names or aliases) and what they need, decompressed, in
    :data:`~pykexec.kdump.capture_plan.MODULE_DIR`; returns their load order."""
    from pykexec.kdump.kmods import ModuleIndex

    index = ModuleIndex(paths.modules / release)
    order = index.modules_for(wanted)
    for name in order:
        contents.host_file(f"{CP.MODULE_DIR}/{name}.ko", str(index.moddir / index.files[name]),
                           partial(index.contents, name), 0o644)
    return order


def add_ssh(contents: Contents, config: KdumpConfig, paths: Paths) -> None:
    """The ssh client, its libraries, the key, and who root is."""
    from pykexec.kdump.shlibs import library_closure

    key = paths.under(config.ssh_key)
    if not key.is_file():
        raise InputError(f"ssh target: no key {key} (ssh_key; make one with "
                         f"ssh-keygen -t ed25519 -N '' -f {config.ssh_key})")
    contents.host_path(SSH_CLIENT, _stripped_file)
    for lib in library_closure([SSH_CLIENT]):
        contents.host_path(lib, _stripped_file)
    contents.host_file(CP.SSH_KEY_PATH, str(key), key.read_bytes, 0o600)
    known = paths.under("/root/.ssh/known_hosts")
    if known.is_file():
        contents.host_file("/root/.ssh/known_hosts", str(known), known.read_bytes, 0o600)
    contents.data("/etc/passwd", PASSWD)
    contents.data("/etc/group", GROUP)


# -- the archive -----------------------------------------------------------------------------

def compression(paths: Paths, release: str) -> str:
    """zstd if the crash kernel unpacks it (``CONFIG_RD_ZSTD=y`` in its config), else gzip."""
    try:
        config = (paths.boot / f"config-{release}").read_text()
    except OSError:
        return "gzip"
    return "zstd" if "\nCONFIG_RD_ZSTD=y\n" in config else "gzip"


def stamp_path(paths: Paths) -> Path:
    """Beside the initramfs: the digest of its inputs, and its sizes (JSON)."""
    return paths.initramfs.with_name(paths.initramfs.name + ".json")


def contents_for(config: KdumpConfig, paths: Paths, release: str) -> Contents:
    """Everything the crash initramfs of ``config`` holds."""
    contents = Contents()
    for directory in DIRECTORIES:
        contents.directory(directory)
    contents.char_device("/dev/console", 5, 1)  # the kernel opens it for init's output
    contents.char_device("/dev/null", 1, 3)
    # Python reads it at start-up when getrandom() has no entropy yet (a crash kernel Xen
    # starts gets no RNG seed from its loader): without it the interpreter cannot start.
    contents.char_device("/dev/urandom", 1, 9)
    plan, wanted = target_plan(config, paths, release)
    modules = add_modules(contents, wanted, paths, release)
    plan = CP.CapturePlan(plan.release, plan.target_kind, modules, plan.device, plan.network)
    python = add_python(contents, config.compression)
    if plan.target_kind == "ssh":
        add_ssh(contents, config, paths)
    contents.data(CP.PLAN_PATH, plan.to_json().encode())
    contents.data(CONFIG_PATH, to_toml(config).encode())
    contents.data("/init", init_script(python), 0o755)
    return contents


def build(config: KdumpConfig, paths: Paths, *, release: str | None = None) -> Path:
    """The crash initramfs for this system and ``config`` at ``paths.initramfs``, built
    unless the one there was built from the same inputs.  ``release``: the crash
    kernel's (default: :func:`crash_release`)."""
    release = release or crash_release(config, paths)
    contents = contents_for(config, paths, release)
    kind = compression(paths, release)
    digest = contents.digest()
    stamp = stamp_path(paths)
    out = paths.initramfs
    try:
        if out.exists() and json.loads(stamp.read_text()).get("digest") == f"{kind}:{digest}":
            return out
    except (OSError, ValueError, AttributeError):
        pass  # no stamp, or a bad one: build
    unpacked = _write(contents, out, kind)
    info = {"digest": f"{kind}:{digest}", "release": release, "compression": kind,
            "bytes": out.stat().st_size, "unpacked_bytes": unpacked, "entries": len(contents.entries)}
    _atomic_write(stamp, (json.dumps(info, indent=1) + "\n").encode())
    return out


def _write(contents: Contents, out: Path, kind: str) -> int:
    """The archive, compressed, to ``out`` atomically; returns its size unpacked."""
    from pykexec.kdump.cpio import CpioWriter

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as raw:
            if kind == "zstd":
                import zstandard

                # Level 9: 10% larger than 19 but 20 times faster (a rebuild at boot must be quick).
                with zstandard.ZstdCompressor(level=9, threads=-1).stream_writer(raw, closefd=False) as stream:
                    writer = CpioWriter(stream)
                    contents.write(writer)
                    writer.close()
            else:
                import gzip

                with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as stream:
                    writer = CpioWriter(stream)
                    contents.write(writer)
                    writer.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return writer.size


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
