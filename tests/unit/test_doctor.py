"""pykexec doctor on fake system trees: each finding and its fix."""

from __future__ import annotations

import gzip
from pathlib import Path

from pykexec import doctor
from pykexec.doctor import FAIL, OK, WARN

from support.synth_images import make_bzimage


def tree(root: Path, files: dict[str, str | bytes]) -> doctor.System:
    for name, content in files.items():
        p = root / name.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return doctor.System(str(root), release="6.1.0-test")


GOOD_CONFIG = "\n".join(f"CONFIG_{o}=y" for o in ("KEXEC", "KEXEC_FILE", "CRASH_DUMP", "PROC_VMCORE",
                                                  "FIRMWARE_MEMMAP", "PROC_KCORE"))


def by_check(findings):
    return {f.check: f for f in findings}


def test_healthy_machine(tmp_path):
    sys_ = tree(tmp_path, {
        "/proc/self/status": "Name:\tx\nCapEff:\t000001ffffffffff\n",
        "/proc/config.gz": gzip.compress(GOOD_CONFIG.encode()),
        "/proc/sys/kernel/kexec_load_disabled": "0\n",
        "/sys/kernel/security/lockdown": "[none] integrity confidentiality\n",
        "/proc/iomem": "00100000-3ffdffff : System RAM\n  2c000000-3bffffff : Crash kernel\n",
        "/proc/cmdline": "root=/dev/vda crashkernel=256M\n",
        "/sys/firmware/memmap/0/start": "0x0\n",
        "/sys/kernel/kexec_loaded": "0\n", "/sys/kernel/kexec_crash_loaded": "1\n",
        "/boot/vmlinuz-6.1.0-test": make_bzimage(init_size=0x3400000),
        "/boot/initrd.img-6.1.0-test": b"i" * 30_000_000,
    })
    f = by_check(doctor.run(sys_))
    assert all(x.status == OK for x in f.values()), [x for x in f.values() if x.status != OK]
    assert f["crash region"].message == "256 MiB reserved for a crash kernel"
    assert f["kexec_crash_loaded"].message == "crash kernel: loaded"
    assert "0 problem(s), 0 warning(s)" in doctor.render(list(f.values()))


def test_broken_machine_says_what_to_fix(tmp_path):
    sys_ = tree(tmp_path, {
        "/proc/self/status": "CapEff:\t0000000000000000\n",
        "/boot/config-6.1.0-test": "CONFIG_KEXEC_FILE=y\nCONFIG_KEXEC_SIG_FORCE=y\n",
        "/proc/sys/kernel/kexec_load_disabled": "1\n",
        "/proc/sys/kernel/kexec_load_limit_panic": "0\n",
        "/sys/kernel/security/lockdown": "none [integrity] confidentiality\n",
        "/proc/iomem": "00100000-3ffdffff : System RAM\n  3c000000-3dffffff : Crash kernel\n",
        "/proc/cmdline": "crashkernel=32M\n",
        "/boot/vmlinuz-6.1.0-test": make_bzimage(init_size=0x3400000),
        "/sys/hypervisor/type": "xen\n", "/proc/xen/capabilities": "control_d\n",
        "/sys/hypervisor/guest_type": "PVH\n",
    })
    f = by_check(doctor.run(sys_))
    assert f["privileges"].status == FAIL and f["privileges"].fix == "run as root"
    assert f["CONFIG_KEXEC"].status == FAIL and "/boot/config" not in f["CONFIG_KEXEC"].message
    assert f["CONFIG_KEXEC_SIG_FORCE"].status == WARN
    assert f["kexec_load_disabled"].status == FAIL and "until reboot" in f["kexec_load_disabled"].fix
    assert f["kexec_load_limit_panic"].status == FAIL
    assert f["lockdown"].status == WARN and "-s" in f["lockdown"].fix
    assert f["crash region size"].status == WARN and "crashkernel=" in f["crash region size"].fix
    assert f["xen"].status == FAIL and "PVH dom0" in f["xen"].message
    assert f["firmware memmap"].status == WARN


def test_crash_requested_but_not_reserved(tmp_path):
    sys_ = tree(tmp_path, {"/proc/iomem": "00100000-3ffdffff : System RAM\n", "/proc/cmdline": "crashkernel=64G\n"})
    (finding,) = doctor.check_crash_region(sys_)
    assert finding.status == FAIL and "smaller crashkernel=" in finding.fix


def test_cli(capsys):
    from pykexec.main import main

    assert main(["doctor", "--bogus"]) == 2
    assert "unknown doctor option" in capsys.readouterr().err
    rc = main(["doctor", "--json"])
    import json

    findings = json.loads(capsys.readouterr().out)
    assert rc in (0, 1) and all({"check", "status", "message", "fix"} <= set(f) for f in findings)
