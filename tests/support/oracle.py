"""Differential-test oracle: what would Debian's kexec-tools load?

``run_kexec_tools`` runs the real ``/usr/sbin/kexec`` with the LD_PRELOAD shim
``kexec_intercept.c`` and returns the exact kexec_load(2) arguments it produced
(entry, flags and every segment's placement and bytes) without loading anything.
The machine kexec-tools sees (``/proc/iomem``, ``/proc/cmdline``, boot_params,
``/proc/kcore``, crash notes, vmcoreinfo, ...) is described by a ``MachineSpec``
and served to it from a synthetic directory tree; everything else under the
shim's managed paths (EFI, EDD, ``/dev/fb0``, Xen, ``/sys/firmware/memmap``)
is hidden, so results do not depend on the host.

Stdlib only, so it can run before pykexec's own dependencies are installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "MemoryRange",
    "MachineSpec",
    "OracleSegment",
    "OracleResult",
    "OracleError",
    "build_shim",
    "make_kcore",
    "run_kexec_tools",
]

HERE = Path(__file__).resolve().parent
SHIM_SOURCE = HERE / "kexec_intercept.c"
REPO_ROOT = HERE.parent.parent
DEFAULT_CACHE = REPO_ROOT / ".cache" / "oracle" / "shim"

# Flags for the shim: -O2 is irrelevant to correctness but keeps the build
# identical between runs; -ldl for dlsym/dlvsym on older glibc.
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC"]
LDLIBS = ["-ldl"]

# Top-level /proc/iomem names kexec-tools turns into memory ranges (compared
# case-insensitively); everything else (PCI windows, APIC, ...) it ignores.
KEXEC_MEMORY_TYPES = frozenset({
    "system ram", "reserved", "acpi tables", "acpi non-volatile storage",
    "persistent memory (legacy)", "persistent memory",
})

# x86-64 kernel virtual layout used for the synthetic /proc/kcore.
START_KERNEL_MAP = 0xFFFFFFFF80000000
PAGE_OFFSET = 0xFFFF888000000000


class OracleError(RuntimeError):
    """The oracle itself could not run (missing gcc/kexec, build failure...)."""


# --------------------------------------------------------------------------
# Machine description
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryRange:
    """One /proc/iomem resource: ``start``..``end`` inclusive.

    ``children`` are nested resources (e.g. "Crash kernel", "Kernel code"
    under "System RAM"); the kernel prints them indented by two spaces per
    nesting level, and kexec-tools' normal memory map ignores them.
    """

    start: int
    end: int
    type: str
    children: tuple[MemoryRange, ...] = ()

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"range end {self.end:#x} < start {self.start:#x}")
        for child in self.children:
            if child.start < self.start or child.end > self.end:
                raise ValueError(f"child {child} outside parent {self.type}")


@dataclass(frozen=True)
class MachineSpec:
    """The running system as kexec-tools should see it.

    ``memory`` is the top level of /proc/iomem (sorted by the writer).
    ``boot_params``: bytes of /sys/kernel/boot_params/data, or None to make it
    absent (kexec-tools then leaves the copied fields zero).
    ``crash_notes``: physical address of each CPU's crash note; CPU count seen
    through sysconf() is ``ncpus`` or, by default, ``max(1, len(crash_notes))``.
    ``vmcoreinfo``: (physical address, size) for /sys/kernel/vmcoreinfo.
    ``kcore``: bytes served as /proc/kcore (see ``make_kcore``).
    ``kallsyms``: text of /proc/kallsyms.
    ``firmware_memmap``: also publish the top level as /sys/firmware/memmap,
    which kexec-tools prefers over /proc/iomem.
    ``extra_files``: absolute path -> content for anything else under the
    shim's managed prefixes (e.g. "/sys/firmware/efi/systab").
    """

    memory: tuple[MemoryRange, ...]
    cmdline: str = "BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro"
    boot_params: bytes | None = None
    crash_notes: tuple[int, ...] = ()
    crash_notes_size: int | None = None
    vmcoreinfo: tuple[int, int] | None = None
    kcore: bytes | None = None
    kallsyms: str | None = None
    firmware_memmap: bool = False
    ncpus: int | None = None
    extra_files: dict[str, bytes] = field(default_factory=dict)

    # -- derived views -----------------------------------------------------

    def sorted_memory(self) -> list[MemoryRange]:
        return sorted(self.memory, key=lambda r: (r.start, r.end))

    def crash_kernel(self) -> MemoryRange | None:
        """The first nested "Crash kernel" resource, if any."""

        def walk(ranges: tuple[MemoryRange, ...]) -> MemoryRange | None:
            for r in ranges:
                if r.type == "Crash kernel":
                    return r
                found = walk(r.children)
                if found is not None:
                    return found
            return None

        return walk(tuple(self.sorted_memory()))

    def iomem_text(self) -> str:
        """/proc/iomem exactly as the kernel prints it.

        The kernel uses ``%0*llx-%0*llx : name`` with a width of 8 hex digits
        for iomem (wider values just grow) and two spaces of indent per level.
        """
        lines: list[str] = []

        def emit(r: MemoryRange, depth: int) -> None:
            lines.append(f"{'  ' * depth}{r.start:08x}-{r.end:08x} : {r.type}")
            for child in sorted(r.children, key=lambda c: c.start):
                emit(child, depth + 1)

        for r in self.sorted_memory():
            emit(r, 0)
        return "".join(line + "\n" for line in lines)

    def to_pykexec_machine_json(self) -> str:
        """pykexec's ``--machine FILE.json`` document for this machine.

        Top-level ranges of the types kexec-tools reads from /proc/iomem
        (``KEXEC_MEMORY_TYPES``; PCI windows etc. are dropped, as kexec-tools
        ignores them), hex strings, inclusive ends; ``crash_kernel`` is null
        when none is reserved.
        """
        crash = self.crash_kernel()
        doc = {
            "memory": [
                {"start": hex(r.start), "end": hex(r.end), "type": r.type}
                for r in self.sorted_memory()
                if r.type.lower() in KEXEC_MEMORY_TYPES
            ],
            "crash_kernel": (
                {"start": hex(crash.start), "end": hex(crash.end)} if crash else None
            ),
            "cmdline": self.cmdline,
        }
        return json.dumps(doc, indent=2) + "\n"

    # -- synthetic tree ----------------------------------------------------

    def write_tree(self, root: Path) -> None:
        """Populate ``root`` so that ``root + /proc/iomem`` etc. exist."""

        def put(path: str, data: bytes | str) -> None:
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data.encode() if isinstance(data, str) else data)

        put("/proc/iomem", self.iomem_text())
        put("/proc/cmdline", self.cmdline + "\n")
        # kexec-tools finds sysfs/debugfs through the mount table; with no
        # debugfs listed, a missing boot_params file stays missing.
        put("/proc/mounts", "sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0\n"
            "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n")
        if self.boot_params is not None:
            put("/sys/kernel/boot_params/data", self.boot_params)
        if self.kcore is not None:
            put("/proc/kcore", self.kcore)
        if self.kallsyms is not None:
            put("/proc/kallsyms", self.kallsyms)
        for cpu, addr in enumerate(self.crash_notes):
            put(f"/sys/devices/system/cpu/cpu{cpu}/crash_notes", f"{addr:x}\n")
            if self.crash_notes_size is not None:
                put(f"/sys/devices/system/cpu/cpu{cpu}/crash_notes_size",
                    f"{self.crash_notes_size}\n")
        if self.vmcoreinfo is not None:
            addr, size = self.vmcoreinfo
            put("/sys/kernel/vmcoreinfo", f"{addr:x} {size:x}\n")
        if self.firmware_memmap:
            for i, r in enumerate(self.sorted_memory()):
                put(f"/sys/firmware/memmap/{i}/start", f"{r.start:#x}\n")
                put(f"/sys/firmware/memmap/{i}/end", f"{r.end:#x}\n")
                put(f"/sys/firmware/memmap/{i}/type", f"{r.type}\n")
        for path, data in self.extra_files.items():
            if not path.startswith("/"):
                raise ValueError(f"extra_files path must be absolute: {path}")
            put(path, data)

    def effective_ncpus(self) -> int:
        return self.ncpus if self.ncpus is not None else max(1, len(self.crash_notes))


def make_kcore(
    ram: list[tuple[int, int]],
    *,
    text_vaddr: int = 0xFFFFFFFF81000000,
    text_size: int = 0x2000000,
    page_offset: int = PAGE_OFFSET,
) -> bytes:
    """A minimal /proc/kcore: ELF64 ET_CORE headers only.

    kexec-tools reads only the program headers of /proc/kcore (to find the
    kernel text mapping and PAGE_OFFSET), never the data, so the file need not
    be as large as the offsets claim. ``ram`` is (start, end_inclusive) pairs,
    mapped at ``page_offset + start`` like the kernel's direct map.
    """
    ehdr_size, phdr_size = 64, 56
    loads = [(text_vaddr, 0, text_size)] + [
        (page_offset + start, start, end - start + 1) for start, end in ram
    ]
    phnum = 1 + len(loads)
    data_offset = 0x1000  # where a real kcore's first segment would start
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, LE, v1, SysV
    out = bytearray(
        struct.pack("<16sHHIQQQIHHHHHH", ident, 4, 62, 1, 0, ehdr_size, 0, 0,
                    ehdr_size, phdr_size, phnum, 0, 0, 0)
    )
    # An empty PT_NOTE first, as the kernel emits its notes segment first.
    out += struct.pack("<IIQQQQQQ", 4, 0, ehdr_size + phnum * phdr_size, 0, 0, 0, 0, 0)
    for i, (vaddr, paddr, size) in enumerate(loads):
        out += struct.pack("<IIQQQQQQ", 1, 7, data_offset + i * 0x1000, vaddr, paddr,
                           size, size, 0x1000)
    return bytes(out)


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class OracleSegment:
    """One kexec_segment: ``data`` is the ``bufsz`` bytes kexec-tools passed."""

    mem: int
    memsz: int
    bufsz: int
    data: bytes

    @property
    def end(self) -> int:
        """Exclusive end of the destination range."""
        return self.mem + self.memsz

    def contains(self, addr: int) -> bool:
        return self.mem <= addr < self.end


@dataclass(frozen=True)
class OracleResult:
    """What kexec-tools tried to load.

    If kexec-tools never reached kexec_load (e.g. it rejected the input),
    ``load_attempted`` is False, ``entry``/``flags`` are 0 and ``segments`` is
    empty; ``stderr``/``returncode`` then tell why. A successful capture
    normally has a non-zero ``returncode`` too, because the shim fails the
    syscall with EPERM.
    """

    entry: int
    flags: int
    segments: list[OracleSegment]
    stderr: str
    returncode: int
    stdout: str = ""
    load_attempted: bool = False
    random: list[bytes] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def segment_at(self, addr: int) -> OracleSegment | None:
        """The segment whose destination range contains ``addr``."""
        for seg in self.segments:
            if seg.contains(addr):
                return seg
        return None

    def random_segments(self) -> list[int]:
        """Indices of segments containing bytes handed out by getrandom().

        These are the parts a comparison has to mask (or feed pykexec the same
        seed); note that the purgatory's SHA-256 digest covers them too.
        """
        hits: list[int] = []
        for i, seg in enumerate(self.segments):
            if any(r and r in seg.data for r in self.random):
                hits.append(i)
        return hits


# --------------------------------------------------------------------------
# Building and running
# --------------------------------------------------------------------------


def build_shim(cache_dir: Path | None = None) -> Path:
    """Compile kexec_intercept.c (once per source/flags hash) and return the .so.

    Raises OracleError with gcc's output if gcc is missing or the build fails.
    """
    cache = Path(os.environ.get("PYKEXEC_ORACLE_CACHE", cache_dir or DEFAULT_CACHE))
    gcc = shutil.which("gcc")
    if gcc is None:
        raise OracleError("gcc not found: the kexec-tools oracle needs gcc to build its shim "
                          "(apt-get install -y gcc)")
    source = SHIM_SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(CFLAGS + LDLIBS).encode()).hexdigest()[:16]
    target = cache / f"kexec_intercept-{key}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    # Build to a private name, then rename: concurrent test runs never see a
    # half-written object.
    fd, tmp_name = tempfile.mkstemp(prefix="kexec_intercept-", suffix=".so.tmp", dir=cache)
    os.close(fd)
    cmd = [gcc, *CFLAGS, "-o", tmp_name, str(SHIM_SOURCE), *LDLIBS]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(tmp_name)
        raise OracleError(f"building the shim failed: {' '.join(cmd)}\n{proc.stderr}")
    os.replace(tmp_name, target)
    return target


def _parse_int(value: str | int) -> int:
    return value if isinstance(value, int) else int(value, 0)


def _read_capture(out: Path) -> tuple[int, int, list[OracleSegment], bool]:
    """Parse the shim's manifest of the last kexec_load call, if any."""
    manifests = sorted(out.glob("kexec_load-*.json"),
                       key=lambda p: int(p.stem.split("-")[1]))
    if not manifests:
        return 0, 0, [], False
    doc = json.loads(manifests[-1].read_text())
    segments = []
    for seg in doc["segments"]:
        data = (out / seg["file"]).read_bytes()
        bufsz = _parse_int(seg["bufsz"])
        if not seg["buf_null"] and len(data) != bufsz:
            raise OracleError(f"segment file {seg['file']} has {len(data)} bytes, "
                              f"expected {bufsz}")
        segments.append(OracleSegment(mem=_parse_int(seg["mem"]),
                                      memsz=_parse_int(seg["memsz"]),
                                      bufsz=bufsz, data=data))
    return _parse_int(doc["entry"]), _parse_int(doc["flags"]), segments, True


def run_kexec_tools(
    args: list[str],
    machine: MachineSpec,
    *,
    kexec: str = "/usr/sbin/kexec",
    seed: int = 0,
    timeout: float = 120.0,
    keep_dir: Path | None = None,
    wrapper: list[str] | None = None,
) -> OracleResult:
    """Run kexec-tools on ``machine`` and capture what it would load.

    ``args`` are kexec's arguments (without the program name), e.g.
    ``["-c", "-l", vmlinuz, "--initrd=...", "--append=..."]``; relative paths
    resolve against the current directory. ``seed`` seeds the shim's
    deterministic getrandom(). If ``keep_dir`` is given, the synthetic tree
    and raw capture are written there (and kept) instead of a temporary dir.
    ``wrapper`` is a command prefix such as ``["strace", "-f", "-o", log]``;
    the shim is then preloaded into kexec only (via ``env``), never into the
    wrapper, whose own exec would otherwise be blocked by the shim.

    Raises OracleError if ``kexec`` or gcc is missing; a kexec-tools failure
    is *not* an error, it is reported through the result.
    """
    if not (os.path.isfile(kexec) and os.access(kexec, os.X_OK)):
        raise OracleError(f"{kexec} not found: install Debian's kexec-tools "
                          "(apt-get install -y kexec-tools)")
    shim = build_shim()

    def run_in(work: Path) -> OracleResult:
        root, out = work / "root", work / "out"
        root.mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        machine.write_tree(root)
        env = dict(os.environ)
        env.update({
            "PYKEXEC_ORACLE_ROOT": str(root),
            "PYKEXEC_ORACLE_OUT": str(out),
            "PYKEXEC_ORACLE_SEED": str(seed),
            "PYKEXEC_ORACLE_NCPUS": str(machine.effective_ncpus()),
            # Fixed locale: kexec's messages are compared as text.
            "LC_ALL": "C",
        })
        env.pop("PYKEXEC_ORACLE_MANAGED", None)
        if wrapper:
            env.pop("LD_PRELOAD", None)
            cmd = [*wrapper, "env", f"LD_PRELOAD={shim}", kexec, *args]
        else:
            env["LD_PRELOAD"] = str(shim)
            cmd = [kexec, *args]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                              errors="replace", timeout=timeout, stdin=subprocess.DEVNULL)
        entry, flags, segments, attempted = _read_capture(out)
        random: list[bytes] = []
        rand_file = out / "getrandom.json"
        if rand_file.exists():
            random = [bytes.fromhex(r["hex"]) for r in json.loads(rand_file.read_text())]
        events_file = out / "events.log"
        events = events_file.read_text().splitlines() if events_file.exists() else []
        return OracleResult(entry=entry, flags=flags, segments=segments,
                            stderr=proc.stderr, returncode=proc.returncode,
                            stdout=proc.stdout, load_attempted=attempted,
                            random=random, events=events)

    if keep_dir is not None:
        if keep_dir.exists():
            shutil.rmtree(keep_dir)
        return run_in(keep_dir)
    with tempfile.TemporaryDirectory(prefix="pykexec-oracle-") as tmp:
        return run_in(Path(tmp))
