"""Kexec from Linux into Xen, end to end: a Debian 6.1 guest loads Debian's Xen 4.17 with
a dom0 kernel and initrd as modules, jumps, and dom0 must come up with its exact
command line under the hypervisor. Xen's command line never has ``no-real-mode``:
the loaders must leave the BIOS data area alone for Xen to boot.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support import xen
from support.testbed.assets import Assets
from support.testbed.guest import run_guest_script
from support.testbed.qemu import GuestRun

XEN_ARGS = "console=com1 dom0_mem=768M loglvl=all"
DOM0_ARGS = "console=hvc0 earlyprintk=xen panic=-1"


def _kexec_into_xen(assets: Assets, vm_log_dir: Path, load: str) -> GuestRun:
    script = f"{load}\necho PYKEXEC-LOAD-RC=$?\ndrain-console\n{load.split()[0]} -e\n"
    return run_guest_script(script, assets, memory=xen.XEN_MEMORY, cpu=xen.XEN_CPU,
                            extra_files=xen.guest_files(assets), guest_kernels=("6.1",), timeout=240,
                            until=xen.DOM0_MARKER, log_path=vm_log_dir / "console.log")


def _assert_dom0_up(run: GuestRun, dom0_args: str) -> None:
    assert "PYKEXEC-LOAD-RC=0" in run, run.describe()
    line = run.expect(xen.DOM0_MARKER)
    assert "hypervisor=xen" in line, line
    assert line.split("cmdline=", 1)[1].strip() == dom0_args, line
    # Xen saw its own arguments (it prints its command line early).
    assert XEN_ARGS in run.log, run.describe()


def test_kexec_tools_multiboot2_reference(pykexec_assets: Assets, vm_log_dir: Path) -> None:
    """The reference: Debian's kexec-tools boots Xen as Multiboot2 (gunzipped image)."""
    dom0_args = f"{DOM0_ARGS} pykexec.test=kexec-tools"
    load = (f"kexec -l /boot/xen --command-line='{XEN_ARGS}' "
            f"--module='/boot/dom0-vmlinuz {dom0_args}' --module=/boot/dom0-initrd.gz")
    _assert_dom0_up(_kexec_into_xen(pykexec_assets, vm_log_dir, load), dom0_args)


@pytest.mark.parametrize("image,type_option", [("/boot/xen.gz", ""), ("/boot/xen.gz", "-t multiboot-x86")])
def test_pykexec_into_xen(pykexec_assets: Assets, vm_log_dir: Path, image: str, type_option: str) -> None:
    dom0_args = f"{DOM0_ARGS} pykexec.test=mb{'1' if type_option else '2'}"
    load = (f"pykexec -d -l {type_option} {image} --command-line='{XEN_ARGS}' "
            f"--module='/boot/dom0-vmlinuz {dom0_args}' --module=/boot/dom0-initrd.gz")
    run = _kexec_into_xen(pykexec_assets, vm_log_dir, load)
    _assert_dom0_up(run, dom0_args)
    assert "no-real-mode" not in run.log
    run.expect("pykexec purgatory: verified")
