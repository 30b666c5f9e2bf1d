"""kdump estimate: the crashkernel= arithmetic term by term, the inputs read from a
fake root, and the dump size predicted from an ELF core read as /proc/kcore is read,
against what vmcore save really writes from the same memory."""

from __future__ import annotations

import json
import lzma
import random
from pathlib import Path
from typing import Any

import pytest

from pykexec.kdump import dump_size, estimate
from pykexec.kdump.config import KdumpConfig
from pykexec.kdump.kcore import Kcore, KcoreUnavailable
from pykexec.kdump.paths import Paths
from pykexec.vmcore.errors import VmcoreError
from pykexec.vmcore.save import save

from support.synth_images import make_bzimage
from support.testbed.cpio import CpioWriter, cpio_bytes
from support.vmcore_synth import Memory, Region, write_core

MiB = 1 << 20
PAGE = 4096
DIRECT = 0xFFFF888000000000


def inputs(**changes: object) -> estimate.NeedInputs:
    values: dict[str, object] = dict(
        init_size=50 * MiB, initrd_bytes=20 * MiB, unpacked_bytes=60 * MiB, modules_bytes=2 * MiB,
        capture_rss=25 * MiB, max_pfn=1 << 20, ram_pages=(1 << 20) - 1000, exclusion_ranges=5000, cpus=2,
        percpu_per_cpu=400 << 10)
    values.update(changes)
    return estimate.NeedInputs(**values)  # type: ignore[arg-type]


def test_crashkernel_terms_add_up() -> None:
    terms = {t.name: t.bytes for t in estimate.crashkernel_terms(inputs())}
    assert terms == {
        "kernel": 50 * MiB, "kexec segments": MiB, "initramfs": 20 * MiB, "initramfs unpacked": 60 * MiB,
        "modules": 2 * MiB, "capture program": 25 * MiB,
        "capture batches": 3 * 2048 * PAGE,                        # 24 MiB
        "dump bitmaps": 6 * (1 << 20) // 8,                         # 768 KiB
        "/proc/vmcore page tables": 8 * ((1 << 20) - 1000),
        "exclusion lists": 5000 * 2 * 120,
        "per CPU": 2 * ((400 << 10) + (64 << 10) + (256 << 10)),
        "kernel allocations": terms["kernel allocations"],
    }
    before = sum(v for k, v in terms.items() if k != "kernel allocations") + 24 * MiB
    struct_pages = terms["kernel allocations"] - 24 * MiB
    assert struct_pages == -(-before // 63)  # 1/64 of the whole reservation
    est = estimate.CrashkernelEstimate(estimate.crashkernel_terms(inputs()))
    assert est.sum == before + struct_pages
    assert est.total % (16 * MiB) == 0 and 0 <= est.total - est.sum < 16 * MiB
    assert est.option == f"crashkernel={est.total // MiB}M"
    assert est.to_dict()["terms"][0] == {"name": "kernel", "bytes": 50 * MiB,  # type: ignore[index]
                                         "how": "init_size in the crash kernel's setup header"}


def test_unknown_inputs_count_zero_and_say_so() -> None:
    terms = {t.name: t for t in estimate.crashkernel_terms(
        inputs(init_size=None, initrd_bytes=None, unpacked_bytes=None, modules_bytes=None, exclusion_ranges=None))}
    for name in ("kernel", "initramfs", "initramfs unpacked", "modules", "exclusion lists"):
        assert terms[name].bytes == 0 and terms[name].how.startswith("unknown: "), name


@pytest.mark.parametrize("n, rounded", [(0, 0), (1, 16 * MiB), (16 * MiB, 16 * MiB), (16 * MiB + 1, 32 * MiB)])
def test_round_up(n: int, rounded: int) -> None:
    assert estimate.round_up(n) == rounded


@pytest.mark.parametrize("cmdline, cpus", [
    ("root=/dev/vda1 irqpoll nr_cpus=1", 1), ("nr_cpus=4 maxcpus=2", 2), ("quiet", 8), ("nr_cpus=0", 1),
    ("nr_cpus=64", 8), ("xnr_cpus=2", 8),
])
def test_crash_cpus(cmdline: str, cpus: int) -> None:
    assert estimate.crash_cpus(cmdline, 8) == cpus


@pytest.fixture
def root(tmp_path: Path) -> Paths:
    paths = Paths(tmp_path / "root")
    (paths.sys / "devices/system/cpu").mkdir(parents=True)
    (paths.sys / "devices/system/cpu/possible").write_text("0-3,8\n")
    paths.proc.mkdir(parents=True)
    (paths.proc / "meminfo").write_text("MemTotal:        2000000 kB\nPercpu:             1000 kB\nHugePages_Total: 0\n")
    (paths.proc / "iomem").write_text("00001000-0009efff : System RAM\n00100000-7fffffff : System RAM\n"
                                      "  30000000-3fffffff : Crash kernel\nfe000000-fe00ffff : Reserved\n")
    (paths.proc / "cmdline").write_text("root=/dev/vda1 crashkernel=256M\n")
    return paths


def test_machine_inputs_from_a_root(root: Paths) -> None:
    assert estimate.possible_cpus(root) == 5
    assert estimate.meminfo(root)["Percpu"] == 1000 * 1024 and estimate.meminfo(root)["HugePages_Total"] == 0
    assert estimate.ram_layout(root) == (0x80000, 0x9E + 0x7FF00)
    (root.proc / "iomem").write_text("00000000-00000000 : System RAM\n")  # not root: addresses hidden
    assert estimate.ram_layout(root) == (2000000 * 1024 // PAGE, 2000000 * 1024 // PAGE)


def test_initramfs_sizes_count_modules_decompressed(tmp_path: Path) -> None:
    big = bytes(3 * PAGE + 1)

    def build(w: CpioWriter) -> None:
        w.file("init", b"#!/bin/python3\n", 0o755)
        w.file("kdump/modules/virtio_blk.ko", big)
        w.file("lib/modules/6.12/ext4.ko.xz", lzma.compress(bytes(10000), lzma.FORMAT_XZ))

    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(cpio_bytes(build, compress=True))
    size, unpacked, modules = estimate.initramfs_sizes(initrd)  # type: ignore[misc]
    assert size == initrd.stat().st_size
    assert unpacked == PAGE + 4 * PAGE + PAGE
    assert modules == len(big) + 10000
    assert estimate.initramfs_sizes(tmp_path / "absent") is None


def test_kernel_init_size(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(make_bzimage(init_size=0x2345000))
    assert estimate.kernel_init_size(kernel) == 0x2345000
    kernel.write_bytes(b"not a kernel" * 100)
    assert estimate.kernel_init_size(kernel) is None


def test_capture_rss_is_measured() -> None:
    rss = estimate.capture_rss()
    assert rss is not None and 5 * MiB < rss < 500 * MiB


# -- the dump's size -----------------------------------------------------------------------

def physical_pages(n: int) -> bytearray:
    """``n`` pages: a third zero, a third text (compressible), a third random."""
    rng = random.Random(13)
    mem = bytearray(n * PAGE)
    for pfn in range(n):
        if pfn % 3 == 1:
            line = f"page {pfn}: kernel text of sorts\n".encode()
            mem[pfn * PAGE:(pfn + 1) * PAGE] = (line * (PAGE // len(line) + 1))[:PAGE]
        elif pfn % 3 == 2:
            mem[pfn * PAGE:(pfn + 1) * PAGE] = rng.randbytes(PAGE)
    return mem


def kcore_like(path: Path, pages: int = 1024, *, vmemmap: bool = True, vmcoreinfo: bool = True) -> Path:
    """An ELF core laid out as /proc/kcore is: RAM in the direct map in two PT_LOADs
    (physical addresses set), and a vmemmap PT_LOAD without one (p_paddr -1); without
    ``vmemmap``, as /proc/vmcore is."""
    mem = physical_pages(pages)
    half = pages // 2 * PAGE
    regions = [Region(DIRECT, 0, mem[:half], half), Region(DIRECT + 0x10000000, 0x10000000, mem[half:], half)]
    if vmemmap:
        regions.append(Region(0xFFFFEA0000000000, (1 << 64) - 1, bytearray(PAGE), PAGE))
    return write_core(path, Memory(regions), "OSRELEASE=6.1.0-synth\nPAGESIZE=4096\n", vmcoreinfo_note=vmcoreinfo)


def test_kcore_reader(tmp_path: Path) -> None:
    with Kcore(kcore_like(tmp_path / "kcore")) as core:
        assert [(s.vaddr, s.paddr) for s in core.ram_loads()] == [(DIRECT, 0), (DIRECT + 0x10000000, 0x10000000)]
        assert core.require_vmcoreinfo().osrelease == "6.1.0-synth"
        mem = physical_pages(1024)
        assert core.read(PAGE, 2 * PAGE, physical=True) == mem[PAGE:3 * PAGE]
        assert core.read(DIRECT + 0x10000000, PAGE) == mem[512 * PAGE:513 * PAGE]
        with pytest.raises(VmcoreError, match="no PT_LOAD covers physical address 0x20000000"):
            core.read(0x20000000, 8, physical=True)


def test_kcore_unavailable(tmp_path: Path) -> None:
    with pytest.raises(KcoreUnavailable, match="no .*absent \\(a kernel built without CONFIG_PROC_KCORE\\)"):
        Kcore(tmp_path / "absent")
    with pytest.raises(KcoreUnavailable, match="has no VMCOREINFO note \\(a kernel before 4.19\\)"):
        with Kcore(kcore_like(tmp_path / "old", vmcoreinfo=False)) as core:
            core.require_vmcoreinfo()
    (tmp_path / "text").write_bytes(b"x" * 100)
    with pytest.raises(VmcoreError, match="not an ELF64 little-endian core"):
        Kcore(tmp_path / "text")


@pytest.mark.parametrize("compression", ["zstd", "zlib", "none"])
@pytest.mark.parametrize("dump_level", [0, 1])
def test_prediction_equals_the_saved_dump_when_every_page_is_sampled(tmp_path: Path, compression: str,
                                                                     dump_level: int) -> None:
    core_path = kcore_like(tmp_path / "vmcore", vmemmap=False)  # vmcore save takes every PT_LOAD for RAM
    with Kcore(core_path) as core:
        p = dump_size.predict(core, dump_level=dump_level, compression=compression)
    result = save(str(core_path), str(tmp_path / "dump"), compress=compression, dump_level=dump_level,
                  progress=False)
    assert p.sampled_pages == p.kept_pages == result.saved_pages == 1024
    assert p.predicted_bytes == result.out_bytes == (tmp_path / "dump").stat().st_size
    assert p.low_bytes <= p.predicted_bytes <= p.high_bytes
    assert p.zero_pages_sampled == (342 if dump_level & 1 else 0)
    assert p.filter_note.endswith(": only zero pages left out")


def test_prediction_skips_the_crash_region_and_samples_evenly(tmp_path: Path) -> None:
    with Kcore(kcore_like(tmp_path / "kcore", 4096)) as core:
        p = dump_size.predict(core, dump_level=1, compression="zstd", skip=[(0x10000, 0x10000 + 1024)],
                              groups=32, group_pages=8)
    assert p.ram_pages == 4096 - 1024 and p.kept_pages == 3072 and p.sampled_pages == 256
    assert p.max_pfn == 0x10000 + 2048
    third = p.kept_pages / 3
    assert abs(p.zero_pages_sampled / p.sampled_pages - 1 / 3) < 0.05
    assert third * 1000 < p.predicted_bytes - p.overhead_bytes < 2 * third * PAGE


def test_sample_pfns() -> None:
    kept = [(10, 20), (100, 110), (1000, 1012)]
    groups = dump_size.sample_pfns(kept, 4, 4)
    assert all(len(g) == 4 for g in groups) and len(groups) == 4
    every = [pfn for g in groups for pfn in g]
    assert all(any(s <= pfn < e for s, e in kept) for pfn in every)
    assert len(set(every)) == 16
    assert dump_size.sample_pfns(kept, 100, 8) == [  # 32 pages: 4 groups of 8 tile them
        [10, 11, 12, 13, 14, 15, 16, 17], [18, 19, 100, 101, 102, 103, 104, 105],
        [106, 107, 108, 109, 1000, 1001, 1002, 1003], [1004, 1005, 1006, 1007, 1008, 1009, 1010, 1011]]
    assert dump_size.sample_pfns([], 4, 4) == []
    assert dump_size.sample_pfns([(5, 7)], 4, 16) == [[5, 6]]


def test_measure_write(tmp_path: Path) -> None:
    rate = dump_size.measure_write(tmp_path, 2 * MiB)
    assert rate is not None and rate > 0 and list(tmp_path.iterdir()) == []
    assert dump_size.measure_write(tmp_path / "absent") is None


def test_predict_here_and_the_cli(root: Paths, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pykexec.main import main

    kcore_like(root.proc / "kcore", 1024)
    (root.proc / "iomem").write_text("00000000-1fffffff : System RAM\n  10000000-100fffff : Crash kernel\n")
    p = dump_size.predict_here(KdumpConfig(), root)
    assert p.ram_pages == 1024 - 256 and p.threads == 1 and p.write_rate is None
    assert p.notes == ["capture time without writing: the target's write speed was not measured"]
    assert main(["kdump", "estimate", "--json", "--root", str(root.root)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dump"]["predicted_bytes"] > 0 and out["dump_unavailable"] is None
    assert out["crashkernel"]["crashkernel"].startswith("crashkernel=")
    assert [t["name"] for t in out["crashkernel"]["terms"]][:2] == ["kernel", "kexec segments"]
    assert main(["kdump", "estimate", "--root", str(root.root)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("crashkernel=") and "\ndump at level 31, zstd: about " in text
    (root.proc / "kcore").unlink()
    assert main(["kdump", "estimate", "--root", str(root.root)]) == 0
    assert capsys.readouterr().out.endswith("\ndump: no " + str(root.proc / "kcore")
                                            + " (a kernel built without CONFIG_PROC_KCORE)\n")


def test_measure_write_falls_back_to_buffered_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    real_open, flags_seen = os.open, []

    def no_direct(path: str, flags: int, *args: Any) -> int:
        flags_seen.append(flags & os.O_DIRECT)
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "O_DIRECT refused")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    rate = dump_size.measure_write(tmp_path, 2 * MiB)
    assert rate is not None and rate > 0 and list(tmp_path.iterdir()) == []
    assert flags_seen[-2:] == [os.O_DIRECT, 0]


def test_write_probe_runs_after_the_scan(root: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    # The probe's freed pages would count as kept, incompressible pages (seen on Debian: 50 MiB
    # predicted for a 19 MiB dump).
    kcore_like(root.proc / "kcore", 1024)
    root.under("/var/crash").mkdir(parents=True)
    order: list[str] = []
    predict = dump_size.predict

    def scan(*args: Any, **kwargs: Any) -> dump_size.DumpPrediction:
        order.append("scan")
        return predict(*args, **kwargs)

    def probe(directory: Path) -> float:
        order.append("probe")
        return 1e8

    monkeypatch.setattr(dump_size, "predict", scan)
    monkeypatch.setattr(dump_size, "measure_write", probe)
    p = dump_size.predict_here(KdumpConfig(), root)
    assert order == ["scan", "probe"] and p.write_rate == 1e8 and p.notes == []


def test_no_prediction_in_a_xen_dom0(root: Paths) -> None:
    (root.proc / "xen").mkdir()
    (root.proc / "xen/capabilities").write_text("control_d\n")
    with pytest.raises(KcoreUnavailable, match="in a Xen dom0 a dump holds the machine's memory"):
        dump_size.predict_here(KdumpConfig(), root)
