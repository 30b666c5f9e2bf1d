"""One call: boot a kernel with an initramfs whose /init runs a shell script."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

from support.testbed.assets import Assets, build_initramfs
from support.testbed.cache import prune
from support.testbed.initramfs import GuestFiles
from support.testbed.packages import DEFAULT_GUEST_KERNELS
from support.testbed.qemu import DEFAULT_APPEND, GuestRun, run_qemu


def run_guest_script(script: str, assets: Assets | None = None, *, kernel: str = "6.1",
                     extra_files: GuestFiles | None = None, memory: str = "1G", smp: int = 1,
                     append_extra: str = "", append: str | None = None, timeout: float = 120.0,
                     with_python: bool = True, with_pykexec: bool = True,
                     with_kexec_tools: bool = True, guest_kernels: Sequence[str] = DEFAULT_GUEST_KERNELS,
                     cpu: str = "qemu64", extra_args: Sequence[str] = (), trace: bool = False,
                     until: str | None = None, log_path: Path | str | None = None,
                     watch: Sequence[str] = ()) -> GuestRun:
    """Boot kernel ``kernel`` with an initramfs whose /init runs ``script``.

    The guest has busybox, Python 3.11 with pykexec (``/usr/sbin/pykexec``),
    Debian's ``kexec``/``vmcore-dmesg``, ``/boot/vmlinuz-6.1``,
    ``/boot/vmlinuz-6.12``, ``/boot/vmlinuz`` (the booted kernel) and
    ``/boot/second.cpio.gz``.  /init powers off after the script.  The
    initramfs is assembled from layers cached by content hash (only the
    script layer is new; assembling takes milliseconds).  The command line is
    ``append`` (default ``console=ttyS0 panic=-1``) plus ``append_extra``.
    """
    assets = assets or Assets()
    k = assets.kernel(kernel)
    kernels = tuple(dict.fromkeys([*guest_kernels, kernel])) if guest_kernels else ()
    # Every layer is cached by content hash; only the small per-script layer is
    # built here, and the concatenated image (~60 MB) is a temporary file.
    tmpdir = assets.built / "tmp"
    tmpdir.mkdir(exist_ok=True)
    prune(tmpdir, max_age=3600)  # left behind by killed runs
    fd, name = tempfile.mkstemp(prefix="guest-", suffix=".cpio", dir=tmpdir)
    os.close(fd)
    initrd = Path(name)
    cmdline = (append if append is not None else DEFAULT_APPEND)
    if append_extra:
        cmdline = f"{cmdline} {append_extra}"
    try:
        build_initramfs(initrd, script, extra_files, with_python=with_python,
                        with_pykexec=with_pykexec, with_kexec_tools=with_kexec_tools,
                        assets=assets, kernels=kernels, boot_kernel=kernel, trace=trace)
        return run_qemu(k.vmlinuz, initrd, cmdline, memory=memory, smp=smp, timeout=timeout,
                        cpu=cpu, extra_args=extra_args, log_path=log_path, until=until, watch=watch)
    finally:
        initrd.unlink(missing_ok=True)
