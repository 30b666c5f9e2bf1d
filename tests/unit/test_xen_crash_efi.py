"""CRASH_EFI plans on synthetic images and described Xen machines, against the model of
the series' Xen in tests/support/xenmodel; every broken header or placement is refused by our
planner with the rule named, and by the model."""

from __future__ import annotations

import json

import pytest

from pykexec import cli, machine_file, xen_crash_efi
from pykexec.backends.xen.backend import XenBackend
from pykexec.errors import ImageFormatError, PlanError
from pykexec.plan import BACKEND_XEN, Segment
from pykexec.request import LoadRequest

from support.synth_images import make_bzimage
from support.xenmodel.crash_efi import Rejected, XenSegment, accept

XEN_MACHINE = {
    "memory": [{"start": "0x0", "end": "0x9fbff", "type": "System RAM"},
               {"start": "0x9fc00", "end": "0x9ffff", "type": "Reserved"},
               {"start": "0x100000", "end": "0x7ffdffff", "type": "System RAM"}],
    "crash_kernel": {"start": "0x40000000", "end": "0x4fffffff"},
    "xen": {"version": "4.17", "cpus": 2},
}
AREA = (0x40000000, 0x50000000)


def machine(**extra):
    return machine_file.from_dict(dict(XEN_MACHINE, **extra))


def plan_for(image: bytes, initrd: bytes | None = b"initrd" * 1000):
    return xen_crash_efi.plan(LoadRequest("vmlinuz", image, machine(), cmdline="console=ttyS0", backend=BACKEND_XEN,
                                          initrd=initrd, crash=True))


def as_hypercall(plan) -> list[XenSegment]:
    return [XenSegment(bytes(s.data), s.bufsz, s.mem, s.memsz) for s in plan.segments]


@pytest.mark.parametrize("setup_sects,alignment", [(7, 0x200000), (39, 0x200000), (15, 0x1000000)])
def test_plan_passes_the_model(setup_sects, alignment):
    image = make_bzimage(setup_sects=setup_sects, kernel_alignment=alignment)
    plan = plan_for(image)
    segs = plan.segments
    assert segs[0].role == "kernel" and bytes(segs[0].data) == image  # the whole signed file
    assert not any(s.role == "purgatory" for s in segs)
    (bp,) = [s for s in segs if s.role == "boot_params"]
    assert plan.entry == bp.mem
    entry = accept(as_hypercall(plan), plan.entry, AREA)
    assert entry == plan.kernel_entry == segs[0].mem + (setup_sects + 1) * 512 + 0x200
    assert plan.cmdline.startswith("console=ttyS0 elfcorehdr=0x")
    XenBackend().check(plan, machine())  # Xen's rules and the series' placement rules both hold


def test_crash_efi_is_planned_for_xen_only():
    with pytest.raises(PlanError, match="CRASH_EFI load type is Xen's"):
        xen_crash_efi.plan(LoadRequest("vmlinuz", make_bzimage(setup_sects=7), machine(), crash=True))


@pytest.mark.parametrize("change,message", [
    (dict(version=0x0201), None),  # rejected already as not a 64-bit bzImage
    (dict(kernel_alignment=0x100000), "multiple of 2 MiB between 2 and 16 MiB"),
    (dict(kernel_alignment=0x2000000), "multiple of 2 MiB between 2 and 16 MiB"),
    (dict(setup_sects=4), "not a whole number of pages"),
])
def test_broken_headers_are_refused(change, message):
    image = make_bzimage(**change)
    with pytest.raises(ImageFormatError) as exc:
        plan_for(image)
    if message:
        assert message in str(exc.value)


def test_header_rules_are_the_models_rules():
    """Each header rule, broken in a plan that is otherwise well placed, is refused by
    our validator with the rule named, and by the model."""
    good = plan_for(make_bzimage(setup_sects=7))
    area = machine().crash_kernel

    def broken(offset: int, value: bytes):
        image = bytearray(good.segments[0].data)
        image[offset:offset + len(value)] = value
        segs = [Segment("kernel", good.segments[0].mem, good.segments[0].memsz, bytes(image))] + good.segments[1:]
        from pykexec.plan import LoadPlan
        return LoadPlan("bzImage64", BACKEND_XEN, crash=True, entry=good.entry, segments=segs)

    cases = [(0x202, b"XXXX", "no 'HdrS' magic"), (0x206, b"\x01\x02", "boot protocol >= 2.02"),
             (0x230, (0x300000).to_bytes(4, "little"), "multiple of 2 MiB")]
    for offset, value, message in cases:
        plan = broken(offset, value)
        with pytest.raises((ImageFormatError, PlanError), match=message):
            xen_crash_efi.validate(plan, area)
        with pytest.raises(Rejected):
            accept(as_hypercall(plan), plan.entry, AREA)


def test_misplaced_kernel_is_refused_by_both():
    good = plan_for(make_bzimage(setup_sects=7))
    k = good.segments[0]
    # Same place, but a header whose setup is one page longer: the kernel is no longer aligned.
    data = bytearray(k.data)
    data[0x1F1] = 15
    moved = [Segment("kernel", k.mem, k.memsz, bytes(data))] + good.segments[1:]
    from pykexec.plan import LoadPlan
    plan = LoadPlan("bzImage64", BACKEND_XEN, crash=True, entry=good.entry, segments=moved)
    with pytest.raises(PlanError, match="not a multiple of kernel_alignment"):
        xen_crash_efi.validate(plan, machine().crash_kernel)
    with pytest.raises(PlanError, match="not a multiple of kernel_alignment"):  # the one check the core calls
        XenBackend().check(plan, machine())
    with pytest.raises(Rejected, match="not aligned"):
        accept(as_hypercall(plan), plan.entry, AREA)
    outside = [Segment("kernel", k.mem, k.memsz, k.data)] + good.segments[1:] + [Segment("x", 0x50000000, 0x1000)]
    plan = LoadPlan("bzImage64", BACKEND_XEN, crash=True, entry=good.entry, segments=outside)
    with pytest.raises(PlanError, match="outside the crash area"):
        xen_crash_efi.validate(plan, machine().crash_kernel)
    with pytest.raises(Rejected, match="outside the crash area"):
        accept(as_hypercall(plan), plan.entry, AREA)


def test_cli_chooses_crash_efi_under_secure_boot(tmp_path, capsys):
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(make_bzimage(setup_sects=7))
    for extra, chosen in (({"secure_boot": True}, "Secure Boot is on"), ({"lockdown": "integrity"}, "lockdown"),
                          ({}, None)):
        m = tmp_path / "m.json"
        m.write_text(json.dumps(dict(XEN_MACHINE, **extra)))
        argv = ["-p", str(kernel), "--machine", str(m), "--json"]
        if chosen is None:
            argv.insert(0, "--xen-crash-efi")
        assert cli.main(argv) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["backend"] == "xen_kexec_op" and doc["segments"][0]["role"] == "kernel"
        if chosen:
            assert chosen in doc["notes"][0]
    # not Xen, not crash: clear refusals
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({k: v for k, v in XEN_MACHINE.items() if k != "xen"}))
    assert cli.main(["--xen-crash-efi", "-p", str(kernel), "--machine", str(plain)]) == 2
    assert "runs no Xen" in capsys.readouterr().err
    assert cli.main(["--xen-crash-efi", "-l", str(kernel), "--machine", str(plain)]) == 2
    assert "use it with -p" in capsys.readouterr().err
