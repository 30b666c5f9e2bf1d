"""The kernel modules of one release, as depmod indexes them in ``/lib/modules/<release>``:
their files (``modules.dep``), dependencies (``modules.dep``, else each module's
``.modinfo depends=``), aliases (``modules.alias``), soft dependencies
(``modules.softdep``, else ``.modinfo softdep=``) and the built-in ones
(``modules.builtin``).  Without ``modules.dep`` (a kernel package unpacked, not
installed) the tree is scanned and each module read when asked for.

:meth:`ModuleIndex.load_order` puts modules and everything they need in an order
``finit_module`` accepts; :meth:`ModuleIndex.contents` gives a module's ELF file,
decompressed (``.ko.xz``, ``.ko.zst``, ``.ko.gz``): the crash kernel loads it from
a file descriptor, and only kernels with ``CONFIG_MODULE_DECOMPRESS`` take
compressed ones.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from pykexec.errors import InputError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


def module_name(path: str) -> str:
    """``kernel/drivers/block/virtio_blk.ko.xz`` -> ``virtio_blk`` (``-`` read as ``_``, as the kernel does)."""
    base = os.path.basename(path)
    for suffix in SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def decompress(path: Path) -> bytes:
    """A module file's ELF bytes."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        import lzma

        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if path.name.endswith(".gz"):
        import gzip

        return gzip.decompress(data)
    return data


def _modinfo(elf: bytes) -> list[tuple[str, str]]:
    """The ``key=value`` strings of a module's ``.modinfo`` section."""
    import io

    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        section = ELFFile(io.BytesIO(elf)).get_section_by_name(".modinfo")
    except ELFError as err:
        raise InputError(f"not a kernel module ({err})") from None
    if section is None:
        return []
    pairs = []
    for item in section.data().split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            pairs.append((key, value))
    return pairs


def _literal_prefix(pattern: str) -> str:
    """What every name ``pattern`` matches starts with: up to its first ``*``, ``?`` or ``[``."""
    cut = min((i for i in (pattern.find(c) for c in "*?[") if i >= 0), default=len(pattern))
    return pattern[:cut]


def _parse_softdep(text: str) -> tuple[list[str], list[str]]:
    """``pre: a b post: c`` -> (["a", "b"], ["c"])."""
    pre: list[str] = []
    post: list[str] = []
    into = pre
    for word in text.split():
        if word in ("pre:", "post:"):
            into = pre if word == "pre:" else post
        else:
            into.append(word)
    return pre, post


class ModuleIndex:
    """The modules of ``moddir`` (``/lib/modules/<release>``)."""

    def __init__(self, moddir: Path) -> None:
        self.moddir = moddir
        if not moddir.is_dir():
            raise InputError(f"{moddir}: no modules for this kernel release (is its package installed?)")
        self.files: dict[str, str] = {}
        self._deps: dict[str, list[str]] = {}
        self._softdeps: dict[str, tuple[list[str], list[str]]] = {}
        # (literal prefix, pattern, module): a name can match only the patterns whose prefix
        # it starts with, so that fnmatch compiles a few of them, not every one (a generic
        # kernel has 25,000; compiling them all took 50 s under TCG).
        self._aliases: list[tuple[str, str, str]] = []
        self.builtin = {module_name(line) for line in self._lines("modules.builtin")}
        self.indexed = (moddir / "modules.dep").exists()
        if self.indexed:
            for line in self._lines("modules.dep"):
                path, _, deps = line.partition(":")
                name = module_name(path)
                self.files[name] = path
                self._deps[name] = [module_name(d) for d in deps.split()]
            for line in self._lines("modules.alias"):
                words = line.split()
                if len(words) == 3 and words[0] == "alias":
                    self._aliases.append((_literal_prefix(words[1]), words[1], words[2].replace("-", "_")))
            for line in self._lines("modules.softdep"):
                words = line.split(None, 2)
                if len(words) == 3 and words[0] == "softdep":
                    self._softdeps[words[1].replace("-", "_")] = _parse_softdep(words[2])
        else:
            for found in sorted(moddir.rglob("*.ko*")):
                if found.name.endswith(SUFFIXES):
                    self.files.setdefault(module_name(found.name), str(found.relative_to(moddir)))

    def _lines(self, name: str) -> list[str]:
        try:
            return (self.moddir / name).read_text().splitlines()
        except OSError:
            return []

    def _read_modinfo(self, name: str) -> None:
        """Dependencies and soft dependencies from the module itself (no ``modules.dep``)."""
        info = _modinfo(self.contents(name))
        deps = [d.replace("-", "_") for key, value in info if key == "depends" for d in value.split(",") if d]
        self._deps[name] = deps
        pre: list[str] = []
        post: list[str] = []
        for key, value in info:
            if key == "softdep":
                more_pre, more_post = _parse_softdep(value)
                pre += more_pre
                post += more_post
        self._softdeps[name] = (pre, post)

    def contents(self, name: str) -> bytes:
        """Module ``name``'s ELF file, decompressed."""
        return decompress(self.moddir / self.files[name])

    def resolve(self, wanted: str) -> list[str]:
        """The loadable modules for a module name or an alias (``fs-ext4``, ``crc32c``,
        a device's ``modalias``): [] if built in or unknown."""
        name = wanted.replace("-", "_")
        if name in self.builtin:
            return []
        if name in self.files:
            return [name]
        return sorted({module for prefix, pattern, module in self._aliases
                       if wanted.startswith(prefix) and module in self.files
                       and fnmatch.fnmatchcase(wanted, pattern)})

    def deps(self, name: str) -> list[str]:
        if name not in self._deps and not self.indexed:
            self._read_modinfo(name)
        return [d for d in self._deps.get(name, []) if d in self.files]

    def softdeps(self, name: str) -> tuple[list[str], list[str]]:
        """Modules to load before and after ``name`` (its soft dependencies, resolved)."""
        if name not in self._softdeps and not self.indexed:
            self._read_modinfo(name)
        pre, post = self._softdeps.get(name, ([], []))
        return ([m for w in pre for m in self.resolve(w)], [m for w in post for m in self.resolve(w)])

    def modules_for(self, wanted: Iterable[str]) -> list[str]:
        """The modules ``wanted`` (names or aliases) resolve to, with what they need, in
        load order: what the crash initramfs carries and ``kdump test`` checks."""
        return self.load_order([name for w in wanted for name in self.resolve(w)])

    def load_order(self, names: Iterable[str]) -> list[str]:
        """``names`` and every module they need (hard and soft dependencies), each
        after what it needs."""
        order: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            if name in order or name in visiting:
                return
            visiting.add(name)
            pre, post = self.softdeps(name)
            # modules.dep lists what a module needs so that modprobe loads it from the end
            for dep in [*pre, *reversed(self.deps(name))]:
                visit(dep)
            order.append(name)
            for dep in post:
                visit(dep)

        for name in names:
            visit(name)
        return order
