"""Build the x86_64 purgatory blob from ``src/`` with gcc and binutils.

Usage::

    python -m pykexec.purgatory.build           # rebuild purgatory.bin in place
    python src/pykexec/purgatory/build.py --check  # rebuild to a temp dir, compare

The blob is committed, so installing pykexec never needs a compiler; this
script exists to regenerate it and to prove that the committed bytes come
from the committed source.  The build is reproducible: fixed flags, no
build-id, no debug info, no timestamps, nothing from the build directory.

The ELF is linked with ``--emit-relocs`` so that we can see every
relocation the linker resolved.  A relocation that is not PC-relative and
does not refer to an absolute (address independent) symbol would make the
blob depend on its load address; the build refuses it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
BLOB = HERE / "purgatory.bin"

SOURCES = ("entry.S", "main.c", "sha256.c")
LINKER_SCRIPT = "purgatory.lds"

CFLAGS = (
    "-Os",
    "-std=gnu11",
    "-Wall",
    "-Werror",
    "-ffreestanding",
    "-fno-builtin",
    "-nostdlib",
    "-nostdinc",
    "-fPIE",
    "-fno-common",
    "-fno-ident",
    "-fno-jump-tables",
    "-fno-tree-loop-distribute-patterns",  # no surprise memset/memcpy calls
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-mno-red-zone",
    "-mno-mmx",
    "-mno-sse",
    "-mno-sse2",
    "-mno-avx",
    "-march=x86-64",
    "-mtune=generic",
    "-fcf-protection=none",
    "-fvisibility=hidden",
)
LDFLAGS = (
    "-nostdlib",
    "-static",
    "--build-id=none",
    "--emit-relocs",
    "--no-warn-rwx-segments",
    "-z",
    "noexecstack",
)

# Relocation types (x86_64 psABI) that are resolved relative to the place
# being patched, so the result does not depend on the load address.
R_X86_64_NONE = 0
PC_RELATIVE = {
    2: "R_X86_64_PC32",
    4: "R_X86_64_PLT32",
    13: "R_X86_64_PC16",
    15: "R_X86_64_PC8",
    24: "R_X86_64_PC64",
}
SHN_ABS = "SHN_ABS"


class BuildError(RuntimeError):
    """The purgatory could not be built or failed a sanity check."""


@dataclass(frozen=True)
class BuildResult:
    """What one build produced."""

    blob: bytes
    """The flat binary (``purgatory.bin`` contents)."""
    elf_path: Path
    """The linked ELF (with ``--emit-relocs`` sections), in the output dir."""
    symbols: dict[str, int]
    """Offsets of the exported header/parameter symbols (``hdr_*``,
    ``params*``, ``purgatory_entry``, ...) from the start of the blob."""


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BuildError(
            f"{name!r} not found in PATH: building the purgatory needs gcc and "
            "binutils (ld, objcopy) for x86_64"
        )
    return path


def _run(argv: list[str], cwd: Path) -> None:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(
            f"command failed ({proc.returncode}): {' '.join(argv)}\n"
            f"{proc.stdout}{proc.stderr}"
        )


def check_relocations(elf: ELFFile) -> None:
    """Fail unless every relocation in ``elf`` is load-address independent.

    ``elf`` must have been linked with ``--emit-relocs``.  Allowed are
    PC-relative types, and absolute types whose symbol is itself absolute
    (link-time constants such as the blob size).
    """
    bad: list[str] = []
    symtab = _symtab(elf)
    for sec in elf.iter_sections():
        if sec.name in (".got", ".got.plt", ".plt", ".dynamic", ".interp"):
            bad.append(f"unexpected section {sec.name}")
        if not isinstance(sec, RelocationSection):
            continue
        if sec["sh_flags"] & 0x2:  # SHF_ALLOC: something would apply it at run time
            bad.append(f"loadable relocation section {sec.name}")
        for rel in sec.iter_relocations():
            rtype = rel["r_info_type"]
            if rtype == R_X86_64_NONE or rtype in PC_RELATIVE:
                continue
            sym = symtab.get_symbol(rel["r_info_sym"])
            if sym["st_shndx"] == SHN_ABS:
                continue
            bad.append(
                f"{sec.name}+{rel['r_offset']:#x}: type {rtype} against "
                f"{sym.name or '<section>'} (absolute, load-address dependent)"
            )
    if bad:
        raise BuildError("purgatory is not position independent:\n  " + "\n  ".join(bad))


def _symtab(elf: ELFFile) -> SymbolTableSection:
    symtab = elf.get_section_by_name(".symtab")
    if not isinstance(symtab, SymbolTableSection):
        raise BuildError("purgatory has no symbol table (.symtab)")
    return symtab


def _symbols(elf: ELFFile) -> dict[str, int]:
    symtab = _symtab(elf)
    wanted = ("hdr_", "params", "purgatory_entry", "stack_top", "__pyk_")
    return {
        sym.name: sym["st_value"]
        for sym in symtab.iter_symbols()
        if sym.name.startswith(wanted)
    }


def build(outdir: Path, src: Path = SRC) -> BuildResult:
    """Compile and link the purgatory from ``src`` into ``outdir``.

    ``src`` defaults to the committed sources (tests pass a modified copy).
    Writes ``purgatory.elf``, ``purgatory.bin`` and ``purgatory.symbols.json``
    (the symbol map the layout tests compare with the ctypes definitions).
    """
    cc, ld, objcopy = _tool("gcc"), _tool("ld"), _tool("objcopy")
    outdir.mkdir(parents=True, exist_ok=True)
    # Work on copies so no absolute source path can leak into the objects.
    work = outdir / "src"
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(src, work)
    objs: list[str] = []
    for name in SOURCES:
        obj = Path(name).stem + ".o"
        _run([cc, *CFLAGS, "-I.", "-c", name, "-o", obj], cwd=work)
        objs.append(obj)
    _run([ld, *LDFLAGS, "-T", LINKER_SCRIPT, "-o", "../purgatory.elf", *objs], cwd=work)
    elf_path = outdir / "purgatory.elf"
    raw = outdir / "purgatory.raw"
    _run([objcopy, "-O", "binary", str(elf_path), str(raw)], cwd=outdir)

    with open(elf_path, "rb") as f:
        elf = ELFFile(f)
        if elf["e_machine"] != "EM_X86_64" or elf["e_type"] != "ET_EXEC":
            raise BuildError("unexpected ELF type/machine")
        check_relocations(elf)
        symbols = _symbols(elf)

    blob = raw.read_bytes()
    # objcopy stops at the last byte of section contents; the header's
    # file_size also counts trailing alignment, so pad to that exactly.
    file_size = symbols["__pyk_file_size"]
    if len(blob) > file_size:
        raise BuildError(f"blob is {len(blob)} bytes, header says {file_size}")
    blob += bytes(file_size - len(blob))
    if blob[8:16] != b"PYKXPURG":
        raise BuildError("blob does not start with the pykexec purgatory header")
    (outdir / "purgatory.bin").write_bytes(blob)
    (outdir / "purgatory.symbols.json").write_text(
        json.dumps(symbols, indent=1, sort_keys=True) + "\n"
    )
    return BuildResult(blob=blob, elf_path=elf_path, symbols=symbols)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="rebuild in a temporary directory and fail if the bytes differ "
        "from the committed purgatory.bin",
    )
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="pykexec-purgatory-") as tmp:
            result = build(Path(tmp))
            if args.check:
                committed = BLOB.read_bytes() if BLOB.exists() else b""
                if committed != result.blob:
                    print(
                        f"purgatory.bin is stale or not reproducible: committed "
                        f"{len(committed)} bytes, rebuilt {len(result.blob)} bytes; "
                        f"run python -m pykexec.purgatory.build",
                        file=sys.stderr,
                    )
                    return 1
                print(f"purgatory.bin up to date ({len(result.blob)} bytes)")
            else:
                BLOB.write_bytes(result.blob)
                print(f"wrote {BLOB} ({len(result.blob)} bytes)")
    except BuildError as e:
        print(f"purgatory build failed: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
