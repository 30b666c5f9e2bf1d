"""pykexec -p end to end: a guest booted with crashkernel=256M loads a crash kernel,
panics, and the crash kernel reads the dump our elfcorehdr describes.

Inside the crash kernel, kexec-tools' vmcore-dmesg and `pykexec vmcore dmesg` read
/proc/vmcore: they need the VMCOREINFO note, the kernel-image PT_LOAD and the RAM
PT_LOADs to be right, must find the panic message, and must print the same bytes.
The per-CPU notes are checked by counting NT_PRSTATUS notes in /proc/vmcore.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.testbed.assets import Assets, build_initramfs
from support.testbed.guest import run_guest_script

CRASH_APPEND = "console=ttyS0 panic=-1 reset_devices"

# In the crash kernel: read the dump with vmcore-dmesg and count CPU notes.
CRASH_INIT = r"""
echo PYKEXEC-CRASH-KERNEL-UP cmdline=$(cat /proc/cmdline)
ls -l /proc/vmcore
vmcore-dmesg /proc/vmcore > /tmp/dmesg.txt; echo VMCORE-DMESG-RC=$?
grep -c . /tmp/dmesg.txt | sed 's/^/DMESG-LINES=/'
grep -m1 'sysrq triggered crash' /tmp/dmesg.txt | sed 's/^/PANIC-LINE=/'
pykexec vmcore dmesg /proc/vmcore > /tmp/py.txt; echo PYKEXEC-DMESG-RC=$?
cmp /tmp/py.txt /tmp/dmesg.txt && echo DMESG-IDENTICAL
grep -m1 'sysrq triggered crash' /tmp/py.txt | sed 's/^/PY-PANIC-LINE=/'
python3 - <<'EOF'
import struct
with open("/proc/vmcore", "rb") as f:
    head = f.read(64)
    phoff, phnum = struct.unpack_from("<Q", head, 32)[0], struct.unpack_from("<H", head, 56)[0]
    f.seek(phoff)
    phdrs = [struct.unpack("<IIQQQQQQ", f.read(56)) for _ in range(phnum)]
    loads = [p for p in phdrs if p[0] == 1]
    (note,) = [p for p in phdrs if p[0] == 4]
    f.seek(note[2])
    buf = f.read(note[5])
off, names = 0, []
while off + 12 <= len(buf):
    namesz, descsz, ntype = struct.unpack_from("<III", buf, off)
    if namesz == 0:
        break
    names.append((buf[off + 12:off + 12 + namesz].rstrip(b"\0").decode(), ntype))
    off += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
print("PRSTATUS-NOTES=%d" % names.count(("CORE", 1)))
print("VMCOREINFO-NOTES=%d" % names.count(("VMCOREINFO", 0)))
print("KERNEL-TEXT-LOADS=%d" % sum(1 for p in loads if p[3] >= 0xffffffff80000000))
EOF
"""


@pytest.fixture(scope="module")
def crash_initrd(assets: Assets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("crash") / "crash.cpio.gz"
    assets.pykexec_segment()
    return build_initramfs(out, CRASH_INIT, {}, with_python=True, with_pykexec=True, with_kexec_tools=True,
                           assets=assets, kernels=(), compress=True)


@pytest.mark.parametrize("kernel,smp", [("6.1", 1), ("6.1", 2), ("6.12", 1), ("6.12", 2)])
def test_kexec_load_crash_kernel_reads_the_dump(pykexec_assets: Assets, crash_initrd: Path, vm_log_dir: Path,
                                                kernel: str, smp: int) -> None:
    script = (f"pykexec -d -c -p /boot/vmlinuz --initrd /boot/crash.cpio.gz --append '{CRASH_APPEND}'"
              " >/tmp/plan 2>&1; echo LOAD-RC=$?; grep -E 'elfcorehdr|note:' /tmp/plan\n"
              "pykexec -S -p; echo CRASH-STATUS=$?\n"
              "drain-console\n"  # CRASH-STATUS must reach the serial log before the panic
              "echo c > /proc/sysrq-trigger\n")
    run = run_guest_script(script, pykexec_assets, kernel=kernel, smp=smp, append_extra="crashkernel=256M",
                           extra_files={"/boot/crash.cpio.gz": crash_initrd}, timeout=180,
                           log_path=vm_log_dir / "console.log")
    assert "LOAD-RC=0" in run and "CRASH-STATUS=1" in run, run.describe()
    run.expect("pykexec purgatory: verified 5 segments")
    up = run.expect("PYKEXEC-CRASH-KERNEL-UP")
    assert CRASH_APPEND in up and "elfcorehdr=0x" in up
    assert "VMCORE-DMESG-RC=0" in run, run.describe()
    assert "sysrq triggered crash" in run.expect("PANIC-LINE="), run.describe()
    assert f"PRSTATUS-NOTES={smp}" in run, run.describe()
    assert "VMCOREINFO-NOTES=1" in run and "KERNEL-TEXT-LOADS=1" in run, run.describe()
    # pykexec's reader, in the crash kernel, on the dump our elfcorehdr describes
    assert "PYKEXEC-DMESG-RC=0" in run and "DMESG-IDENTICAL" in run, run.describe()
    assert "sysrq triggered crash" in run.expect("PY-PANIC-LINE=")


def test_crash_region_missing_or_too_small(pykexec_assets: Assets, vm_log_dir: Path) -> None:
    script = ("pykexec -c -p /boot/vmlinuz 2>&1; echo NOREGION=$?\n")
    run = run_guest_script(script, pykexec_assets, log_path=vm_log_dir / "none.log")
    run.expect("pykexec: no crash kernel region is reserved on this machine")
    assert "NOREGION=2" in run
    script = ("pykexec -c -p /boot/vmlinuz --initrd /boot/vmlinuz-6.12 2>&1; echo SMALL=$?\n"
              "pykexec -S -p; echo CRASH-STATUS=$?\n")
    run = run_guest_script(script, pykexec_assets, append_extra="crashkernel=48M", log_path=vm_log_dir / "small.log")
    line = run.expect("pykexec: the crash kernel region")
    assert "reserve more with crashkernel=" in line and "SMALL=1" in run and "CRASH-STATUS=0" in run


def test_crash_status_and_unload(pykexec_assets: Assets, vm_log_dir: Path) -> None:
    """-S -p and -u -p against the real kernel, through kexec_load and kexec_file_load."""
    script = "\n".join([
        "pykexec -S -p; echo ST0=$?",
        "pykexec -c -p /boot/vmlinuz --initrd /boot/second.cpio.gz --append x=1; echo LOAD=$?",
        "pykexec -S -p; echo ST1=$?",
        "pykexec -S -l; echo NORMAL=$?",
        "pykexec -u -p; echo UNLOAD=$?",
        "pykexec -S -p; echo ST2=$?",
        "pykexec -s -p /boot/vmlinuz --initrd /boot/second.cpio.gz --append x=1; echo FILELOAD=$?",
        "pykexec -S -p; echo ST3=$?",
        "pykexec -s -u -p; echo FILEUNLOAD=$?",
        "pykexec -S -p; echo ST4=$?",
    ])
    run = run_guest_script(script, pykexec_assets, append_extra="crashkernel=256M",
                           log_path=vm_log_dir / "console.log")
    run.assert_ok()
    for marker in ("ST0=0", "LOAD=0", "ST1=1", "NORMAL=0", "UNLOAD=0", "ST2=0", "FILELOAD=0", "ST3=1",
                   "FILEUNLOAD=0", "ST4=0"):
        assert marker in run, f"{marker} missing:\n{run.describe()}"
