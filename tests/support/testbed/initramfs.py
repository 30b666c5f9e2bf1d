"""An initramfs image: cached layers concatenated, then a small per-guest layer holding
/init, the guest script and the guest's files."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path
from typing import BinaryIO, Mapping, Sequence

from support.testbed.cache import TestbedError
from support.testbed.cpio import CpioWriter, cpio_bytes
from support.testbed.guest_init import init_files

GuestFiles = Mapping[str, "Path | str | bytes"]


def write_initramfs(out: Path, segments: Sequence[Path], init_script_body: str, files: GuestFiles | None, *,
                    trace: bool, compress: bool) -> Path:
    """``segments`` (cached layers, in order), then a layer with /init running
    ``init_script_body`` and ``files``, written to ``out``; gzip'd as one stream if
    ``compress``."""
    def build(w: CpioWriter) -> None:
        for path, data, mode in init_files(init_script_body, trace=trace):
            w.file(path, data, mode)
        for guest, src in sorted((files or {}).items()):
            if isinstance(src, bytes):
                w.file(guest, src, 0o755 if src.startswith(b"#!") else 0o644)
            else:
                p = Path(src)
                if not p.exists():
                    raise TestbedError(f"guest file {guest}: host path {p} does not exist")
                w.host_path(guest, p)

    tail = cpio_bytes(build, compress=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as raw:
        f: BinaryIO = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) if compress else raw  # type: ignore[assignment]
        for seg in segments:
            with open(seg, "rb") as s:
                shutil.copyfileobj(s, f)
        f.write(tail)
        if compress:
            f.close()
    os.replace(tmp, out)
    return out
