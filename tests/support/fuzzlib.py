"""Shared pieces of the fuzz suite: example budgets, the one property every parser must
have, and byte mutations that keep a valid input's structure recognisable.

The property (the rule pykexec lives by): a parser given anything returns a result or
raises a :class:`~pykexec.errors.KexecError` whose message is one non-empty line. Any
other exception is a bug, and so is running longer than :data:`EXAMPLE_SECONDS` or
growing the address space by more than :data:`EXAMPLE_MEMORY`.
"""

from __future__ import annotations

import os
import signal
import struct
import resource
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from pykexec.errors import KexecError

T = TypeVar("T")

#: PYKEXEC_FUZZ_EXAMPLES=N multiplies every test's budget by N (default 1: CI, < 60 s).
SCALE = max(1, int(os.environ.get("PYKEXEC_FUZZ_EXAMPLES", "1") or 1))
#: One example of one parser must finish within this (pykexec parses in milliseconds).
EXAMPLE_SECONDS = 5.0


def fuzz_settings(examples: int) -> settings:
    """``examples`` in CI (sized so the whole suite fits in a minute on 2 cores), more
    with PYKEXEC_FUZZ_EXAMPLES. No deadline: timing is checked by :func:`time_bound`,
    which is not fooled by the first example paying for imports."""
    return settings(max_examples=examples * SCALE, deadline=None, derandomize=SCALE == 1,
                    # capsys is function scoped on purpose: each example reads it empty first.
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])


class TooSlow(AssertionError):
    pass


@contextmanager
def time_bound(seconds: float = EXAMPLE_SECONDS) -> Iterator[None]:
    """Fail the example (rather than hang CI) if the body runs longer than ``seconds``."""
    def expire(signum: int, frame: object) -> None:
        raise TooSlow(f"example ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def check_error(err: KexecError) -> None:
    msg = str(err)
    assert msg.strip(), f"{type(err).__name__} with an empty message"
    assert "\n" not in msg and "\r" not in msg, f"{type(err).__name__} message is not one line: {msg!r}"


def outcome(fn: Callable[..., T], *args: object, **kwargs: object) -> T | KexecError:
    """``fn(*args)``'s result, or the KexecError it raised (checked to be one line).
    Any other exception propagates: hypothesis then shrinks and reports it."""
    with time_bound(), memory_bound():
        try:
            return fn(*args, **kwargs)
        except KexecError as err:
            check_error(err)
            return err


#: Address space an example may add: far above any sane parse of these small inputs,
#: far below what a length field read from the input could ask for.
EXAMPLE_MEMORY = 512 << 20


def _vm_size() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def memory_bound(limit: int = EXAMPLE_MEMORY) -> Iterator[None]:
    """Let the body grow the address space by at most ``limit`` bytes (RLIMIT_AS, so it
    costs nothing): an allocation sized by a hostile length field fails with
    MemoryError, which :func:`outcome` reports as a bug like any non-KexecError."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _vm_size() + limit
    for outer in (soft, hard):  # nested bounds only tighten
        if outer != resource.RLIM_INFINITY:
            cap = min(cap, outer)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# --- mutations ---------------------------------------------------------------------------

#: Values that break length and offset arithmetic: zero, one, sign bits, all ones.
INTERESTING = (0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x1000, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF,
               0x80000000, 0xFFFFFFFF, 0x100000000, 1 << 62, 1 << 63, (1 << 64) - 1)
_WIDTH = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}


@st.composite
def mutated(draw: st.DrawFn, seed: bytes, hot: tuple[int, ...] = (), max_mutations: int = 4) -> bytes:
    """``seed`` with a few mutations: integers written at header field offsets (``hot``)
    or anywhere, random bytes, truncation, extension. Few and targeted, so that most
    examples get past the first check and reach the deeper ones."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, max_mutations))):
        kind = draw(st.sampled_from(("int", "int", "int", "bytes", "truncate", "extend")))
        if kind == "truncate":
            data = data[:draw(st.integers(0, len(data)))]
            continue
        if kind == "extend":
            data += draw(st.binary(max_size=64))
            continue
        if not data:
            continue
        if hot and draw(st.booleans()):
            pos = draw(st.sampled_from(hot))
        else:
            pos = draw(st.integers(0, len(data) - 1))
        if kind == "bytes":
            blob = draw(st.binary(min_size=1, max_size=16))
            data[pos:pos + len(blob)] = blob
            continue
        width = draw(st.sampled_from((1, 2, 4, 8, 4, 8)))  # header fields are mostly u32/u64
        value = draw(st.sampled_from(INTERESTING) | st.sampled_from(INTERESTING) | st.integers(0, (1 << 64) - 1)
                     | st.just(len(data)) | st.integers(0, len(data) + 64))
        value &= (1 << (8 * width)) - 1
        if pos + width > len(data):
            data += bytes(pos + width - len(data))
        struct.pack_into(_WIDTH[width], data, pos, value)
    return bytes(data)


def raw_or_mutated(seed: bytes, hot: tuple[int, ...] = (), max_size: int = 4096) -> st.SearchStrategy[bytes]:
    """Mostly mutations of ``seed``; sometimes raw random bytes (with the seed's first
    bytes as a prefix half of those times, so the magic checks pass)."""
    prefix = seed[:8]
    return st.one_of(
        mutated(seed, hot),
        mutated(seed, hot),
        mutated(seed, hot),
        st.binary(max_size=max_size),
        st.binary(max_size=max_size).map(lambda b: prefix + b),
    )
