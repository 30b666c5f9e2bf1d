"""pykexec.backends.xen without Xen: Xen's load rules, the low-memory filler, detection,
the state record, the marshalling of every hypercall, and XenBackend on load plans.

The marshalling tests inject an ioctl function in place of privcmd's. It decodes the
privcmd_hypercall struct and reads the argument structures at the addresses we pass,
exactly as Xen's copy_from_guest would (the buffers are in this process), then writes
canned answers back. It checks our bytes; it is not a model of Xen.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from pathlib import Path

import pytest

from pykexec import machine_file
from pykexec.backends.xen import detect, privcmd, state
from pykexec.backends.xen.backend import XenBackend, load_type, xen_segments
from pykexec.backends.xen.detect import XenEnvironmentError, check_pv_dom0, xen_pv_dom0
from pykexec.backends.xen.kexec_op import E820Range, HypercallError, XenKexec, explain
from pykexec.backends.xen.privcmd import HypercallBuffer, Privcmd
from pykexec.backends.xen.rules import (ARCH_PURGATORY, LOW_MEMORY_ROLE, XenRange, XenSegment, check_load,
                                        crash_pages_needed, low_memory_fill, with_low_memory_mapped)
from pykexec.backends.xen.state import record_state, recorded_state, state_path
from pykexec.errors import KexecError, PlanError
from pykexec.layouts import xen as L
from pykexec.machine import Machine
from pykexec.layouts.elf import EM_386, EM_X86_64
from pykexec.plan import BACKEND_XEN, LoadPlan, Segment

MiB = 1 << 20
CRASH = XenRange(0x40000000, 256 * MiB)


def seg(dest: int, size: int, data: bytes | None = b"x", role: str = "") -> XenSegment:
    return XenSegment(data, len(data) if data is not None else 0, dest, size, role)


# --------------------------------------------------------------------------- rules
def crash_load() -> list[XenSegment]:
    return [seg(0x4F000000, 0x2000, b"p" * 0x1800, "purgatory"), seg(0x41000000, 0x400000, b"k" * 0x300000, "kernel")]


def test_a_good_crash_load_passes() -> None:
    check_load(L.KEXEC_TYPE_CRASH, EM_X86_64, with_low_memory_mapped(crash_load()), 0x4F000000, CRASH)


@pytest.mark.parametrize("segments,entry,message", [
    ([seg(0x100000 * i, 0x1000) for i in range(1, 17)], 0x100000, "16 segments: Xen takes at most 15"),
    ([seg(0x100800, 0x1000, role="kernel")], 0x100800, "kernel segment at 0x100800+0x1000: Xen needs a page-aligned"),
    ([seg(0x100000, 0x1800)], 0x100000, "segment 0 at 0x100000+0x1800: Xen needs a page-aligned address and size"),
    ([seg(0x100000, 0x1000, b"x" * 0x1001, "initrd")], 0x100000, "initrd segment at 0x100000+0x1000: buf_size 0x1001 is larger"),
    ([seg(0x100000, 0x2000, role="a"), seg(0x101000, 0x1000, None, "b")], 0x100000, "a segment at 0x100000+0x2000 overlaps b segment"),
    ([seg(0x100000, 0, None, "hole"), seg(0x200000, 0x1000)], 0x200000, "hole segment at 0x100000+0x0: a segment without a buffer needs a size"),
    ([seg(0x100000, 0x1000)], 0x300000, "entry point 0x300000 is not inside any segment with data"),
    ([XenSegment(b"abc", 2, 0x100000, 0x1000, "k")], 0x100000, "its buffer holds 0x3 bytes but buf_size says 0x2"),
])
def test_default_load_refusals(segments: list[XenSegment], entry: int, message: str) -> None:
    with pytest.raises(PlanError) as e:
        check_load(L.KEXEC_TYPE_DEFAULT, EM_X86_64, segments, entry)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_fifteen_segments_is_the_limit() -> None:
    check_load(L.KEXEC_TYPE_DEFAULT, EM_X86_64, [seg(0x100000 * i, 0x1000) for i in range(1, 16)], 0x100000)


@pytest.mark.parametrize("type_,arch,message", [
    (2, EM_X86_64, "kexec type 2 is not one Xen loads"),
    (7, EM_X86_64, "kexec type 7 is not one Xen loads"),
    (0, 40, "arch 40 is not EM_386 (3) or EM_X86_64 (62)"),
])
def test_type_and_arch(type_: int, arch: int, message: str) -> None:
    with pytest.raises(PlanError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_load(type_, arch, [seg(0x100000, 0x1000)], 0x100000)
    check_load(0, EM_386, [seg(0x100000, 0x1000)], 0x100000)


def test_crash_refusals() -> None:
    segs = crash_load()
    with pytest.raises(PlanError, match="no crash area: boot Xen with crashkernel="):
        check_load(L.KEXEC_TYPE_CRASH, EM_X86_64, segs, 0x4F000000, XenRange(0, 0))
    outside = [*segs, seg(0x3F000000, 0x1000, b"e", "elfcorehdr")]
    with pytest.raises(PlanError, match=r"elfcorehdr segment at 0x3f000000\+0x1000 is outside Xen's crash area 0x40000000-0x4fffffff"):
        check_load(L.KEXEC_TYPE_CRASH, EM_X86_64, outside, 0x4F000000, CRASH)
    straddle = [seg(0x4FFFF000, 0x2000, b"x", "kernel")]
    with pytest.raises(PlanError, match="kernel segment at 0x4ffff000.* is outside"):
        check_load(L.KEXEC_TYPE_CRASH, EM_X86_64, straddle, 0x4FFFF000, CRASH)
    # Null segments (the low-memory map) are exempt, as in Xen.
    check_load(L.KEXEC_TYPE_CRASH, EM_X86_64, [*segs, seg(0x0, 0x1000, None)], 0x4F000000, CRASH)
    # The entry point itself must be inside the area (here inside a null segment only).
    with pytest.raises(PlanError, match="entry point 0x1000 is not inside any segment with data"):
        check_load(L.KEXEC_TYPE_CRASH, EM_X86_64, [*segs, seg(0x0, 0x2000, None)], 0x1000, CRASH)
    # CRASH_EFI is a crash type too.
    with pytest.raises(PlanError, match="is outside Xen's crash area"):
        check_load(L.KEXEC_TYPE_CRASH_EFI, EM_X86_64, outside, 0x4F000000, CRASH)


def test_crash_area_needs_free_pages_for_xen() -> None:
    area = XenRange(0x40000000, 0x10000)  # 16 pages, all taken
    full = [seg(0x40000000, 0x10000, b"k", "kernel")]
    with pytest.raises(PlanError, match=r"has 0 free pages besides the segments; Xen needs about \d+"):
        check_load(L.KEXEC_TYPE_CRASH, EM_X86_64, full, 0x40000000, area)
    assert crash_pages_needed([seg(0x40000000, 0x1000)]) == 2 + 1 + 1 + 1 + 1 + 3


# --------------------------------------------------------------------------- low memory
def test_low_memory_fill_covers_the_gaps_only() -> None:
    segs = [seg(0x9F000, 0x1000, b"b", "backup"), seg(0x1000, 0x2000, b"z", "zero"), seg(0x41000000, 0x1000)]
    fill = low_memory_fill(segs)
    assert [(f.dest_maddr, f.dest_size) for f in fill] == [(0, 0x1000), (0x3000, 0x9C000), (0xA0000, 0x60000)]
    assert all(f.buf is None and f.buf_size == 0 and f.role == LOW_MEMORY_ROLE for f in fill)
    full = with_low_memory_mapped(segs)
    assert full == segs + fill  # the caller's order kept (segment 0 matters for CRASH_EFI)
    covered = sum(s.dest_size for s in full if s.dest_maddr < MiB)
    assert covered == MiB
    check_load(L.KEXEC_TYPE_DEFAULT, EM_X86_64, full, 0x41000000)  # no overlap introduced


def test_low_memory_fill_edge_cases() -> None:
    assert [(f.dest_maddr, f.dest_size) for f in low_memory_fill([])] == [(0, MiB)]
    assert low_memory_fill([seg(0, 2 * MiB)]) == []
    # A segment straddling 1 MiB ends the fill at its start.
    assert [(f.dest_maddr, f.dest_size) for f in low_memory_fill([seg(0xF0000, 0x20000)])] == [(0, 0xF0000)]


# --------------------------------------------------------------------------- detection
@pytest.fixture
def fake_sys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(detect, "SYS_HYPERVISOR", str(tmp_path / "hyp"))
    monkeypatch.setattr(detect, "PROC_XEN", str(tmp_path / "xen"))
    (tmp_path / "hyp").mkdir()
    return tmp_path


def test_detection_messages(fake_sys: Path) -> None:
    with pytest.raises(XenEnvironmentError, match="not running under Xen"):
        check_pv_dom0()
    (fake_sys / "hyp" / "type").write_text("xen\n")
    with pytest.raises(XenEnvironmentError, match=r"modprobe xen-privcmd \(and mount -t xenfs xenfs /proc/xen\)"):
        check_pv_dom0()
    (fake_sys / "xen").mkdir()
    (fake_sys / "xen" / "capabilities").write_text("\n")
    with pytest.raises(XenEnvironmentError, match="not dom0"):
        check_pv_dom0()
    (fake_sys / "xen" / "capabilities").write_text("control_d\n")
    check_pv_dom0()
    assert xen_pv_dom0()
    (fake_sys / "hyp" / "guest_type").write_text("PVH\n")
    with pytest.raises(XenEnvironmentError, match="PVH mode.*remove dom0=pvh"):
        check_pv_dom0()
    assert not xen_pv_dom0()
    (fake_sys / "hyp" / "guest_type").write_text("PV\n")
    assert xen_pv_dom0()


def test_enosys_explained(fake_sys: Path) -> None:
    assert "dom0 is probably PVH" in explain(errno.ENOSYS, "kexec_load")
    (fake_sys / "hyp" / "guest_type").write_text("PV\n")
    assert "built without CONFIG_KEXEC" in explain(errno.ENOSYS, "kexec_load")


@pytest.mark.parametrize("err,kw,words", [
    (errno.EPERM, {}, "only dom0 may use kexec_op, and an XSM/FLASK policy"),
    (errno.EACCES, {}, "XSM/FLASK"),
    (errno.EBUSY, {}, "a kexec is already in progress"),
    (errno.ENOMEM, {"type_": 1}, "the crash area needs free pages"),
    (errno.ENOMEM, {"type_": 0}, "dom0_mem="),
    (errno.EOPNOTSUPP, {}, "does not know the command"),
    (errno.EADDRNOTAVAIL, {"type_": 1}, "outside the crash area"),
    (errno.ENOENT, {"type_": 0}, "nothing is loaded"),
    (errno.EINVAL, {"type_": 3}, "CRASH_EFI is not in any released Xen"),
])
def test_errno_explanations(err: int, kw: dict[str, int], words: str) -> None:
    cmd = "kexec_load" if err != errno.ENOENT else "kexec"
    msg = explain(err, cmd, **kw)
    assert words in msg and "\n" not in msg and msg.startswith(f"Xen refused {cmd}")


def test_get_range_einval_explained() -> None:
    assert "booted without crashkernel=" in explain(errno.EINVAL, "kexec_get_range", range_=L.KEXEC_RANGE_MA_CPU)
    assert "does not report MA_XENHEAP" in explain(errno.EINVAL, "kexec_get_range", range_=L.KEXEC_RANGE_MA_XENHEAP)


# --------------------------------------------------------------------------- state record
def test_state_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = str(tmp_path / "run")
    assert recorded_state(L.KEXEC_TYPE_CRASH, d) is None
    record_state(L.KEXEC_TYPE_CRASH, True, d)
    assert state_path(L.KEXEC_TYPE_CRASH, d).endswith("/xen-crash.loaded")
    assert recorded_state(L.KEXEC_TYPE_CRASH, d) is True
    assert recorded_state(L.KEXEC_TYPE_DEFAULT, d) is None
    record_state(L.KEXEC_TYPE_CRASH, False, d)
    assert recorded_state(L.KEXEC_TYPE_CRASH, d) is False
    # A record from another boot is not believed.
    boot = tmp_path / "boot_id"
    boot.write_text("another-boot\n")
    monkeypatch.setattr(state, "BOOT_ID", str(boot))
    assert recorded_state(L.KEXEC_TYPE_CRASH, d) is None


# --------------------------------------------------------------------------- marshalling
class FakeXen:
    """Decodes the hypercalls an injected ioctl receives; answers like Xen 4.17 would."""

    def __init__(self, ncpus: int = 3, hole: int | None = None) -> None:
        self.ncpus = ncpus
        self.hole = hole
        self.calls: list[tuple[int, ...]] = []
        self.loads: list[dict[str, object]] = []
        self.pos = {0: 0, 1: 0, 3: 0}
        self.e820 = [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0x100000, 0x7FEE0000, 1), (0xFFFC0000, 0x40000, 2)]
        self.fail: dict[int, int] = {}  # kexec cmd -> errno

    def ioctl(self, fd: int, request: int, buf: bytearray) -> int:
        assert request == L.IOCTL_PRIVCMD_HYPERCALL and len(buf) == 48
        op, *args = struct.unpack("<6Q", buf)
        self.calls.append((op, *args))
        rc = {L.HYPERVISOR_kexec_op: self.kexec_op, L.HYPERVISOR_memory_op: self.memory_op,
              L.HYPERVISOR_xen_version: self.xen_version}[op](args[0], args[1])
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc))
        return rc

    def kexec_op(self, cmd: int, addr: int) -> int:
        if cmd in self.fail:
            return -self.fail[cmd]
        if cmd == L.KEXEC_CMD_kexec_get_range:
            r = L.XenKexecRange.from_buffer_copy(ctypes.string_at(addr, 24))
            if r.range == L.KEXEC_RANGE_MA_CRASH:
                r.start, r.size = CRASH
            elif r.range == L.KEXEC_RANGE_MA_XEN:
                r.start, r.size = 0x7C800000, 0x600000
            elif r.range == L.KEXEC_RANGE_MA_VMCOREINFO:
                r.start, r.size = 0x7CA00000, 4096
            elif r.range == L.KEXEC_RANGE_MA_CPU:
                if not 0 <= r.nr < self.ncpus:
                    return -errno.ERANGE
                if r.nr == self.hole:
                    r.start = r.size = 0
                else:
                    r.start, r.size = 0x7D000000 + r.nr * 0x1000, 500 if r.nr == 0 else 404
            else:
                return -errno.EINVAL
            ctypes.memmove(addr, bytes(r), 24)
            return 0
        if cmd == L.KEXEC_CMD_kexec_load:
            load = L.XenKexecLoad.from_buffer_copy(ctypes.string_at(addr, 24))
            raw = ctypes.string_at(load.segments, 32 * load.nr_segments)
            segs = [L.XenKexecSegment.from_buffer_copy(raw, 32 * i) for i in range(load.nr_segments)]
            self.loads.append({
                "type": load.type, "arch": load.arch, "entry": load.entry_maddr,
                "segments": [(ctypes.string_at(s.buf, s.buf_size) if s.buf else None, s.buf_size,
                              s.dest_maddr, s.dest_size) for s in segs]})
            self.pos[load.type] ^= 1
            return 0
        if cmd in (L.KEXEC_CMD_kexec_unload, L.KEXEC_CMD_kexec_status):
            t = ctypes.string_at(addr, 1)[0]
            if cmd == L.KEXEC_CMD_kexec_status:
                return self.pos[t]  # the 4.17 bug: parity of swaps
            self.pos[t] ^= 1
            return 0
        if cmd == L.KEXEC_CMD_kexec:
            return -errno.ENOENT
        return 0

    def memory_op(self, cmd: int, addr: int) -> int:
        assert cmd == L.XENMEM_machine_memory_map
        mm = L.XenMemoryMap.from_buffer_copy(ctypes.string_at(addr, 16))
        if mm.nr_entries < len(self.e820) + 1:
            return -errno.EINVAL
        for i, (a, s, t) in enumerate(self.e820):
            ctypes.memmove(mm.buffer + 20 * i, bytes(L.E820Entry(a, s, t)), 20)
        mm.nr_entries = len(self.e820)
        ctypes.memmove(addr, bytes(mm), 16)
        return 0

    def xen_version(self, cmd: int, addr: int) -> int:
        if cmd == L.XENVER_version:
            return (4 << 16) | 17
        text = {L.XENVER_extraversion: b".7+13-g2445b30a4", L.XENVER_capabilities: b"xen-3.0-x86_64 hvm-3.0-x86_64"}[cmd]
        ctypes.memmove(addr, text + b"\0", len(text) + 1)
        return 0


@pytest.fixture
def fake() -> FakeXen:
    return FakeXen()


@pytest.fixture
def xen(fake: FakeXen, tmp_path: Path) -> XenKexec:
    k = XenKexec(Privcmd(ioctl=fake.ioctl, hypercall_device=None), state_dir=str(tmp_path / "run"))
    yield k
    k.close()


def test_ranges(xen: XenKexec, fake: FakeXen) -> None:
    assert xen.crash_area() == CRASH and str(CRASH) == "0x40000000-0x4fffffff"
    assert xen.xen_image_range() == (0x7C800000, 0x600000)
    assert xen.xen_phys_start() == 0x7C600000
    assert xen.vmcoreinfo_range() == (0x7CA00000, 4096)
    op, cmd, arg, *rest = fake.calls[0]
    assert (op, cmd, rest) == (37, L.KEXEC_CMD_kexec_get_range, [0, 0, 0]) and arg


def test_cpu_notes_skip_holes_and_stop_at_erange() -> None:
    fake = FakeXen(ncpus=4, hole=1)
    with XenKexec(Privcmd(ioctl=fake.ioctl, hypercall_device=None), state_dir=None) as xen:
        notes = xen.cpu_notes()
    assert notes == [(0, 0x7D000000, 500), (2, 0x7D002000, 404), (3, 0x7D003000, 404)]
    assert [c[1] for c in fake.calls if c[0] == 37] == [L.KEXEC_CMD_kexec_get_range] * 5


def test_cpu_notes_without_crash_area(xen: XenKexec, fake: FakeXen) -> None:
    fake.fail[L.KEXEC_CMD_kexec_get_range] = errno.EINVAL
    with pytest.raises(HypercallError, match="booted without crashkernel=") as e:
        xen.cpu_notes()
    assert e.value.errno == errno.EINVAL and e.value.syscall == "kexec_get_range"


def test_unreported_range(xen: XenKexec) -> None:
    with pytest.raises(HypercallError, match="does not report MA_XENHEAP on x86"):
        xen.get_range(L.KEXEC_RANGE_MA_XENHEAP)


def test_machine_memory_map_grows_its_buffer(xen: XenKexec, fake: FakeXen) -> None:
    fake.e820 = [(i << 30, 1 << 29, 1 + i % 2) for i in range(200)]  # more than the first 128
    mm = xen.machine_memory_map()
    assert mm == [E820Range(*e) for e in fake.e820]
    tries = [c for c in fake.calls if c[0] == L.HYPERVISOR_memory_op]
    assert len(tries) == 2 and all(c[1] == L.XENMEM_machine_memory_map for c in tries)


def test_version_and_capabilities(xen: XenKexec) -> None:
    assert xen.xen_version() == (4, 17, ".7+13-g2445b30a4")
    assert xen.capabilities() == "xen-3.0-x86_64 hvm-3.0-x86_64"


def test_load_marshals_every_byte(xen: XenKexec, fake: FakeXen) -> None:
    kernel = bytes(range(256)) * 0x3000
    purg = b"\xe9purgatory" * 100
    segs = with_low_memory_mapped([seg(0x41000000, 0x400000, kernel, "kernel"),
                                     seg(0x4F000000, 0x2000, purg, "purgatory")])
    xen.load(L.KEXEC_TYPE_CRASH, ARCH_PURGATORY, segs, 0x4F000000)
    (got,) = fake.loads
    assert (got["type"], got["arch"], got["entry"]) == (1, 62, 0x4F000000)
    assert got["segments"] == [(kernel, len(kernel), 0x41000000, 0x400000),
                               (purg, len(purg), 0x4F000000, 0x2000), (None, 0, 0, MiB)]
    assert xen.is_loaded(L.KEXEC_TYPE_CRASH) is True


def test_load_checks_before_calling(xen: XenKexec, fake: FakeXen) -> None:
    with pytest.raises(PlanError, match="outside Xen's crash area"):
        xen.load(L.KEXEC_TYPE_CRASH, EM_X86_64, [seg(0x1000000, 0x1000, b"k", "kernel")], 0x1000000)
    assert not fake.loads


def test_load_failure_is_explained(xen: XenKexec, fake: FakeXen) -> None:
    fake.fail[L.KEXEC_CMD_kexec_load] = errno.ENOMEM
    with pytest.raises(HypercallError, match="Xen refused kexec_load \\(default\\): Xen is out of free memory"):
        xen.load(L.KEXEC_TYPE_DEFAULT, EM_X86_64, [seg(0x1000000, 0x1000, b"k")], 0x1000000)
    assert xen.is_loaded(L.KEXEC_TYPE_DEFAULT) is False  # no record: status says 0


def test_status_bug_and_our_record(xen: XenKexec) -> None:
    segs = [seg(0x1000000, 0x1000, b"k")]
    xen.load(L.KEXEC_TYPE_DEFAULT, EM_X86_64, segs, 0x1000000)
    xen.load(L.KEXEC_TYPE_DEFAULT, EM_X86_64, segs, 0x1000000)
    assert xen.status(L.KEXEC_TYPE_DEFAULT) is False  # Xen's answer after two loads
    assert xen.is_loaded(L.KEXEC_TYPE_DEFAULT) is True  # ours
    xen.unload(L.KEXEC_TYPE_DEFAULT)
    xen.unload(L.KEXEC_TYPE_DEFAULT)
    assert xen.status(L.KEXEC_TYPE_DEFAULT) is False
    assert xen.is_loaded(L.KEXEC_TYPE_DEFAULT) is False


def test_execute_with_nothing_loaded(xen: XenKexec) -> None:
    with pytest.raises(HypercallError, match="Xen refused kexec \\(default\\): nothing is loaded"):
        xen.execute(L.KEXEC_TYPE_DEFAULT)


# --------------------------------------------------------------------------- XenBackend on plans
# Only the crash area matters to Xen's rules; the rest is what a machine file must say.
XEN_MACHINE = {"memory": [{"start": "0x0", "end": "0x7fffffff"}], "xen": {"version": "4.17"},
               "crash_kernel": {"start": "0x40000000", "end": "0x4fffffff"}}
PURGATORY = 0x4F000000


def xen_machine(**changes: object) -> Machine:
    return machine_file.from_dict({k: v for k, v in dict(XEN_MACHINE, **changes).items() if v is not None})


def xen_plan(*, crash: bool = True, purgatory: bool = True, extra: tuple[Segment, ...] = (),
             entry: int | None = PURGATORY) -> LoadPlan:
    """A plan as the planners make it for Xen: kernel, initrd, then purgatory (or, for
    CRASH_EFI, boot_params and no purgatory)."""
    segs = [Segment("kernel", 0x41000000, 0x400000, b"k" * 0x300000), Segment("initrd", 0x48000000, 0x2000, b"i" * 0x1800)]
    segs.append(Segment("purgatory", PURGATORY, 0x2000, b"p" * 0x1800) if purgatory
                else Segment("boot_params", PURGATORY, 0x1000, b"b" * 0x1000))
    return LoadPlan("bzImage64", BACKEND_XEN, crash=crash, entry=entry, segments=[*segs, *extra])


def test_backend_name_is_the_plans() -> None:
    assert XenBackend.name == BACKEND_XEN


@pytest.mark.parametrize("crash,purgatory,type_", [
    (False, True, L.KEXEC_TYPE_DEFAULT), (True, True, L.KEXEC_TYPE_CRASH), (True, False, L.KEXEC_TYPE_CRASH_EFI),
])
def test_backend_load_type(crash: bool, purgatory: bool, type_: int) -> None:
    assert load_type(xen_plan(crash=crash, purgatory=purgatory)) == type_


def test_backend_maps_low_memory_for_purgatory_only() -> None:
    with_purgatory = xen_segments(xen_plan())
    assert [s.role for s in with_purgatory] == ["kernel", "initrd", "purgatory", LOW_MEMORY_ROLE]
    assert (with_purgatory[-1].buf, with_purgatory[-1].dest_maddr, with_purgatory[-1].dest_size) == (None, 0, MiB)
    assert [s.role for s in xen_segments(xen_plan(purgatory=False))] == ["kernel", "initrd", "boot_params"]


def test_backend_check_passes_good_plans() -> None:
    machine = xen_machine()
    for crash, purgatory in ((True, True), (False, True)):
        XenBackend().check(xen_plan(crash=crash, purgatory=purgatory), machine)
    # Without purgatory a crash plan is CRASH_EFI: the series' rules apply too (segment 0 is a bzImage).
    with pytest.raises(KexecError, match="CRASH_EFI needs a bzImage"):
        XenBackend().check(xen_plan(crash=True, purgatory=False), machine)


def test_backend_check_uses_the_machines_crash_area() -> None:
    outside = (Segment("elfcorehdr", 0x3F000000, 0x1000, b"e"),)
    with pytest.raises(PlanError, match=r"^elfcorehdr segment at 0x3f000000\+0x1000 is outside Xen's crash area "
                                        r"0x40000000-0x4fffffff$"):
        XenBackend().check(xen_plan(extra=outside), xen_machine())
    smaller = xen_machine(crash_kernel={"start": "0x40000000", "end": "0x4effffff"})
    with pytest.raises(PlanError, match=r"^purgatory segment at 0x4f000000\+0x2000 is outside Xen's crash area "
                                        r"0x40000000-0x4effffff$"):
        XenBackend().check(xen_plan(), smaller)
    with pytest.raises(PlanError, match="^no crash area: boot Xen with crashkernel=SIZE"):
        XenBackend().check(xen_plan(), xen_machine(crash_kernel=None))
    # A normal load ignores the crash area.
    XenBackend().check(xen_plan(crash=False, extra=outside), xen_machine(crash_kernel=None))


def test_backend_check_counts_the_low_memory_map() -> None:
    # 12 pages at 0-48 KiB + kernel, initrd, purgatory = 15; the map of 48 KiB-1 MiB makes 16.
    low = tuple(Segment(f"s{i}", 0x1000 * i, 0x1000, b"x") for i in range(12))
    with pytest.raises(PlanError, match=r"^16 segments: Xen takes at most 15 .*null segments mapping low memory"):
        XenBackend().check(xen_plan(crash=False, extra=low), xen_machine())
    XenBackend().check(xen_plan(crash=False, purgatory=False, extra=low), xen_machine())


def test_backend_check_refuses_a_plan_without_entry() -> None:
    with pytest.raises(PlanError, match="^entry point 0x0 is not inside any segment with data$"):
        XenBackend().check(xen_plan(entry=None), xen_machine())


class Connections:
    """XenBackend's connect: a XenKexec on the fake privcmd, counting the openings."""

    def __init__(self, fake: FakeXen, state_dir: str) -> None:
        self.fake = fake
        self.state_dir = state_dir
        self.opened = 0

    def __call__(self) -> XenKexec:
        self.opened += 1
        return XenKexec(Privcmd(ioctl=self.fake.ioctl, hypercall_device=None), state_dir=self.state_dir)


@pytest.fixture
def backend(fake: FakeXen, tmp_path: Path) -> tuple[XenBackend, Connections]:
    connections = Connections(fake, str(tmp_path / "run"))
    return XenBackend(connections), connections


def test_backend_load_unload_is_loaded(backend: tuple[XenBackend, Connections], fake: FakeXen) -> None:
    xb, connections = backend
    plan = xen_plan()
    xb.load(plan)
    (got,) = fake.loads
    assert (got["type"], got["arch"], got["entry"]) == (L.KEXEC_TYPE_CRASH, EM_X86_64, PURGATORY)
    assert [(s[0], s[2], s[3]) for s in got["segments"]] == [
        *((s.data, s.mem, s.memsz) for s in plan.segments), (None, 0, MiB)]
    assert xb.is_loaded(crash=True) is True and xb.is_loaded(crash=False) is False
    xb.unload(crash=True)
    assert xb.is_loaded(crash=True) is False
    assert connections.opened == 5  # one XenKexec per call


def test_backend_load_crash_efi(backend: tuple[XenBackend, Connections], fake: FakeXen) -> None:
    xb, connections = backend
    xb.load(xen_plan(purgatory=False))
    (got,) = fake.loads
    assert got["type"] == L.KEXEC_TYPE_CRASH_EFI and len(got["segments"]) == 3  # no low-memory map
    assert recorded_state(L.KEXEC_TYPE_CRASH_EFI, connections.state_dir) is True


def test_backend_names_a_xen_without_crash_efi(backend: tuple[XenBackend, Connections], fake: FakeXen) -> None:
    xb, _ = backend
    for err in (errno.EINVAL, errno.EOPNOTSUPP):
        fake.fail[L.KEXEC_CMD_kexec_load] = err
        with pytest.raises(KexecError) as e:
            xb.load(xen_plan(purgatory=False))
        assert type(e.value) is KexecError
        assert str(e.value) == ("Xen 4.17.7+13-g2445b30a4 does not know the CRASH_EFI load type (3): it lacks the "
                                "'x86/kexec: Secure Boot support' series; nothing was loaded")
    # Any other refusal, or of another type, is Xen's own explained error.
    fake.fail[L.KEXEC_CMD_kexec_load] = errno.EINVAL
    with pytest.raises(HypercallError, match=r"^Xen refused kexec_load \(crash\): invalid load"):
        xb.load(xen_plan())
    fake.fail[L.KEXEC_CMD_kexec_load] = errno.ENOMEM
    with pytest.raises(HypercallError, match=r"^Xen refused kexec_load \(crash-efi\): out of memory"):
        xb.load(xen_plan(purgatory=False))
    assert not fake.loads


def test_backend_execute(backend: tuple[XenBackend, Connections], fake: FakeXen) -> None:
    xb, _ = backend
    with pytest.raises(KexecError) as e:
        xb.execute()
    assert str(e.value) == "nothing has been loaded: load a kernel with -l first"
    assert not [c for c in fake.calls if c[:2] == (L.HYPERVISOR_kexec_op, L.KEXEC_CMD_kexec)]
    xb.load(xen_plan(crash=False))
    with pytest.raises(HypercallError, match=r"^Xen refused kexec \(default\): nothing is loaded"):
        xb.execute()  # the fake answers ENOENT: the hypercall was made, for the default image
    assert [c for c in fake.calls if c[:2] == (L.HYPERVISOR_kexec_op, L.KEXEC_CMD_kexec)]


# --------------------------------------------------------------------------- buffers
def test_hypercall_buffer_locked_memory() -> None:
    with HypercallBuffer(10000, device=None) as b:
        assert b.kind == "locked" and b.size == 3 * 4096 and b.address % 4096 == 0
        a = b.put(b"hello")
        c = b.alloc(8, align=64)
        assert c % 64 == 0 and c > a
        assert b.read(a, 5) == b"hello" and b.read(c, 8) == bytes(8)
        with pytest.raises(Exception, match="hypercall buffer full"):
            b.alloc(b.size)
        with pytest.raises(Exception, match="outside the hypercall buffer"):
            b.write(b.address + b.size - 2, b"abc")
    assert b.address == 0
    with pytest.raises(Exception, match="after close"):
        b.alloc(1)


def test_hypercall_buffer_device_fallback(tmp_path: Path) -> None:
    # A device that cannot be mapped (a regular empty file is mappable but not useful;
    # /dev/null refuses mmap) falls back to locked memory.
    with HypercallBuffer(4096, device="/dev/null") as b:
        assert b.kind == "locked"


def test_privcmd_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(privcmd, "PRIVCMD_DEVICES", (str(tmp_path / "a"), str(tmp_path / "b")))
    with pytest.raises(XenEnvironmentError, match=r"no Xen privcmd device: modprobe xen-privcmd"):
        Privcmd.open()
