"""Every page codec on the same pages, where a save runs: the first N (default 8192)
non-zero pages that dump level 31 keeps of /proc/vmcore (or of ``$CKCODEC_SRC``), each
compressed on its own as a kdump-compressed file stores it.  One JSON line per codec and
setting: seconds, bytes out (a page that does not shrink counted as stored raw), and
microseconds per page.  benchmarks/crash_kernel_save.py --codecs runs it in the crash
kernel; on the host:

    CKCODEC_SRC=.cache/testbed/vmcores/vmcore-....elf .venv/bin/python benchmarks/crash_kernel_codecs.py
"""
import json
import os
import sys
import time
import zlib

from pykexec.vmcore.open import open_elf
from pykexec.vmcore.save import ram_runs
from pykexec.vmcore.pfn_runs import merge, subtract
from pykexec.vmcore.paging import PageTables
from pykexec.vmcore.filtering import excluded_pages

LIMIT = int(sys.argv[1]) if len(sys.argv) > 1 else 8192
TAG = "PYKEXEC-CKCODEC"
PAGE = 4096
with open_elf(os.environ.get("CKCODEC_SRC", "/proc/vmcore")) as core:
    info = core.require_vmcoreinfo()
    runs = ram_runs(core.loads, PAGE)
    ram = merge([(r.pfn, r.end) for r in runs])
    tables = PageTables(lambda a, n: core.read(a, n, physical=True), info)
    kept = subtract(ram, excluded_pages(info, tables, ram, PAGE, 31).ranges)
    buf = bytearray(LIMIT * PAGE)
    view = memoryview(buf)
    n = 0
    zero = bytes(PAGE)
    ri = 0
    for s, e in kept:
        for pfn in range(s, e):
            while runs[ri].end <= pfn:
                ri += 1
            core.readinto(view[n * PAGE:(n + 1) * PAGE], runs[ri].base + pfn * PAGE)
            if not buf.startswith(zero, n * PAGE):
                n += 1
            if n == LIMIT:
                break
        if n == LIMIT:
            break
pages = [view[i * PAGE:(i + 1) * PAGE] for i in range(n)]
print(TAG, json.dumps({"name": "pages", "n": n, "kept": sum(e - s for s, e in kept)}), flush=True)


def run(name, fn):
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    size = sum(min(len(c), PAGE) for c in out)
    print(TAG, json.dumps({"name": name, "seconds": round(dt, 4), "bytes": size, "us_page": dt / n * 1e6}), flush=True)


import zstandard as zstd
for level in (1, -1, -2, -3, -5, -10):
    params = zstd.ZstdCompressionParameters.from_level(level, source_size=4096, write_checksum=0,
                                                      write_content_size=1)
    cctx = zstd.ZstdCompressor(compression_params=params)
    run(f"zstd {level} multi", lambda: cctx.multi_compress_to_buffer(pages, threads=1))
    run(f"zstd {level} loop", lambda: [cctx.compress(p) for p in pages])
for hl in (8, 10, 12):
    for level in (1, -1):
        params = zstd.ZstdCompressionParameters.from_level(level, source_size=4096, write_checksum=0,
                                                          write_content_size=1, hash_log=hl)
        cctx = zstd.ZstdCompressor(compression_params=params)
        run(f"zstd {level} hash_log {hl}", lambda: cctx.multi_compress_to_buffer(pages, threads=1))
run("zlib 1", lambda: [zlib.compress(p, 1) for p in pages])
try:
    import lzallright
    c = lzallright.LZOCompressor()
    run("lzallright", lambda: [c.compress(p) for p in pages])
except ImportError as e:
    print(TAG, json.dumps({"name": "lzallright", "error": str(e)}))
try:
    import cramjam
    run("snappy raw", lambda: [cramjam.snappy.compress_raw(p) for p in pages])
    run("lz4 block (no kdump format)", lambda: [cramjam.lz4.compress_block(p, store_size=False) for p in pages])
except ImportError as e:
    print(TAG, json.dumps({"name": "cramjam", "error": str(e)}))
run("memcpy", lambda: [bytes(p) for p in pages])
