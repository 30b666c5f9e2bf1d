"""pykexec vmcore dmesg on synthetic dumps of all three printk formats.

kexec-tools' /usr/sbin/vmcore-dmesg is the oracle where present: our
default output must equal its output byte for byte, except for the two
kinds of non-message lines it prints (documented in
pykexec.vmcore.printk.format_vmcore_dmesg), which the tests remove from
its output explicitly.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.vmcore_synth import (
    DESC_RESERVED,
    Memory,
    Msg,
    base_vmcoreinfo,
    legacy_log,
    lockless_log,
    make_msgs,
    structured_log,
    write_core,
)

from pykexec.vmcore.cli import main
from pykexec.vmcore.elfcore import ElfCore
from pykexec.vmcore.printk import LEGACY, LOCKLESS, STRUCTURED, format_log, read_log

VMCORE_DMESG = "/usr/sbin/vmcore-dmesg"
ALL_BYTES = bytes(range(256))
SPECIAL = [Msg(b"tab\there", 10_000_000), Msg(b"nl\ninside\nrecord", 20_000_000),
           Msg(ALL_BYTES[:128], 30_000_000), Msg(ALL_BYTES[128:], 40_000_000), Msg(b"", 50_000_000),
           Msg("utf-8 é".encode(), 60_000_000)]
#: How vmcore-dmesg prints the 3.5-5.9 end-of-buffer marker (a zeroed header).
WRAP_MARKER = b"[    0.000000] \n"


def oracle(path: Path) -> bytes:
    if not os.path.exists(VMCORE_DMESG):
        if os.environ.get("CI"):
            pytest.fail("vmcore-dmesg (kexec-tools) missing in CI")
        pytest.skip("vmcore-dmesg (kexec-tools) not installed")
    res = subprocess.run([VMCORE_DMESG, str(path)], capture_output=True, check=True)
    return res.stdout


def ours(path: Path) -> bytes:
    with ElfCore(path) as c:
        return format_log(read_log(c))


def core(tmp_path: Path, info: list[str], mem: Memory, name: str = "vmcore") -> Path:
    return write_core(tmp_path / name, mem, "\n".join(base_vmcoreinfo() + info) + "\n")


def lockless_core(tmp_path: Path, msgs: list[Msg], **kw: object) -> Path:
    mem = Memory.standard()
    info, _ = lockless_log(mem, msgs, **kw)  # type: ignore[arg-type]
    return core(tmp_path, info, mem)


def structured_core(tmp_path: Path, msgs: list[Msg], **kw: object) -> tuple[Path, bool]:
    mem = Memory.standard()
    info, log = structured_log(mem, msgs, **kw)  # type: ignore[arg-type]
    return core(tmp_path, info, mem), log.wrapped


# --------------------------------------------------------------------------- #
# Byte-identical to vmcore-dmesg
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("kw", [
    dict(count_bits=4, size_bits=10),                     # no wrap
    dict(count_bits=5, size_bits=10),                     # data ring wraps many times
    dict(count_bits=5, size_bits=10, start_lpos=0),       # lpos from 0 instead of -size
    dict(count_bits=3, size_bits=12),                     # descriptor ring is the limit
    dict(count_bits=5, size_bits=10, last_state=DESC_RESERVED),  # newest record still reserved
])
def test_lockless_matches_vmcore_dmesg(tmp_path: Path, kw: dict[str, int]) -> None:
    msgs = make_msgs(60) + SPECIAL
    path = lockless_core(tmp_path, msgs, **kw)
    assert ours(path) == oracle(path)


def test_lockless_ring_wrap_cases_are_exercised(tmp_path: Path) -> None:
    """The wrap test above really has blocks stored at the ring start and a wrapped data ring."""
    mem = Memory.standard()
    msgs = make_msgs(60)
    _, ring = lockless_log(mem, msgs, count_bits=5, size_bits=10)
    wrapped = 0
    for rid, idx in ring.slots.items():
        begin, nxt = struct.unpack("<QQ", mem.read(ring.descs + idx * 24 + 8, 16))
        wrapped += begin % ring.size > nxt % ring.size
    assert wrapped >= 1
    assert ring.head_id - ring.tail_id + 1 < 60  # old records were dropped


def test_lockless_skips_reserved_and_failed_records(tmp_path: Path) -> None:
    msgs = make_msgs(12)
    path = lockless_core(tmp_path, msgs, count_bits=5, size_bits=11, dataless=[3, 7],
                         last_state=DESC_RESERVED)
    got = ours(path)
    lines = got.splitlines()
    assert len(lines) == 12 - 2 - 1
    assert b"message 003" not in got and b"message 011" not in got and b"message 010" in got
    # vmcore-dmesg prints each failed (data-less) record as "[ts] " with no text.
    tool = oracle(path)
    ts3, ts7 = (b"[%5d.%06d] \n" % divmod(msgs[i].ts_nsec // 1000, 1_000_000) for i in (3, 7))
    assert tool.replace(ts3, b"", 1).replace(ts7, b"", 1) == got


def test_escaping_rules_hard_coded(tmp_path: Path) -> None:
    got = ours(lockless_core(tmp_path, SPECIAL))
    lines = got.split(b"\n[")
    assert lines[0] == b"[    0.010000] tab\there"
    assert lines[1] == b"    0.020000] nl\ninside\nrecord"
    # Kept: printable ASCII and \t \n \v \f \r; everything else is \xNN (lowercase hex).
    assert lines[2].startswith(b"    0.030000] \\x00\\x01\\x02\\x03\\x04\\x05\\x06\\x07\\x08\t\n\x0b\x0c\r\\x0e")
    assert lines[2].endswith(b"}~\\x7f")
    assert lines[3] == b"    0.040000] " + b"".join(b"\\x%02x" % i for i in range(128, 256))
    assert lines[4] == b"    0.050000] "
    assert lines[5] == b"    0.060000] utf-8 \\xc3\\xa9\n"


@pytest.mark.parametrize("kw", [
    dict(buf_len=4096),                                   # no wrap
    dict(buf_len=1024),                                   # wraps
    dict(buf_len=1024, caller=False),                     # 16-byte header (no caller id)
    dict(buf_len=1024, old_names=True, caller=False),     # 3.5-3.10 "struct log" names
    dict(buf_len=1024, dicts=True),                       # dictionaries after the text
])
def test_structured_matches_vmcore_dmesg(tmp_path: Path, kw: dict[str, int]) -> None:
    path, wrapped = structured_core(tmp_path, make_msgs(60) + SPECIAL, **kw)
    tool = oracle(path)
    # vmcore-dmesg prints the zeroed end-of-buffer header as an empty line; we do not.
    assert tool.count(WRAP_MARKER) == (1 if wrapped else 0)
    assert wrapped == (kw["buf_len"] < 4096)
    assert ours(path) == tool.replace(WRAP_MARKER, b"", 1)


@pytest.mark.parametrize("n", [20, 200])
def test_legacy_matches_vmcore_dmesg(tmp_path: Path, n: int) -> None:
    text = b"".join(b"<%d>[%5d.%06d] legacy %d \x01\xff\n" % (i % 8, i, i * 3, i) for i in range(n))
    mem = Memory.standard()
    info, _ = legacy_log(mem, text, buf_len=1024)
    path = core(tmp_path, info, mem)
    got = ours(path)
    assert got == oracle(path)
    assert got == (text if len(text) <= 1024 else text[-1024:])


# --------------------------------------------------------------------------- #
# Records and options
# --------------------------------------------------------------------------- #

def test_records_carry_level_facility_caller(tmp_path: Path) -> None:
    msgs = make_msgs(8)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for fmt, path in ((LOCKLESS, lockless_core(tmp_path / "a", msgs, count_bits=4, size_bits=11)),
                      (STRUCTURED, structured_core(tmp_path / "b", msgs, buf_len=4096)[0])):
        with ElfCore(path) as c:
            log = read_log(c)
        assert log.format == fmt
        assert [(r.ts_nsec, r.text, r.level, r.facility, r.caller_id) for r in log.records] == \
            [(m.ts_nsec, m.text, m.level, m.facility, m.caller_id) for m in msgs]


def test_structured_without_caller_has_no_caller(tmp_path: Path) -> None:
    path, _ = structured_core(tmp_path, make_msgs(4), buf_len=4096, caller=False, old_names=True)
    with ElfCore(path) as c:
        log = read_log(c)
    assert [r.caller_id for r in log.records] == [None] * 4
    assert [r.level for r in log.records] == [0, 1, 2, 3]


def test_cli_default_and_options(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    msgs = [Msg(b"boot", 1_500_000_000, level=6, caller_id=1),
            Msg(b"oops", 2_250_000, level=3, facility=0, caller_id=0x80000002),
            Msg(b"user says hi", 3_000_000_000, level=4, facility=1, caller_id=4242)]
    path = lockless_core(tmp_path, msgs)

    def cli(*argv: str) -> tuple[int, bytes, bytes]:
        rc = main(["dmesg", *argv])
        out, err = capfdbinary.readouterr()
        return rc, out, err

    assert cli(str(path)) == (0, b"[    1.500000] boot\n[    0.002250] oops\n[    3.000000] user says hi\n", b"")
    assert cli("--level", "err,warn", str(path))[1] == b"[    0.002250] oops\n[    3.000000] user says hi\n"
    assert cli("-l3", str(path))[1] == b"[    0.002250] oops\n"
    assert cli("--level=6", "-x", str(path))[1] == b"kern  :info  : [    1.500000] boot\n"
    assert cli("-x", "--show-caller", str(path))[1].splitlines() == [
        b"kern  :info  : [    1.500000] [    T1] boot",
        b"kern  :err   : [    0.002250] [    C2] oops",
        b"user  :warn  : [    3.000000] [ T4242] user says hi"]
    # -T: boot = CRASHTIME (1700000000) - last timestamp (3 s); the last record is the crash time.
    rc, out, _ = cli("-T", str(path))
    assert rc == 0
    expect = [time.strftime("[%a %b %e %H:%M:%S %Y] ", time.localtime(t)).encode() + text
              for t, text in ((1700000000 - 1.5, b"boot"), (1700000000 - 3 + 0.00225, b"oops"),
                              (1700000000, b"user says hi"))]
    assert out.splitlines() == expect


def test_ctime_format(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    path = lockless_core(tmp_path, [Msg(b"a", 1_000_000_000), Msg(b"b", 3_000_000_000)])
    assert main(["dmesg", "-T", str(path)]) == 0
    out = capfdbinary.readouterr()[0].splitlines()
    assert all(re.fullmatch(rb"\[\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\] [ab]", line) for line in out)


def test_cli_help_and_usage_errors(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    assert main(["dmesg", "--help"]) == 0
    assert b"usage: pykexec vmcore dmesg" in capfdbinary.readouterr()[0]
    for argv in (["dmesg"], ["dmesg", "--bogus", "x"], ["dmesg", "a", "b"], ["frob"], ["dmesg", "-l"]):
        assert main(argv) == 2
        err = capfdbinary.readouterr()[1]
        assert err.startswith(b"pykexec: ") and err.count(b"\n") == 1
        assert err.endswith(b" (see pykexec vmcore --help)\n")
    path = lockless_core(tmp_path, make_msgs(3))
    assert main(["dmesg", "--level", "loud", str(path)]) == 1
    assert b"unknown log level 'loud'" in capfdbinary.readouterr()[1]


# --------------------------------------------------------------------------- #
# Errors: one line, exit 1
# --------------------------------------------------------------------------- #

def one_line_error(capfdbinary: pytest.CaptureFixture[bytes], path: Path | str, match: str) -> None:
    assert main(["dmesg", str(path)]) == 1
    out, err = capfdbinary.readouterr()
    assert out == b""
    assert err.startswith(b"pykexec: ") and err.count(b"\n") == 1, err
    assert re.search(match.encode(), err), err


def test_input_errors(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    one_line_error(capfdbinary, tmp_path / "nope", "no such file")
    one_line_error(capfdbinary, tmp_path, "is a directory")
    (tmp_path / "text").write_bytes(b"hello world, this is not an ELF file at all......" * 2)
    one_line_error(capfdbinary, tmp_path / "text", "neither an ELF core nor a kdump-compressed dump")
    mem = Memory.standard()
    p = write_core(tmp_path / "noinfo", mem, "", vmcoreinfo_note=False)
    one_line_error(capfdbinary, p, "no VMCOREINFO note")
    p = write_core(tmp_path / "nosym", mem, "OSRELEASE=6.1\nPAGESIZE=4096\n")
    one_line_error(capfdbinary, p, r"no SYMBOL\(prb\), SYMBOL\(log_first_idx\) or SYMBOL\(log_buf\) in VMCOREINFO")
    p = write_core(tmp_path / "badsym", mem, "SYMBOL(prb)=1234\n" + "\n".join(
        ln for ln in lockless_log(Memory.standard(), [])[0] if not ln.startswith("SYMBOL")))
    one_line_error(capfdbinary, p, "no PT_LOAD covers virtual address 0x1234")


def _lockless_mutated(tmp_path: Path, mutate) -> Path:  # type: ignore[no-untyped-def]
    mem = Memory.standard()
    info, ring = lockless_log(mem, make_msgs(40), count_bits=4, size_bits=10)
    extra = mutate(mem, ring)
    return core(tmp_path, info + (extra or []), mem, name="hostile")


@pytest.mark.parametrize("mutate,match", [
    (lambda m, r: m.pack(r.prb, "I", 60), "count_bits=60"),
    (lambda m, r: m.pack(r.prb + 48, "I", 63), "size_bits=63"),
    (lambda m, r: m.pack(r.prb + 24, "Q", (r.tail_id + 1000) & ((1 << 62) - 1)), "descriptors between tail and head"),
    (lambda m, r: m.pack(r.prb + 8, "Q", 0xFFFF999900000000), "no PT_LOAD covers"),
    (lambda m, r: m.pack(r.prb + 56, "Q", 0xFFFF888004000000 + (1 << 20) - 16), "no PT_LOAD covers"),
    (lambda m, r: m.pack(r.prb_ptr, "Q", 0), "no PT_LOAD covers virtual address 0x0"),
])
def test_hostile_lockless(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes], mutate, match) -> None:  # type: ignore[no-untyped-def]
    one_line_error(capfdbinary, _lockless_mutated(tmp_path, mutate), match)


def test_hostile_lockless_garbage_descriptors_are_skipped(tmp_path: Path) -> None:
    """Random descriptor contents: records are skipped or truncated, never read out of bounds."""
    import random

    rnd = random.Random(1)

    def scramble(m: Memory, r: object) -> None:
        for i in range(r.count * 24 // 8):  # type: ignore[attr-defined]
            m.pack(r.descs + i * 8, "Q", rnd.getrandbits(64))  # type: ignore[attr-defined]
        for i in range(r.count):  # type: ignore[attr-defined]
            m.pack(r.infos + i * 88 + 16, "H", rnd.getrandbits(16))  # type: ignore[attr-defined]
    path = _lockless_mutated(tmp_path, scramble)
    with ElfCore(path) as c:
        log = read_log(c)
    assert all(len(r.text) <= 1024 for r in log.records)


def _structured_mutated(tmp_path: Path, mutate) -> Path:  # type: ignore[no-untyped-def]
    mem = Memory.standard()
    info, log = structured_log(mem, make_msgs(40), buf_len=1024)
    mutate(mem, log)
    return core(tmp_path, info, mem, name="hostile")


@pytest.mark.parametrize("mutate,match", [
    (lambda m, s: m.pack(s.len_sym, "I", 0xFFFFFFF0), "log_buf_len=4294967280"),
    (lambda m, s: m.pack(s.first_idx_sym, "I", 5000), "log_first_idx=5000"),
    # Every header zero: the walk wraps twice instead of looping forever.
    (lambda m, s: m.write(s.log_buf, bytes(s.buf_len)), "wrapped around twice"),
    (lambda m, s: m.pack(s.log_buf + struct.unpack("<I", m.read(s.first_idx_sym, 4))[0] + 8, "H", 3),
     "has length 3"),
    (lambda m, s: m.pack(s.log_buf + struct.unpack("<I", m.read(s.first_idx_sym, 4))[0] + 8, "H", 0xFFF8),
     "has length 65528"),
])
def test_hostile_structured(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes], mutate, match) -> None:  # type: ignore[no-untyped-def]
    one_line_error(capfdbinary, _structured_mutated(tmp_path, mutate), match)


def test_hostile_legacy(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    mem = Memory.standard()
    info, _ = legacy_log(mem, b"<6>hello\n", buf_len=256)
    len_sym = int(info[2].split("=")[1], 16)
    mem.pack(len_sym, "i", -5)
    one_line_error(capfdbinary, core(tmp_path, info, mem), "log_buf_len=-5")
    mem.pack(len_sym, "i", 0x7FFFFFFF)  # plausible, but far more than the dump holds
    one_line_error(capfdbinary, core(tmp_path, info, mem), "no PT_LOAD covers|refusing")
    one_line_error(capfdbinary, core(tmp_path, [ln for ln in info if "log_end" not in ln], mem),
                   r"no SYMBOL\(log_end\)")


def test_truncated_dump(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    path = lockless_core(tmp_path, make_msgs(10))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - (1 << 20) + 0x40])  # keep only 64 bytes of the ring segment
    assert main(["dmesg", str(path)]) == 1
    out, err = capfdbinary.readouterr()
    (line,) = err.decode().splitlines()  # one line: why it is incomplete, then why nothing can be read
    assert out == b"" and line.startswith(
        f"pykexec: DUMP INCOMPLETE: the file ends at byte {len(data) - (1 << 20) + 0x40}, inside PT_LOAD 2 of 2 "
        "(1.0 of 1.1 MiB of memory missing, in 1 of 2 PT_LOADs): "
        f"{path}: truncated: address 0xffff888004000040"), line


def test_python_m_entry_point(tmp_path: Path) -> None:
    path = lockless_core(tmp_path, make_msgs(5))
    res = subprocess.run([sys.executable, "-m", "pykexec.vmcore.cli", "dmesg", str(path)],
                         capture_output=True, check=True)
    assert res.stdout == ours(path)
