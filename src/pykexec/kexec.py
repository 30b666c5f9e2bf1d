"""The library core: plan a load, load it, unload, report status, execute.

Data flows one way::

    probe the machine -> read and parse the image -> choose the backend -> plan
        -> check (through that backend) -> load (under the lock)

The command line, the kdump service and any Python caller go through these functions;
nothing here knows about argv. Example::

    from pykexec import kexec, machine_file
    from pykexec.request import KexecRequest

    machine = machine_file.load("machine.json")        # or None: probe this machine
    plan = kexec.plan(KexecRequest("./vmlinuz", append="console=ttyS0"), machine)
"""

from __future__ import annotations

import errno
import re

from pykexec import images
from pykexec.errors import KexecError, SyscallError, UsageError, read_input
from pykexec.plan import BACKEND_XEN, FileLoadInputs, LoadPlan
from pykexec.request import KexecRequest, LoadRequest, Module

TYPE_CHECKING = False  # typing costs an import; this name is all type checkers need
if TYPE_CHECKING:
    from collections.abc import Callable

    from pykexec.backends.protocol import Backend
    from pykexec.images.image_type import ImageType
    from pykexec.images.uki_unpack import Unpacked
    from pykexec.machine import Machine, XenInfo

# --reuse-cmdline drops what belongs to the running kernel's boot only.
_DROP_ON_REUSE = ("BOOT_IMAGE=", "crashkernel=", "kexec_jump_back_entry=")
_CMDLINE_WORD = re.compile(r'(?:[^\s"]+|"[^"]*")+')
# kexec_file_load errors after which kexec_load may be tried (not signature errors).
FALLBACK_ERRNOS = (errno.ENOSYS, errno.EINVAL, errno.ENOEXEC, errno.EOPNOTSUPP)


def compose_cmdline(running: str, reuse: bool, append: str | None, xen: XenInfo | None = None) -> str:
    """The next kernel's command line: the running one's (``reuse``, without what belongs
    to its own boot), then ``append``.  In a Xen dom0 (``xen``), Xen starts the next kernel
    on the bare machine: dom0's Xen console is swapped for Xen's own (:mod:`pykexec.xen_cmdline`)."""
    words: list[str] = []
    if reuse:
        words = [w for w in _CMDLINE_WORD.findall(running) if not w.startswith(_DROP_ON_REUSE)]
        if xen is not None:
            from pykexec.xen_cmdline import bare_metal_words

            words = bare_metal_words(words, xen.cmdline, append)
    if append:
        words.append(append.strip())
    return " ".join(w for w in words if w)


def read_module(spec: str) -> Module:
    """``--module="FILE ARGS"``: the file is the first word; the whole string is the
    module's command line, as kexec-tools and GRUB pass it."""
    words = spec.split(maxsplit=1)
    if not words:
        raise UsageError("--module needs a file name")
    return Module(words[0], read_input(words[0], "module"), spec.strip())


def this_machine() -> Machine:
    from pykexec import probe

    return probe.probe()


class Image:
    """The kernel (or hypervisor) file of a request: read, decompressed and typed."""

    def __init__(self, path: str, forced_type: str | None = None) -> None:
        self.path = path
        self.data = images.decompress(read_input(path, "kernel"), path)
        self.type: ImageType = images.select(self.data, forced_type)


# --- choosing the backend --------------------------------------------------------------

def uses_xen_crash_efi(request: KexecRequest, machine: Machine) -> bool:
    """--xen-crash-efi, or a crash load in a Xen dom0 under lockdown or Secure Boot (Xen
    must not run unsigned purgatory there)."""
    if request.xen_crash_efi:
        if not request.crash:
            raise UsageError("--xen-crash-efi is a crash load type: use it with -p")
        if machine.xen is None:
            raise UsageError(f"--xen-crash-efi is a Xen load type, and {machine.source} runs no Xen")
        return True
    return bool(request.crash and machine.xen is not None
                and (machine.lockdown != "none" or machine.secure_boot))


def backend_named(name: str) -> Backend:
    """A backend by its plan name (``kexec_load``, ``kexec_file_load``, ``xen_kexec_op``)."""
    if name == BACKEND_XEN:
        from pykexec.backends.xen.backend import XenBackend

        return XenBackend()
    from pykexec.backends import linux

    backends: dict[str, Backend] = {b.name: b for b in (linux.KexecLoad(), linux.KexecFileLoad())}
    try:
        return backends[name]
    except KeyError:
        raise UsageError(f"unknown backend {name!r}") from None


def choose_backend(request: KexecRequest, image_type: ImageType, machine: Machine) -> Backend:
    """-s and -c are explicit; -a (the default) starts with kexec_file_load when the
    kernel could take the image. In a Xen dom0 the hypervisor loads every image."""
    from pykexec.plan import BACKEND_KEXEC_FILE_LOAD, BACKEND_KEXEC_LOAD

    if machine.xen is not None:
        if request.syscall == "file":
            raise UsageError("kexec_file_load is not for a Xen dom0: Xen loads images itself (drop -s)")
        return backend_named(BACKEND_XEN)
    if request.syscall == "file" or (request.syscall == "auto" and image_type.file_load):
        return backend_named(BACKEND_KEXEC_FILE_LOAD)
    return backend_named(BACKEND_KEXEC_LOAD)


# --- planning --------------------------------------------------------------------------

def plan(request: KexecRequest, machine: Machine | None = None, backend: Backend | None = None) -> LoadPlan:
    """The checked plan for ``request`` on ``machine`` (default: this machine, probed),
    through ``backend`` (default: chosen as :func:`choose_backend` does). Touches nothing."""
    machine = machine if machine is not None else this_machine()
    image = Image(request.kernel, request.image_type)
    backend = backend if backend is not None else choose_backend(request, image.type, machine)
    return plan_image(request, machine, image, backend)


def plan_image(request: KexecRequest, machine: Machine, image: Image, backend: Backend) -> LoadPlan:
    """Plan the load of the already read ``image`` for ``backend``, then check it through
    that backend. A UKI is unpacked first (:mod:`pykexec.images.uki_unpack`) and its ``.linux``
    planned as a bzImage with the initrd and command line systemd-stub would give it."""
    if request.crash and machine.crash_kernel is None:
        raise UsageError(f"no crash kernel region is reserved on {machine.source} "
                         "(boot with crashkernel=SIZE, e.g. crashkernel=256M)")
    initrd = read_input(request.initrd, "initrd") if request.initrd else None
    cmdline = compose_cmdline(machine.cmdline, request.reuse_cmdline, request.append, machine.xen)
    multiboot = image.type.name.startswith("multiboot")
    if request.modules and not multiboot:
        raise UsageError(f"--module is for multiboot images; {request.kernel} is {image.type.name}")
    if request.initrd and multiboot:
        raise UsageError("--initrd is for Linux images; pass the initrd of a multiboot kernel with --module")
    modules = [read_module(spec) for spec in request.modules]
    kernel_path, kernel_data, initrd_path, image_type = request.kernel, image.data, request.initrd, image.type
    unpacked = None
    if image.type.name == "uki":
        from pykexec.images import bzimage

        unpacked = _unpack_uki(request, machine, image.data, initrd, cmdline)
        kernel_data, initrd, cmdline = unpacked.kernel, unpacked.initrd, unpacked.cmdline
        kernel_path, image_type = f"{request.kernel}:.linux", bzimage.BZIMAGE64
        initrd_path = f"{request.kernel}:initrd" if initrd is not None else None
    elif request.uki_profile is not None or request.uki_addons:
        raise UsageError(f"--uki-profile and --uki-addon are for UKIs; {request.kernel} is {image.type.name}")
    if uses_xen_crash_efi(request, machine):
        from pykexec import xen_crash_efi

        req = LoadRequest(kernel_path, kernel_data, machine, cmdline=cmdline, initrd_path=initrd_path,
                          initrd=initrd, crash=True, mem_min=request.mem_min, mem_max=request.mem_max,
                          backend=backend.name)
        result = xen_crash_efi.plan(req)
        if not request.xen_crash_efi:
            why = "Secure Boot is on" if machine.secure_boot else f"lockdown is {machine.lockdown}"
            result.notes.insert(0, f"CRASH_EFI chosen because {why}: Xen must not run unsigned purgatory")
    elif backend.name == "kexec_file_load":
        if not image_type.file_load:
            raise UsageError(f"kexec_file_load cannot load {image_type.name} images; use -c")
        # The kernel parses the file itself: refuse here what it would refuse with a bare errno.
        from pykexec.images.bzimage import check_bzimage
        from pykexec.layouts.boot_params import check_cmdline

        check_cmdline(check_bzimage(kernel_data, kernel_path), cmdline.encode(), file_load=True)
        inputs = FileLoadInputs(kernel_path, initrd_path, cmdline)
        if unpacked is not None:  # not files: handed over in memory files
            inputs = FileLoadInputs(kernel_path, initrd_path, cmdline, kernel_data, initrd)
        result = LoadPlan(image_type=image_type.name, backend=backend.name, crash=request.crash, cmdline=cmdline,
                          file_inputs=inputs)
    else:
        req = LoadRequest(kernel_path=kernel_path, kernel=kernel_data, machine=machine, cmdline=cmdline,
                          initrd_path=initrd_path, initrd=initrd, crash=request.crash,
                          mem_min=request.mem_min, mem_max=request.mem_max, backend=backend.name,
                          purgatory_console=request.purgatory_console,
                          memmap_cmdline=request.pass_memmap_cmdline, modules=modules)
        result = image_type.plan(req)
    if unpacked is not None:
        from pykexec.images import uki

        uki.describe(result, unpacked)
    backend.check(result, machine)
    return result


def _unpack_uki(request: KexecRequest, machine: Machine, data: bytes, initrd: bytes | None,
                cmdline: str) -> Unpacked:
    """The UKI's kernel, initrd and command line as systemd-stub assembles them, the
    user's --initrd and command line (if any was given) taking the stub's places for a
    boot loader's initrd and command line."""
    from pykexec.images import uki_unpack

    locked = None
    if machine.secure_boot:
        locked = f"Secure Boot is on ({machine.source})"
    elif machine.lockdown != "none":
        locked = f"the kernel is locked down ({machine.lockdown})"
    given = request.append is not None or request.reuse_cmdline
    addons = [(path, read_input(path, "UKI addon")) for path in request.uki_addons]
    return uki_unpack.unpack(data, request.kernel, profile=request.uki_profile, addons=addons,
                             user_initrd=(request.initrd, initrd) if request.initrd and initrd is not None else None,
                             user_cmdline=cmdline if given else None, locked=locked)


# --- acting on the running system -------------------------------------------------------

def running_backend(syscall: str = "auto") -> Backend:
    """The backend that acts on what this system has loaded: Xen's in a PV dom0, else
    the kernel's (kexec_file_load's family unless ``syscall`` is ``"load"``)."""
    from pykexec.backends.xen.detect import xen_pv_dom0

    if xen_pv_dom0():
        return backend_named(BACKEND_XEN)
    return backend_named("kexec_load" if syscall == "load" else "kexec_file_load")


def load(request: KexecRequest, machine: Machine | None = None, *,
         log: Callable[[str], None] | None = None,
         show_plan: Callable[[LoadPlan, Machine], None] | None = None) -> LoadPlan:
    """Plan and load ``request`` for real, under the lock; returns the plan that was
    loaded. With -a, a kexec_file_load the kernel refuses for a reason kexec_load does
    not share (not a signature) is retried with kexec_load, except under lockdown.
    ``log`` receives one-line progress messages, ``show_plan`` each segment plan before
    it is handed over (for -d)."""
    from pykexec.lock import Lock

    machine = machine if machine is not None else this_machine()
    image = Image(request.kernel, request.image_type)
    backend = choose_backend(request, image.type, machine)
    with Lock():
        had_crash_kernel = request.crash and backend.name != BACKEND_XEN and _crash_loaded(backend)
        try:
            return _load(request, machine, image, backend, log, show_plan)
        except KexecError as err:
            if had_crash_kernel and not _crash_loaded(backend):
                # Both syscalls free the previous crash kernel before they check the new one.
                raise KexecError(f"{err}; the kernel had already unloaded the previous crash kernel: "
                                 "none is loaded now") from None
            raise


def _load(request: KexecRequest, machine: Machine, image: Image, backend: Backend,
          log: Callable[[str], None] | None, show_plan: Callable[[LoadPlan, Machine], None] | None) -> LoadPlan:
    planned = plan_image(request, machine, image, backend)
    if backend.name == "kexec_file_load":
        try:
            backend.load(planned)
            if log:
                log(f"loaded {request.kernel} with kexec_file_load")
            return planned
        except SyscallError as err:
            if request.syscall != "auto" or err.errno not in FALLBACK_ERRNOS:
                raise
            if machine.lockdown != "none":
                raise SyscallError(f"{err}; kexec_load is not an option under lockdown ({machine.lockdown})",
                                   err.errno, err.syscall) from None
            if log:
                log(f"kexec_file_load: {errno.errorcode.get(err.errno, err.errno)}; falling back to kexec_load")
        backend = backend_named("kexec_load")
        planned = plan_image(request, machine, image, backend)
    if show_plan:
        show_plan(planned, machine)
    backend.load(planned)
    return planned


def _crash_loaded(backend: Backend) -> bool:
    try:
        return backend.is_loaded(crash=True)
    except KexecError:
        return False


def unload(crash: bool = False, syscall: str = "auto") -> None:
    """Unload the normal (or crash) image, under the lock, with the syscall family that
    loaded it (lockdown forbids kexec_load even for unloading): with ``"auto"``,
    kexec_file_load's unload first, then kexec_load's."""
    from pykexec.lock import Lock

    with Lock():
        backend = running_backend(syscall)
        if syscall != "auto" or backend.name == BACKEND_XEN:
            backend.unload(crash)
            return
        try:
            backend.unload(crash)
        except SyscallError as err:
            if err.errno not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            backend_named("kexec_load").unload(crash)


def status(crash: bool = False) -> bool:
    """Whether a normal (or crash) image is loaded."""
    return running_backend().is_loaded(crash)


def execute() -> None:
    """Jump into the loaded normal image (under the lock); returns only by raising."""
    from pykexec.lock import Lock

    with Lock():
        running_backend().execute()
