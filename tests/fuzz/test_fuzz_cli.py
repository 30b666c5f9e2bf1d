"""End to end through the real entry point: ``pykexec.main.main([...])`` with a
generated kernel file, a generated ``--machine`` file and drawn options. Either exit 0,
or a non-zero exit with exactly one line on stderr, "pykexec: ...", never "internal
error".

Safety: every argv carries --machine and --dry-run, so no syscall can happen; -e, -u,
-S (which act on the running system even with --machine) and -d/-h/-v (several lines or
SystemExit by design) are never drawn."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.fuzzlib import fuzz_settings, memory_bound, mutated, time_bound
from support.multiboot_synth import xen_like
from support.synth_images import MACHINE_1G, make_bzimage, make_elf_vmlinux
from test_fuzz_images import ANY_IMAGE
from test_fuzz_machine import machine_dicts

from pykexec.main import main

CRASH_1G = {**MACHINE_1G, "crash_kernel": {"start": "0x20000000", "end": "0x2fffffff"}}
SEEDS = (make_bzimage(body=b"\x90" * 0x400), make_elf_vmlinux([(0x1000000, b"\x90" * 64, 0x2000)], 0x1000000),
         xen_like())


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="pykexec-fuzz-") as d:
        yield Path(d)


_OPTIONS = st.lists(st.one_of(
    st.sampled_from((["-c"], ["-s"], ["-a"], ["--json"], ["--reuse-cmdline"], ["--pass-memmap-cmdline"],
                     ["--xen-crash-efi"], ["--args-linux"], ["-l"], ["-p"], ["-l", "-p"])),
    st.tuples(st.sampled_from(("--append", "--command-line")), st.text(max_size=20)).map(list),
    st.tuples(st.sampled_from(("--mem-min", "--mem-max")),
              st.sampled_from(("0", "0x100000", "0x3fffffff", "0x1fffff", "-1", "x", "0x10000000000000000"))).map(list),
    st.tuples(st.just("-t"), st.sampled_from(("bzImage64", "elf-x86_64", "multiboot-x86", "multiboot2-x86",
                                             "zImage", ""))).map(list),
    st.sampled_from((["--initrd", "{initrd}"], ["--initrd", "{missing}"], ["--initrd", "{dir}"],
                     ["--module", "{initrd} arg"], ["--module", "{missing}"], ["--module", ""],
                     ["--initrd", "{empty}"])),
), max_size=4)


@pytest.mark.filterwarnings("ignore")
@fuzz_settings(150)
@given(kernel=st.sampled_from(SEEDS).flatmap(lambda s: mutated(s, max_mutations=2)) | ANY_IMAGE,
       machine=st.one_of(st.just(MACHINE_1G), st.just(CRASH_1G), machine_dicts()),
       options=_OPTIONS, positional=st.booleans())
def test_cli_dry_run(workdir: Path, capsys: pytest.CaptureFixture[str], kernel: bytes, machine: object,
                     options: list[list[str]], positional: bool) -> None:
    paths = {"initrd": workdir / "initrd", "missing": workdir / "missing", "dir": workdir,
             "empty": workdir / "empty", "kernel": workdir / "kernel", "machine": workdir / "machine.json"}
    paths["initrd"].write_bytes(b"initrd" * 10)
    paths["empty"].write_bytes(b"")
    paths["kernel"].write_bytes(kernel)
    paths["machine"].write_text(json.dumps(machine))
    argv = ["--dry-run", "--machine", str(paths["machine"])]
    for opt in options:
        for a in opt:
            for name, path in paths.items():
                a = a.replace("{" + name + "}", str(path))
            argv.append(a)
    argv += [str(paths["kernel"])] if positional else ["-l", str(paths["kernel"])]
    capsys.readouterr()
    with time_bound(10), memory_bound():
        code = main(argv)
    err = capsys.readouterr().err
    if code == 0:
        return
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pykexec: "), f"{argv}: stderr {err!r}"
    assert "internal error" not in err, f"{argv}: {err}"

