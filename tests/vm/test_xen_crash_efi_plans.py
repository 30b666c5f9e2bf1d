"""CRASH_EFI plans for the real Debian 6.1 and 6.12 kernels on a described Xen machine,
checked by the model of the series' Xen (tests/support/xenmodel). No VM is booted; the kernels
come from the test bed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pykexec import cli

from support.testbed.assets import Assets
from support.xenmodel.crash_efi import XenSegment, accept

XEN_MACHINE = {
    "memory": [{"start": "0x0", "end": "0x9fbff", "type": "System RAM"},
               {"start": "0x100000", "end": "0x7ffdffff", "type": "System RAM"}],
    "crash_kernel": {"start": "0x40000000", "end": "0x4fffffff"},
    "xen": {"version": "4.17", "cpus": 2},
    "secure_boot": True,
}


@pytest.mark.parametrize("flavour", ["6.1", "6.12"])
def test_debian_kernel_crash_efi_plan_passes_the_model(assets: Assets, tmp_path: Path, capsys,
                                                       flavour: str) -> None:
    kernel = assets.kernel(flavour).vmlinuz
    machine = tmp_path / "xen.json"
    machine.write_text(json.dumps(XEN_MACHINE))
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"\x07" * 300_000)
    assert cli.main(["-p", str(kernel), "--initrd", str(initrd), "--append", "console=ttyS0",
                     "--machine", str(machine), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["backend"] == "xen_kexec_op"
    assert "Secure Boot" in doc["notes"][0]
    segs = doc["segments"]
    assert segs[0]["role"] == "kernel" and int(segs[0]["bufsz"], 16) == kernel.stat().st_size
    # The model reads the header from the bytes Xen would have copied.
    data = {"kernel": kernel.read_bytes(), "initrd": initrd.read_bytes()}
    xsegs = [XenSegment(data.get(s["role"], b"\0" * int(s["bufsz"], 16)), int(s["bufsz"], 16),
                        int(s["mem"], 16), int(s["memsz"], 16)) for s in segs]
    entry = accept(xsegs, int(doc["entry"], 16), (0x40000000, 0x50000000))
    assert entry == int(doc["kernel_entry"], 16)
    (bp,) = [s for s in segs if s["role"] == "boot_params"]
    assert doc["entry"] == bp["mem"]
