"""The kernel log (printk buffer) of a dump, found through VMCOREINFO alone.

Three in-memory formats, chosen as vmcore-dmesg chooses them:

* ``SYMBOL(prb)`` -- the lockless ``printk_ringbuffer`` (5.10+): a descriptor
  ring (state + data block positions), an info array (timestamp, length,
  level, caller) and a text data ring;
* ``SYMBOL(log_first_idx)`` -- variable-length ``struct printk_log`` records
  in one byte buffer (3.5-5.9; named ``struct log`` before 3.11);
* ``SYMBOL(log_buf)`` only -- the legacy character ring holding
  ``<level>``-prefixed text (before 3.5).

:func:`read_log` returns structured :class:`Record`\\ s; :func:`format_log`
turns them into text.  Every count, index and length read from the dump is
checked before use, so a corrupt or hostile dump ends in a
:class:`~pykexec.vmcore.errors.VmcoreError`, never an endless loop or a huge
allocation.
"""

from __future__ import annotations

import struct
import time
from collections import namedtuple
from collections.abc import Iterable

from pykexec.vmcore.errors import VmcoreError

TYPE_CHECKING = False  # typing costs an import; this name is all type checkers need
if TYPE_CHECKING:
    from pykexec.vmcore.dump_memory import DumpMemory
    from pykexec.vmcore.elfcore import Buffer
    from pykexec.vmcore.vmcoreinfo import VmcoreInfo

LOCKLESS = "lockless"
STRUCTURED = "structured"
LEGACY = "legacy"

NO_LOG_SYMBOL = ("no SYMBOL(prb), SYMBOL(log_first_idx) or SYMBOL(log_buf) in VMCOREINFO: "
                 "not a Linux dump or VMCOREINFO missing")

#: The kernel caps log_buf_len at 2 GiB (LOG_BUF_LEN_MAX); more is corruption.
MAX_LOG_BUF_LEN = 1 << 31
#: Descriptors per byte of text ring is 1/32 (PRB_AVGBITS = 5): 2 GiB -> 2**26.
MAX_COUNT_BITS = 26
MAX_SIZE_BITS = 31

LEVEL_NAMES = ("emerg", "alert", "crit", "err", "warn", "notice", "info", "debug")
FACILITY_NAMES = ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news",
                  "uucp", "cron", "authpriv", "ftp", "res0", "res1", "res2", "res3",
                  "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7")

# Lockless descriptor state: the top two bits of state_var (64-bit kernels).
_DESC_FLAGS_SHIFT = 62
_DESC_ID_MASK = (1 << _DESC_FLAGS_SHIFT) - 1
_DESC_COMMITTED = 1
_DESC_FINALIZED = 2
_LONG = 8  # sizeof(long): each text block starts with its descriptor id
_FAILED_LPOS = 0x1


class Record(namedtuple("Record", "ts_nsec text level facility caller_id", defaults=(None, None, None))):
    """One log record.  ``ts_nsec`` is None for legacy lines without a
    timestamp; ``level``/``facility``/``caller_id`` are None when the format
    does not record them (caller_id bit 31 set = CPU number, else thread id)."""

    __slots__ = ()
    ts_nsec: int | None
    text: bytes
    level: int | None
    facility: int | None
    caller_id: int | None


class KernelLog(namedtuple("KernelLog", "format records raw lost", defaults=(None, ""))):
    """The records of one dump, oldest first.  ``raw`` is the legacy ring's text in order
    (what vmcore-dmesg prints for that format).  ``lost``: "" or what of it the dump lacks."""

    __slots__ = ()
    format: str
    records: list[Record]
    raw: bytes | None
    lost: str


def read_log(core: DumpMemory, *, lenient: bool = False) -> KernelLog:
    """Find and walk the kernel log of ``core`` (format dispatch as vmcore-dmesg).  ``lenient``
    (an incomplete dump): records on pages the dump lacks are skipped and counted in ``lost``."""
    info = core.require_vmcoreinfo()
    if info.has_symbol("prb"):
        return _read_lockless(core, info, lenient)
    if info.has_symbol("log_first_idx"):
        return _read_structured(core, info, lenient)
    if info.has_symbol("log_buf"):
        return _read_legacy(core, info, lenient)
    raise VmcoreError(NO_LOG_SYMBOL)


def _read_holes(core: DumpMemory, addr: int, size: int,
                lenient: bool) -> tuple[Buffer, list[tuple[int, int]]]:
    """``size`` bytes at ``addr`` and the pieces the dump lacks (:mod:`pykexec.vmcore.lenient`)."""
    if not lenient:
        return core.read(addr, size), []
    from pykexec.vmcore.lenient import read_with_holes

    return read_with_holes(core, addr, size)


def _hit(holes: list[tuple[int, int]], start: int, end: int) -> bool:  # [start, end) meets a hole
    return any(a < end and start < b for a, b in holes)


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #

def _field_struct(fields: dict[str, tuple[int, str]], limit: int,
                  what: str) -> tuple[struct.Struct, dict[str, int]]:
    """A struct reading the named ``(offset, code)`` fields in one call, and
    each name's index in its result.  The fields must not overlap and must
    end within ``limit`` (the record size)."""
    fmt, pos, index = "<", 0, {}
    for i, (name, (off, code)) in enumerate(sorted(fields.items(), key=lambda kv: kv[1][0])):
        if off < pos:
            raise VmcoreError(f"VMCOREINFO layout of {what} has overlapping fields")
        fmt += f"{off - pos}x{code}" if off > pos else code
        pos = off + struct.calcsize("<" + code)
        index[name] = i
    if pos > limit:
        raise VmcoreError(f"VMCOREINFO layout of {what}: fields end at {pos}, beyond its size {limit}")
    return struct.Struct(fmt), index


def _unpack(fmt: str, buf: Buffer, off: int, what: str) -> int:
    if off < 0 or off + struct.calcsize(fmt) > len(buf):
        raise VmcoreError(f"VMCOREINFO offset of {what} ({off}) is outside its structure")
    return int(struct.unpack_from(fmt, buf, off)[0])


def _level_byte_ok(level_off: int, next_field: int | None, limit: int) -> bool:
    """The facility/flags:5/level:3 bytes are not exported; trust the usual
    position (right after text_len or dict_len) only if it fits the layout."""
    return level_off + 1 <= (next_field if next_field is not None else limit)


# --------------------------------------------------------------------------- #
# 5.10+: lockless printk_ringbuffer
# --------------------------------------------------------------------------- #

def _read_lockless(core: DumpMemory, info: VmcoreInfo, lenient: bool = False) -> KernelLog:
    rb_size = info.size("printk_ringbuffer")
    if not 0 < rb_size <= 4096:
        raise VmcoreError(f"implausible SIZE(printk_ringbuffer)={rb_size}")
    prb = core.u64(info.symbol("prb"))
    rb = core.read(prb, rb_size)
    desc_ring = info.offset("printk_ringbuffer.desc_ring")
    text_ring = info.offset("printk_ringbuffer.text_data_ring")
    counter = info.offset("atomic_long_t.counter")

    def ring_field(fmt: str, base: int, name: str, extra: int = 0) -> int:
        return _unpack(fmt, rb, base + info.offset(name) + extra, name)

    count_bits = ring_field("<I", desc_ring, "prb_desc_ring.count_bits")
    descs_ptr = ring_field("<Q", desc_ring, "prb_desc_ring.descs")
    infos_ptr = ring_field("<Q", desc_ring, "prb_desc_ring.infos")
    head_id = ring_field("<Q", desc_ring, "prb_desc_ring.head_id", counter)
    tail_id = ring_field("<Q", desc_ring, "prb_desc_ring.tail_id", counter)
    size_bits = ring_field("<I", text_ring, "prb_data_ring.size_bits")
    data_ptr = ring_field("<Q", text_ring, "prb_data_ring.data")
    if count_bits > MAX_COUNT_BITS:
        raise VmcoreError(f"corrupt printk ring: count_bits={count_bits}")
    if size_bits > MAX_SIZE_BITS:
        raise VmcoreError(f"corrupt printk ring: data size_bits={size_bits}")
    count, size = 1 << count_bits, 1 << size_bits

    desc_size = info.size("prb_desc")
    info_size = info.size("printk_info")
    if not 0 < desc_size <= 256 or not 0 < info_size <= 4096:
        raise VmcoreError(f"implausible SIZE(prb_desc)={desc_size} or SIZE(printk_info)={info_size}")
    lpos = info.offset("prb_desc.text_blk_lpos")
    desc_fmt, d_ix = _field_struct({
        "sv": (info.offset("prb_desc.state_var") + counter, "Q"),
        "begin": (lpos + info.offset("prb_data_blk_lpos.begin"), "Q"),
        "next": (lpos + info.offset("prb_data_blk_lpos.next"), "Q")}, desc_size, "prb_desc")
    i_sv, i_begin, i_next = d_ix["sv"], d_ix["begin"], d_ix["next"]

    len_off = info.offset("printk_info.text_len")
    caller_off = info.offset("printk_info.caller_id") if "OFFSET(printk_info.caller_id)" in info else None
    # struct printk_info: u16 text_len; u8 facility; u8 flags:5, level:3; u32 caller_id
    has_level = _level_byte_ok(len_off + 3, caller_off, info_size)
    info_fields = {"ts": (info.offset("printk_info.ts_nsec"), "Q"), "len": (len_off, "H")}
    if has_level:
        info_fields.update(fac=(len_off + 2, "B"), lvl=(len_off + 3, "B"))
    if caller_off is not None:
        info_fields["caller"] = (caller_off, "I")
    info_fmt, i_ix = _field_struct(info_fields, info_size, "printk_info")
    i_ts, i_len = i_ix["ts"], i_ix["len"]
    i_fac, i_lvl, i_caller = i_ix.get("fac"), i_ix.get("lvl"), i_ix.get("caller")

    descs, desc_holes = _read_holes(core, descs_ptr, count * desc_size, lenient)
    infos, info_holes = _read_holes(core, infos_ptr, count * info_size, lenient)
    data, data_holes = _read_holes(core, data_ptr, size, lenient)
    holey = bool(desc_holes or info_holes or data_holes)
    lost = 0

    head_id &= _DESC_ID_MASK
    tail_id &= _DESC_ID_MASK
    n = ((head_id - tail_id) & _DESC_ID_MASK) + 1
    if n > count:
        raise VmcoreError(f"corrupt printk ring: {n} descriptors between tail and head, ring holds {count}")

    records: list[Record] = []
    append = records.append
    unpack_desc, unpack_info = desc_fmt.unpack_from, info_fmt.unpack_from
    mask = count - 1
    for k in range(n):
        rid = (tail_id + k) & _DESC_ID_MASK
        idx = rid & mask
        if holey and (_hit(desc_holes, idx * desc_size, (idx + 1) * desc_size)
                      or _hit(info_holes, idx * info_size, (idx + 1) * info_size)):
            lost += 1
            continue
        d = unpack_desc(descs, idx * desc_size)
        sv = d[i_sv]
        state = sv >> _DESC_FLAGS_SHIFT
        if (sv & _DESC_ID_MASK) != rid or (state != _DESC_COMMITTED and state != _DESC_FINALIZED):
            continue  # reserved (being written), reusable, or already overwritten
        v = unpack_info(infos, idx * info_size)
        text_len = v[i_len]
        record_level = (v[i_fac], v[i_lvl] >> 5) if i_fac is not None and i_lvl is not None else (None, None)
        begin, nxt = d[i_begin], d[i_next]
        if begin & nxt & 1:
            # Data-less record (both positions odd).  FAILED_LPOS is a reservation
            # that got no text space: the kernel's own readers skip it, while
            # vmcore-dmesg prints it as an empty line.  Anything else (NO_LPOS)
            # is a real empty message.
            if begin == _FAILED_LPOS and nxt == _FAILED_LPOS:
                continue
            text = b""
        else:
            begin, nxt = begin % size, nxt % size
            if begin > nxt:
                begin = 0  # a wrapping block is stored whole at the ring's start
            begin += _LONG  # skip the block's descriptor id
            text = bytes(data[begin:begin + min(text_len, nxt - begin)]) if nxt > begin else b""
            if holey and _hit(data_holes, begin - _LONG, begin + len(text)):
                lost += 1
                continue
        append(Record(v[i_ts], text, record_level[1], record_level[0],
                      v[i_caller] if i_caller is not None else None))
    return KernelLog(LOCKLESS, records, None, f"{lost} of {lost + len(records)} log records lost: their pages "
                     "are not in the dump" if lost else "")


# --------------------------------------------------------------------------- #
# 3.5-5.9: struct printk_log records
# --------------------------------------------------------------------------- #

def _read_structured(core: DumpMemory, info: VmcoreInfo, lenient: bool = False) -> KernelLog:
    name = "printk_log" if "SIZE(printk_log)" in info else "log"
    hdr_size = info.size(name)
    if not 12 <= hdr_size <= 256:
        raise VmcoreError(f"implausible SIZE({name})={hdr_size}")
    log_buf = core.u64(info.symbol("log_buf"))
    buf_len = core.u32(info.symbol("log_buf_len"))
    first_idx = core.u32(info.symbol("log_first_idx"))
    next_idx = core.u32(info.symbol("log_next_idx"))
    if not 0 < buf_len <= MAX_LOG_BUF_LEN:
        raise VmcoreError(f"corrupt printk log: log_buf_len={buf_len}")
    if first_idx > buf_len - hdr_size or next_idx > buf_len - hdr_size:
        raise VmcoreError(f"corrupt printk log: log_first_idx={first_idx} log_next_idx={next_idx} "
                          f"for a {buf_len}-byte buffer")
    ts_off = info.offset(f"{name}.ts_nsec")
    len_off = info.offset(f"{name}.len")
    text_len_off = info.offset(f"{name}.text_len")
    # u16 len, text_len, dict_len; u8 facility; u8 flags:5, level:3; u32 caller_id (5.1+)
    fac_off = (info.offset(f"{name}.dict_len") if f"OFFSET({name}.dict_len)" in info
               else text_len_off + 2) + 2
    has_level = _level_byte_ok(fac_off + 1, None, hdr_size)
    caller_off = fac_off + 2 if fac_off + 6 <= hdr_size else None
    fields = {"ts": (ts_off, "Q"), "len": (len_off, "H"), "text_len": (text_len_off, "H")}
    if has_level:
        fields.update(fac=(fac_off, "B"), lvl=(fac_off + 1, "B"))
    if caller_off is not None:
        fields["caller"] = (caller_off, "I")
    fmt, ix = _field_struct(fields, hdr_size, name)
    unpack = fmt.unpack_from
    i_ts, i_len, i_text_len = ix["ts"], ix["len"], ix["text_len"]
    i_fac, i_lvl, i_caller = ix.get("fac"), ix.get("lvl"), ix.get("caller")

    buf, holes = _read_holes(core, log_buf, buf_len, lenient)
    records: list[Record] = []
    idx, wrapped = first_idx, False
    lost, cut = 0, ""
    # Ends: each step advances by len >= hdr_size, and the walk wraps at most once.
    while idx != next_idx:
        if holes and _hit(holes, idx, idx + hdr_size):  # records are chained by their lengths:
            cut = f", and every record from offset {idx} of the {buf_len}-byte buffer on"  # none past it
            break
        if idx > buf_len - hdr_size:
            raise VmcoreError(f"corrupt printk log: record index {idx} beyond the {buf_len}-byte buffer")
        v = unpack(buf, idx)
        rec_len, text_len = v[i_len], v[i_text_len]
        if rec_len == 0:
            # End-of-buffer marker; vmcore-dmesg prints it as an empty "[    0.000000] " line.
            if wrapped:
                raise VmcoreError("corrupt printk log: wrapped around twice")
            wrapped, idx = True, 0
            continue
        if rec_len < hdr_size or idx + rec_len > buf_len:
            raise VmcoreError(f"corrupt printk log: record at {idx} has length {rec_len}")
        text_start = idx + hdr_size
        text = bytes(buf[text_start:text_start + min(text_len, rec_len - hdr_size)])
        if holes and _hit(holes, text_start, text_start + len(text)):
            lost += 1
        else:
            records.append(Record(v[i_ts], text,
                                  v[i_lvl] >> 5 if i_lvl is not None else None,
                                  v[i_fac] if i_fac is not None else None,
                                  v[i_caller] if i_caller is not None else None))
        prev, idx = idx, idx + rec_len
        if (wrapped or prev < next_idx) and prev < next_idx < idx:
            raise VmcoreError(f"corrupt printk log: record at {prev} runs past log_next_idx={next_idx}")
    return KernelLog(STRUCTURED, records, None, f"{lost} log records lost{cut}: their pages are not in the dump"
                     if lost or cut else "")


# --------------------------------------------------------------------------- #
# Before 3.5: the character ring
# --------------------------------------------------------------------------- #

def _read_legacy(core: DumpMemory, info: VmcoreInfo, lenient: bool = False) -> KernelLog:
    for sym in ("log_end", "log_buf_len"):
        if not info.has_symbol(sym):
            raise VmcoreError(f"no SYMBOL({sym}) in VMCOREINFO (legacy log_buf format)")
    log_buf = core.u64(info.symbol("log_buf"))
    log_end = core.u32(info.symbol("log_end"))
    buf_len = struct.unpack("<i", struct.pack("<I", core.u32(info.symbol("log_buf_len"))))[0]
    if not 0 < buf_len <= MAX_LOG_BUF_LEN:
        raise VmcoreError(f"corrupt printk log: log_buf_len={buf_len}")
    buf, holes = _read_holes(core, log_buf, buf_len, lenient)
    lost = ""
    if holes:
        from pykexec.vmcore.lenient import blank_holes

        lost = f"{sum(b - a for a, b in holes)} bytes of the {buf_len}-byte log lost: their pages are not in the dump"
        buf = blank_holes(buf, holes)
    if log_end < buf_len:
        raw = bytes(buf[:log_end])
    else:
        wrap = log_end % buf_len
        raw = bytes(buf[wrap:]) + bytes(buf[:wrap])
    if holes:
        raw = b"\n".join(line for line in raw.split(b"\n") if line) + b"\n"
    return KernelLog(LEGACY, _legacy_records(raw), raw, lost)


def _legacy_records(raw: bytes) -> list[Record]:
    """Split legacy text into lines: ``<N>`` prefix (level | facility << 3),
    then, with CONFIG_PRINTK_TIME, ``[sssss.uuuuuu] ``."""
    records = []
    for line in raw.split(b"\n"):
        if not line:
            continue
        level = facility = ts = None
        if line.startswith(b"<"):
            end = line.find(b">", 1, 6)
            if end > 1 and line[1:end].isdigit():
                prio = int(line[1:end])
                level, facility, line = prio & 7, prio >> 3, line[end + 1:]
        if line.startswith(b"["):
            end = line.find(b"]", 1, 32)
            sec, dot, usec = line[1:end].strip().partition(b".")
            if end > 0 and dot and sec.isdigit() and usec.isdigit():
                ts = int(sec) * 1_000_000_000 + int(usec.ljust(6, b"0")[:6]) * 1000
                line = line[end + 1:].removeprefix(b" ")
        records.append(Record(ts, line, level, facility))
    return records


# --------------------------------------------------------------------------- #
# Formatting
# --------------------------------------------------------------------------- #

# vmcore-dmesg keeps isprint() and isspace() bytes of the C locale and writes
# every other byte as \xNN (so bytes >= 0x80, i.e. UTF-8, are escaped too).
_KEEP = bytes(range(0x20, 0x7F)) + b"\t\n\v\f\r"
_ESCAPED = [bytes([b]) if b in _KEEP else b"\\x%02x" % b for b in range(256)]


def escape(text: bytes) -> bytes:
    """``text`` with the bytes vmcore-dmesg escapes written as ``\\xNN``."""
    if not text.translate(None, _KEEP):
        return text  # the common case: nothing to escape
    return b"".join([_ESCAPED[b] for b in text])


def parse_levels(spec: str) -> frozenset[int]:
    """``err,warn`` or ``3,4`` (as ``dmesg --level``) -> level numbers."""
    levels = set()
    for word in spec.split(","):
        word = word.strip().lower()
        if word.isdigit() and int(word) < 8:
            levels.add(int(word))
        elif word in LEVEL_NAMES:
            levels.add(LEVEL_NAMES.index(word))
        elif word in ("warning", "error", "panic"):  # syslog's older spellings
            levels.add({"warning": 4, "error": 3, "panic": 0}[word])
        else:
            raise VmcoreError(f"unknown log level {word!r} (use {','.join(LEVEL_NAMES)} or 0-7)")
    return frozenset(levels)


def boot_time(log: KernelLog, crashtime: int | None) -> float:
    """Wall-clock time of boot, estimated as CRASHTIME minus the last record's
    timestamp.  CRASHTIME has one-second resolution and the last record comes
    a little before the crash, so -T times are approximate (about +-1 s)."""
    if crashtime is None:
        raise VmcoreError("no CRASHTIME in VMCOREINFO: cannot show wall-clock times (-T)")
    last = next((r.ts_nsec for r in reversed(log.records) if r.ts_nsec is not None), None)
    if last is None:
        raise VmcoreError("the log has no timestamps: cannot show wall-clock times (-T)")
    return crashtime - last / 1e9


def _ctime(t: float) -> bytes:
    try:
        tm = time.localtime(t)
        return time.strftime(f"[%a %b {tm.tm_mday:2d} %H:%M:%S %Y] ", tm).encode()
    except (OverflowError, OSError, ValueError):  # a corrupt CRASHTIME or timestamp
        raise VmcoreError(f"wall-clock time {t:.0f} is out of range: CRASHTIME or the timestamps are "
                          "corrupt (-T)") from None


def _caller(caller_id: int) -> bytes:
    # As the kernel's console prints it (CONFIG_PRINTK_CALLER): [    T123] / [     C1].
    tag = f"C{caller_id & 0x7FFFFFFF}" if caller_id & 0x80000000 else f"T{caller_id}"
    return f"[{tag:>6}] ".encode()


def format_vmcore_dmesg(log: KernelLog) -> bytes:
    r"""What kexec-tools' vmcore-dmesg prints, byte for byte, with two lines
    left out that it prints but that are not log messages:

    * 3.5-5.9: the zeroed end-of-buffer header (``len == 0``) where the
      buffer wraps, which it prints as ``[    0.000000] ``;
    * 5.10+: data-less records whose reservation failed (``FAILED_LPOS``),
      which it prints as ``[<ts>] `` with no text; the kernel's own readers
      skip them.

    Timestamps are ``[%5lu.%06lu] ``; record text is kept raw (embedded
    newlines included) except that bytes other than printable ASCII and
    ``\t \n \v \f \r`` are written as ``\xNN`` (see :func:`escape`).
    The legacy format is printed as the raw ring text.
    """
    if log.format == LEGACY:
        assert log.raw is not None
        return log.raw
    out = []
    for r in log.records:
        ts = r.ts_nsec or 0
        out.append(b"[%5d.%06d] %s\n" % (ts // 1_000_000_000, ts % 1_000_000_000 // 1000, escape(r.text)))
    return b"".join(out)


def format_log(log: KernelLog, *, levels: Iterable[int] | None = None, decode: bool = False,
               boot: float | None = None, show_caller: bool = False) -> bytes:
    """Formatted text of ``log``.  Without options, identical to vmcore-dmesg.

    ``levels`` keeps only records of those levels; ``decode`` prefixes
    ``facility:level :`` as ``dmesg -x``; ``boot`` (see :func:`boot_time`)
    prints wall-clock times as ``dmesg -T``; ``show_caller`` adds the
    ``[T<tid>]``/``[C<cpu>]`` caller id where the kernel recorded one.
    """
    if levels is None and not decode and boot is None and not show_caller:
        return format_vmcore_dmesg(log)
    records: Iterable[Record] = log.records
    if levels is not None:
        wanted = frozenset(levels)
        if log.records and all(r.level is None for r in log.records):
            raise VmcoreError("this dump's log records carry no levels: --level cannot filter")
        records = [r for r in log.records if r.level in wanted]
    out = []
    for r in records:
        parts = []
        if decode:
            fac = FACILITY_NAMES[r.facility] if r.facility is not None and r.facility < 24 else "?"
            lvl = LEVEL_NAMES[r.level] if r.level is not None else "?"
            parts.append(f"{fac:<6}:{lvl:<6}: ".encode())
        if r.ts_nsec is not None:
            if boot is not None:
                parts.append(_ctime(boot + r.ts_nsec / 1e9))
            else:
                parts.append(b"[%5d.%06d] " % (r.ts_nsec // 1_000_000_000, r.ts_nsec % 1_000_000_000 // 1000))
        if show_caller and r.caller_id is not None:
            parts.append(_caller(r.caller_id))
        parts.append(escape(r.text))
        parts.append(b"\n")
        out.append(b"".join(parts))
    return b"".join(out)
