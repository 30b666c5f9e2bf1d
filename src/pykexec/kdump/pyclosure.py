"""The Python the crash initramfs needs: exactly the modules the capture can import,
precompiled, and nothing else of the standard library.

Which modules: every pykexec module the capture reaches through its imports (read
from the source: imports at the top and inside functions, not those for type
checkers only), and every other module those name; a child interpreter
(``-S -I``, as the initramfs runs it) imports them all and reports what got
loaded, standard library and third-party alike (zstandard), with their files.
Functions of the standard library that import more when called are the one gap:
:data:`EXTRA_MODULES` lists those the capture calls.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import marshal
import os
import struct
import subprocess
import sys
import sysconfig
from pathlib import Path

from pykexec.errors import InputError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

#: Loaded on demand by what the capture calls (codecs looked up by name; the
#: landmark ``os`` by which the interpreter finds its standard library).
EXTRA_MODULES = ("encodings.ascii", "encodings.latin_1", "encodings.utf_8", "os")

_CHILD = """\
import importlib, json, sys
sys.path[:0] = json.loads(sys.argv[1])
for name in json.loads(sys.argv[2]):
    try:
        importlib.import_module(name)
    except Exception:
        pass  # an optional import (another platform's, a missing extra)
found = {}
for name, module in sorted(sys.modules.items()):
    spec = getattr(module, "__spec__", None)
    origin = getattr(spec, "origin", None) if spec is not None else None
    found[name] = [getattr(module, "__file__", None), origin]
print(json.dumps(found))
"""


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """The modules (or ``module.name`` for names from a module) a module's code imports
    at run time, absolute."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_only(child):
                continue
            if isinstance(child, ast.Import):
                names.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in child.names)
            visit(child)

    visit(ast.parse(source))
    return names


def _source(name: str) -> tuple[Path, bool] | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin), spec.submodule_search_locations is not None


def import_closure(entries: Iterable[str], own: str = "pykexec") -> tuple[set[str], set[str]]:
    """``own``'s modules reachable from ``entries``, and the other modules they import."""
    mine: set[str] = set()
    others: set[str] = set()
    todo = list(entries)
    while todo:
        name = todo.pop()
        if name in mine:
            continue
        try:
            found = _source(name)
        except ImportError:
            found = None
        if found is None:
            continue  # a name inside a module, not a module
        mine.add(name)
        path, is_package = found
        parent = name.rpartition(".")[0]
        if parent:
            todo.append(parent)
        for target in imported_names(path.read_text(), name, is_package):
            if target == own or target.startswith(own + "."):
                todo.append(target)
            else:
                others.add(target)
    return mine, others


class PythonFile:
    """A file of the interpreter's world: ``host`` is copied (extension modules) or
    compiled (``.py``) to ``guest``."""

    def __init__(self, host: str, guest: str, compile_it: bool) -> None:
        self.host, self.guest, self.compile = host, guest, compile_it


def _search_root(path: str, roots: list[str]) -> str | None:
    for root in roots:
        if path.startswith(root.rstrip("/") + "/"):
            return root
    return None


def python_files(entries: Iterable[str], packages_dir: str, executable: str | None = None,
                 leave_out: Iterable[str] = ()) -> list[PythonFile]:
    """What the capture's modules need, as files of the initramfs: the standard library's
    at their places (the interpreter finds them there), the rest (pykexec,
    zstandard) under ``packages_dir``.  ``.py`` files become ``.pyc`` beside where
    the source would be (the sourceless form the interpreter imports).  The top-level
    packages ``leave_out`` names are not imported (only a function imports them) unless
    something else imports them on its own."""
    mine, others = import_closure(entries)
    skipped = set(leave_out)
    others = {name for name in others if name.split(".")[0] not in skipped}
    names = sorted(mine | others | set(EXTRA_MODULES))
    roots = sorted({str(_path_entry(name)) for name in mine | {n.split(".")[0] for n in others}
                    if not _is_stdlib(name) and _path_entry(name) is not None}, key=len, reverse=True)
    cmd = [executable or interpreter(), "-S", "-I", "-c", _CHILD, json.dumps(roots), json.dumps(names)]
    res = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise InputError(f"cannot list the capture's modules: {res.stderr.strip()[-300:]}")
    loaded: dict[str, list[str | None]] = json.loads(res.stdout)
    stdlib = [sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib")]
    files: dict[str, PythonFile] = {}
    for name, (path, origin) in loaded.items():
        if not path or (origin == "frozen" and name not in EXTRA_MODULES):
            continue
        if origin == "frozen" or path.endswith(".py"):
            guest_source = _guest_path(path, roots, packages_dir)
            files[guest_source] = PythonFile(path, guest_source[:-3] + ".pyc", True)
        elif path.endswith(".so"):
            guest = _guest_path(path, roots, packages_dir)
            files[guest] = PythonFile(path, guest, False)
        elif _search_root(path, stdlib) is None:
            raise InputError(f"module {name} is {path}: neither source nor an extension")
    return sorted(files.values(), key=lambda f: f.guest)


def _guest_path(path: str, roots: list[str], packages_dir: str) -> str:
    root = _search_root(path, roots)
    if root is None:
        return path  # the standard library: where the interpreter looks for it
    return os.path.join(packages_dir, os.path.relpath(path, root))


def _is_stdlib(name: str) -> bool:
    return name.split(".")[0] in sys.stdlib_module_names


def _path_entry(name: str) -> Path | None:
    """The ``sys.path`` directory a top-level package or module is found in."""
    try:
        spec = importlib.util.find_spec(name.split(".")[0])
    except ImportError:
        return None
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return None
    origin = Path(spec.origin)
    return origin.parent.parent if spec.submodule_search_locations is not None else origin.parent


def interpreter() -> str:
    """The running interpreter's binary (not a virtualenv's link to it)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidate = Path(sys.base_prefix) / "bin" / version
    return str(candidate) if candidate.exists() else os.path.realpath(sys.executable)


def pyc(source_path: str, guest_source: str, optimize: int = 0) -> bytes:
    """``source_path`` compiled, as a ``.pyc`` file (magic, flags, mtime 0 and size:
    a sourceless ``.pyc`` is never checked against a source)."""
    source = Path(source_path).read_bytes()
    code = compile(source, guest_source, "exec", dont_inherit=True, optimize=optimize)
    return importlib.util.MAGIC_NUMBER + struct.pack("<III", 0, 0, len(source) & 0xFFFFFFFF) + marshal.dumps(code)
