"""Coverage-guided fuzzing (atheris/libFuzzer) of image probing and planning: the type
table's probes (bzImage, ELF vmlinux, Multiboot 1 and 2), then the plan of whatever
type accepts the input. Same property as the hypothesis suite: a result or a one-line
KexecError, nothing else.

    .venv/bin/python tests/fuzz/atheris_images.py -max_total_time=600 [CORPUS_DIR]

Without a corpus directory it starts from the synthetic seeds (written to a temporary
directory). test_atheris.py runs it for a few seconds in CI.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from pykexec import images, machine_file
    from pykexec.errors import KexecError
    from pykexec.request import LoadRequest
    import pykexec.images.bzimage  # noqa: F401  (instrument the loaders, not only the table)
    import pykexec.images.elf  # noqa: F401
    import pykexec.images.multiboot  # noqa: F401
    import pykexec.images.multiboot2  # noqa: F401
    import pykexec.images.multiboot_common  # noqa: F401
    import elftools.elf.elffile  # noqa: F401

from support.multiboot_synth import mb2_elf, xen_like
from support.synth_images import MACHINE_1G, make_bzimage, make_elf_vmlinux

MACHINE = machine_file.from_dict(MACHINE_1G, source="atheris")


def one_input(data: bytes) -> None:
    try:
        kernel = images.decompress(data, "fuzz")
        chosen = images.select(kernel)
        chosen.plan(LoadRequest("fuzz", kernel, MACHINE, cmdline="console=ttyS0"))
    except KexecError as err:
        if "\n" in str(err) or not str(err).strip():
            raise AssertionError(f"not a one-line message: {err!r}") from None


def seeds(directory: Path) -> None:
    for name, data in {"bzimage": make_bzimage(body=b"\x90" * 0x400),
                       "elf": make_elf_vmlinux([(0x1000000, b"\x90" * 64, 0x2000)], 0x1000000),
                       "xen": xen_like(), "mb2": mb2_elf()}.items():
        (directory / name).write_bytes(data)


def main() -> None:
    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):
        seed_dir = Path(tempfile.mkdtemp(prefix="pykexec-atheris-"))
        seeds(seed_dir)
        args.append(str(seed_dir))
    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
