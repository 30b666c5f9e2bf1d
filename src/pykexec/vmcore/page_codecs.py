"""The page codecs of kdump-compressed dumps: each page compressed on its own, with
the codec its ``page_desc.flags`` names (one of :data:`pykexec.layouts.kdump.COMPRESSION_FLAGS`).

========  ==========================================================================
zlib      the standard library's, level 1 (makedumpfile ``-c``: ``compress2``)
lzo       LZO1X without a header (makedumpfile ``-l``: ``lzo1x_1_compress``, read
          with ``lzo1x_decompress_safe``), by lzallright: LZ👌's compressor, which
          searches like ``lzo1x_999`` (smaller pages, several times slower than
          ``lzo1x_1``), in the same format
snappy    snappy's raw format, not its framing format (makedumpfile ``-p``:
          ``snappy_compress`` / ``snappy_uncompress``), by cramjam
zstd      one frame per page, zstandard, level 1 (makedumpfile ``-z``)
========  ==========================================================================

The libraries are imported on first use: ``vmcore dmesg`` of a zstd dump loads
neither lzo's nor snappy's, and the crash initramfs holds only the configured one's
(:data:`CODEC_MODULES`).
"""

from __future__ import annotations

import os
import zlib

from pykexec.layouts import kdump as L
from pykexec.vmcore.errors import VmcoreError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import ModuleType

#: The module each codec needs beyond the standard library.
CODEC_MODULES = {"zstd": "zstandard", "lzo": "lzallright", "snappy": "cramjam"}
#: Pages below this many in a batch are compressed in the calling thread.
_SPLIT_PAGES = 64


def codec_module(kind: str, advice: str = "") -> ModuleType:
    """The library of codec ``kind``; a module that does not load is named, with why
    (and ``advice``)."""
    try:
        if kind == "zstd":
            import zstandard

            return zstandard
        if kind == "lzo":
            import lzallright

            return lzallright
        import cramjam

        return cramjam
    except ImportError as err:
        # Name the real cause: an installed module can fail to load (a missing library).
        raise VmcoreError(f"{kind} compression needs the {CODEC_MODULES[kind]} module, "
                          f"which does not load ({err}){advice}") from None


# -- reading -------------------------------------------------------------------------------

def decompressor(flags: int) -> Callable[[bytes, int], bytes]:
    """The function that inflates a page stored with ``page_desc.flags`` to (at most)
    its ``n`` bytes; it raises what its library raises on bad data."""
    if flags & L.DUMP_DH_COMPRESSED_ZLIB:
        return lambda data, n: zlib.decompress(data)
    if flags & L.DUMP_DH_COMPRESSED_ZSTD:
        dctx = codec_module("zstd").ZstdDecompressor()
        return lambda data, n: dctx.decompress(data, max_output_size=n)
    if flags & L.DUMP_DH_COMPRESSED_LZO:
        lzo = codec_module("lzo").LZOCompressor
        return lambda data, n: lzo.decompress(data, output_size_hint=n)
    if flags & L.DUMP_DH_COMPRESSED_SNAPPY:
        snappy = codec_module("snappy").snappy

        def snappy_page(data: bytes, n: int) -> bytes:
            # Into a buffer of the page's size: a corrupt length prefix cannot ask for more.
            out = bytearray(n)
            return bytes(out[:snappy.decompress_raw_into(data, out)])
        return snappy_page
    raise VmcoreError(f"unknown page compression flags {flags:#x}")


# -- writing -------------------------------------------------------------------------------

def _snappy_pages(snappy: ModuleType) -> Callable[[list[memoryview]], list[memoryview]]:
    """Pages compressed into slots of one buffer (no object per page but a view)."""
    def compress(pages: list[memoryview]) -> list[memoryview]:
        slot = snappy.compress_raw_max_len(pages[0]) if pages else 0
        out = memoryview(bytearray(slot * len(pages)))
        slots = [out[i:i + slot] for i in range(0, len(out), slot)]
        return [s[:n] for s, n in zip(slots, map(snappy.compress_raw_into, pages, slots))]
    return compress


class PageCompressor:
    """Compress the pages of a batch, each page on its own (the format's unit), on
    ``threads`` CPUs; results are bytes-like, in page order.

    zstd: one ``multi_compress_to_buffer`` call per batch, which splits the pages
    over C threads with a context each; no Python runs per page.  zlib and lzo
    release the GIL while they compress a page: the batch is cut into one piece per
    thread.  snappy stays in the calling thread: a page takes it a few
    microseconds, about what the Python around each call costs under the GIL, so
    threads made it slower.
    """

    def __init__(self, kind: str, threads: int, level: int = 1) -> None:
        self.kind = kind
        self.threads = max(1, threads)
        self.level = level
        self._executor = None
        self._pages: Callable[[list[memoryview]], Sequence[object]] | None = None
        if kind == "zlib":
            self._pages = lambda pages: [zlib.compress(p, level) for p in pages]
        elif kind in CODEC_MODULES:
            library = codec_module(kind, "; use --compress zlib")
            if kind == "zstd":
                # Telling zstd the input is one page shrinks its tables: 4 KiB frames
                # compress about 1.5x faster at the same ratio.
                params = library.ZstdCompressionParameters.from_level(
                    level, source_size=4096, write_checksum=0, write_content_size=1)
                self._cctx = library.ZstdCompressor(compression_params=params)
            elif kind == "lzo":
                # A compressor (its dictionary) may only be used by the thread that made it.
                lzo = library.LZOCompressor
                self._pages = lambda pages: list(map(lzo().compress, pages))
            else:
                self._pages = _snappy_pages(library.snappy)
                self.threads = 1
        if self._pages is not None and self.threads > 1:
            # Named by its module: concurrent.futures finds it on first use, which the
            # crash initramfs's import closure would not see.
            from concurrent.futures.thread import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(self.threads)

    def compress(self, buf: bytearray, offsets: list[int], page: int) -> Sequence[object] | None:
        """The pages of ``buf`` at ``offsets``, compressed; None for ``none``."""
        view = memoryview(buf)
        if self.kind == "zstd":
            if not offsets:
                return []
            # A list of page views: zstandard spreads a list over its threads (one
            # BufferWithSegments would go to a single thread).
            return self._cctx.multi_compress_to_buffer(
                [view[off:off + page] for off in offsets], threads=self.threads)
        if self._pages is None:
            return None
        pages = [view[off:off + page] for off in offsets]
        if self._executor is None or len(pages) < _SPLIT_PAGES:
            return self._pages(pages)
        step = -(-len(pages) // self.threads)
        parts = self._executor.map(self._pages, [pages[i:i + step] for i in range(0, len(pages), step)])
        return [c for part in parts for c in part]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()


def default_threads() -> int:
    """CPUs this process may run on (a crash kernel usually has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
