"""Reading and writing files in a raw ext4 disk image while no guest runs on it, with
debugfs (e2fsprogs): no mount, so no loop device, FUSE or privilege is needed.

debugfs works on the image's blocks as they are: a journal left unreplayed by a guest that
stopped without unmounting (a crash, a killed QEMU) would show stale files, so every access
first replays it the way the next mount would (``e2fsck -E journal_only``).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

from support.testbed.cache import TestbedError
from support.testbed.host import run_command

# debugfs prints its version banner on stderr and reports errors there too, with exit status 0.
_BANNER = re.compile(r"^debugfs \d")
# What a write batch may report without failing: removing a file before (re)writing it.
# Directories are never made twice: debugfs' mkdir of an existing directory can leave an
# allocated, unconnected directory inode behind (e2fsck then reports errors).
_TOLERATED_WRITE_ERRORS = ("File not found by ext2_lookup",)
# How debugfs -f echoes each command on stdout before its output.
_ECHO = "debugfs: "


@dataclass(frozen=True)
class DirEntry:
    """One entry of :meth:`Ext4Image.listdir`."""

    name: str
    mode: int                # st_mode, file type bits included
    size: int

    @property
    def is_dir(self) -> bool:
        return (self.mode & 0o170000) == 0o040000


class Ext4Image:
    """A raw ext4 image file (a whole-disk filesystem, as ``mkfs.ext4 -d`` makes it)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # -- consistency -------------------------------------------------------------
    def replay_journal(self) -> bool:
        """Replay the journal if the last user left it dirty; True if it did."""
        header = run_command(["dumpe2fs", "-h", self.path])
        features = re.search(r"^Filesystem features:(.*)$", header, re.M)
        if features is None or "needs_recovery" not in features.group(1).split():
            return False
        res = subprocess.run(["e2fsck", "-E", "journal_only", "-y", str(self.path)],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True)
        # e2fsck: 0 nothing changed, 1 errors corrected (here: the journal replayed).
        if res.returncode not in (0, 1):
            raise TestbedError(f"e2fsck -E journal_only {self.path} failed ({res.returncode}):\n"
                               f"{res.stdout}{res.stderr}")
        return True

    def fsck(self) -> str:
        """``e2fsck -fn``: a read-only full check; raises with its report if it finds errors."""
        self.replay_journal()
        res = subprocess.run(["e2fsck", "-fn", str(self.path)], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise TestbedError(f"e2fsck -fn {self.path} found errors:\n{res.stdout}{res.stderr}")
        return res.stdout

    # -- reading ---------------------------------------------------------------------
    def _read_command(self, command: str) -> bytes:
        self.replay_journal()
        res = subprocess.run(["debugfs", "-R", command, str(self.path)], stdin=subprocess.DEVNULL,
                             capture_output=True)
        errors = _errors(res.stderr.decode(errors="replace"), ())
        if res.returncode != 0 or errors:
            raise TestbedError(f"debugfs -R {command!r} {self.path}: " + "; ".join(errors))
        return res.stdout

    def exists(self, guest_path: str) -> bool:
        try:
            self._read_command(f"stat {_quote(guest_path)}")
        except TestbedError:
            return False
        return True

    def read_bytes(self, guest_path: str) -> bytes:
        """A regular file's contents (through a host file: debugfs ``cat`` is for text)."""
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "file"
            self.copy_file_out(guest_path, out)
            return out.read_bytes()

    def read_text(self, guest_path: str) -> str:
        return self.read_bytes(guest_path).decode()

    def copy_file_out(self, guest_path: str, host_path: Path) -> Path:
        """Copy one regular file to ``host_path`` (mode kept); return ``host_path``."""
        self._read_command(f"dump -p {_quote(guest_path)} {_quote(str(host_path))}")
        if not host_path.exists():
            raise TestbedError(f"{guest_path} is not a regular file in {self.path}")
        return host_path

    def copy_tree_out(self, guest_dir: str, host_parent: Path) -> Path:
        """Copy a directory recursively into ``host_parent``; return the copy's path."""
        host_parent.mkdir(parents=True, exist_ok=True)
        self._read_command(f"rdump {_quote(guest_dir)} {_quote(str(host_parent))}")
        copied = host_parent / PurePosixPath(guest_dir).name
        if not copied.is_dir():
            raise TestbedError(f"{guest_dir} is not a directory in {self.path}")
        return copied

    def listdir(self, guest_dir: str) -> list[DirEntry]:
        """The entries of a directory, without ``.`` and ``..``."""
        out = self._read_command(f"ls -p {_quote(guest_dir)}").decode(errors="replace")
        return [e for e in _parse_ls(out.splitlines()) if e.name not in (".", "..")]

    def existing_dirs(self, guest_dirs: Iterable[str]) -> set[str]:
        """Which of ``guest_dirs`` are directories of the image (one debugfs run)."""
        wanted = sorted(set(guest_dirs))
        if not wanted:
            return set()
        self.replay_journal()
        with tempfile.NamedTemporaryFile("w", prefix="debugfs-", suffix=".cmds") as script:
            script.write("".join(f"ls -p {_quote(d)}\n" for d in wanted))
            script.flush()
            res = subprocess.run(["debugfs", "-f", script.name, str(self.path)], stdin=subprocess.DEVNULL,
                                 capture_output=True, text=True)
        # Each listing follows its echoed command; a missing directory lists nothing (its
        # error goes to stderr), an existing one at least its "." entry.
        found: set[str] = set()
        current: str | None = None
        for line in res.stdout.splitlines():
            if line.startswith(_ECHO + "ls -p "):
                current = line[len(_ECHO + "ls -p "):].strip().strip('"')
            elif current is not None and any(e.name == "." for e in _parse_ls([line])):
                found.add(current)
        return found

    # -- writing -------------------------------------------------------------------------
    def run_write_commands(self, commands: Sequence[str]) -> None:
        """Run debugfs commands with the image opened read-write, in one batch."""
        self.replay_journal()
        with tempfile.NamedTemporaryFile("w", prefix="debugfs-", suffix=".cmds") as script:
            script.write("\n".join(commands) + "\n")
            script.flush()
            res = subprocess.run(["debugfs", "-w", "-f", script.name, str(self.path)],
                                 stdin=subprocess.DEVNULL, capture_output=True, text=True)
        errors = _errors(res.stderr, _TOLERATED_WRITE_ERRORS)
        if res.returncode != 0 or errors:
            raise TestbedError(f"debugfs -w {self.path}: " + "; ".join(errors[:10]))

    def write_files(self, files: Iterable[tuple[str, bytes, int]]) -> None:
        """Create or replace regular files: (guest path, contents, mode); parents are made."""
        with tempfile.TemporaryDirectory() as tmp:
            files = list(files)
            commands = self._mkdir_commands(str(PurePosixPath(path).parent) for path, _, _ in files)
            for i, (guest_path, data, mode) in enumerate(files):
                host = Path(tmp) / str(i)
                host.write_bytes(data)
                # debugfs write takes the mode (and owner: root) from the host file.
                os.chmod(host, mode)
                commands += [f"rm {_quote(guest_path)}", f"write {_quote(str(host))} {_quote(guest_path)}"]
            self.run_write_commands(commands)

    def add_tree(self, host_dir: Path, guest_dir: str) -> None:
        """Copy a host directory tree (directories, files, symlinks) to ``guest_dir``,
        replacing files already there."""
        dirs: list[str] = [guest_dir]
        commands: list[str] = []
        for dirpath, dirnames, filenames in os.walk(host_dir):
            rel = Path(dirpath).relative_to(host_dir)
            for name in sorted(dirnames):
                src = Path(dirpath) / name
                dest = str(PurePosixPath(guest_dir, rel, name))
                if src.is_symlink():
                    commands += [f"rm {_quote(dest)}", f"symlink {_quote(dest)} {_quote(os.readlink(src))}"]
                else:
                    dirs.append(dest)
            dirnames[:] = sorted(d for d in dirnames if not (Path(dirpath) / d).is_symlink())
            for name in sorted(filenames):
                src = Path(dirpath) / name
                dest = str(PurePosixPath(guest_dir, rel, name))
                commands.append(f"rm {_quote(dest)}")
                if src.is_symlink():
                    commands.append(f"symlink {_quote(dest)} {_quote(os.readlink(src))}")
                else:
                    commands.append(f"write {_quote(str(src))} {_quote(dest)}")
        self.run_write_commands(self._mkdir_commands(dirs) + commands)

    def _mkdir_commands(self, guest_dirs: Iterable[str]) -> list[str]:
        """debugfs commands making the missing ones of ``guest_dirs`` and of their parents,
        parents first."""
        chain: set[str] = set()
        for d in guest_dirs:
            parts = PurePosixPath(d).parts[1:]
            chain.update("/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1))
        missing = chain - self.existing_dirs(chain)
        return [f"mkdir {_quote(d)}" for d in sorted(missing, key=lambda d: (d.count("/"), d))]


def make_image(path: Path, tree: Path, *, size_bytes: int, label: str) -> Ext4Image:
    """A sparse raw image of ``size_bytes`` holding an ext4 filesystem filled from ``tree``."""
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size_bytes)
    run_command(["mkfs.ext4", "-q", "-F", "-L", label, "-d", tree, path])
    return Ext4Image(path)


def copy_image(src: Path, dest: Path) -> Ext4Image:
    """A copy of an image, holes kept (a 4 GiB image with 0.5 GB of data copies in 0.25 s)."""
    dest.unlink(missing_ok=True)
    run_command(["cp", "--sparse=always", src, dest])
    return Ext4Image(dest)


def _parse_ls(lines: Iterable[str]) -> list[DirEntry]:
    """Entries of ``ls -p`` output: ``/inode/mode (octal)/uid/gid/name/size/`` per line."""
    entries = []
    for line in lines:
        fields = line.split("/")
        if len(fields) >= 7 and fields[0] == "" and fields[2].isdigit():
            entries.append(DirEntry(name=fields[5], mode=int(fields[2], 8),
                                    size=int(fields[6]) if fields[6] else 0))
    return entries


def _quote(path: str) -> str:
    # debugfs splits its command lines at blanks unless quoted with double quotes.
    if any(c in path for c in ' \t"'):
        if '"' in path:
            raise TestbedError(f"debugfs cannot take a path with a double quote: {path!r}")
        return f'"{path}"'
    return path


def _errors(stderr: str, tolerated: Sequence[str]) -> list[str]:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return [ln for ln in lines if not _BANNER.match(ln) and not any(t in ln for t in tolerated)]
