"""Fuzz the UKI path: the PE section table reader and systemd-stub's unpacking (profiles,
addons, initrd, command line), then the plan. Seeds are UKIs built by objcopy (built once
per session), mutated mostly in their headers and section table."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from support.fuzzlib import fuzz_settings, outcome, raw_or_mutated
from support.synth_images import MACHINE_1G, make_bzimage
from support.uki_synth import build_uki

from pykexec import machine_file
from pykexec.errors import KexecError
from pykexec.images import pe_file, uki, uki_unpack
from pykexec.plan import LoadPlan
from pykexec.request import LoadRequest

MACHINE = machine_file.from_dict(MACHINE_1G, source="fuzz machine")


def _seeds() -> tuple[bytes, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        image = build_uki(Path(tmp) / "uki.efi", [
            (".osrel", b"PRETTY_NAME=x\n"), (".cmdline", b"a=1"), (".linux", make_bzimage(body=b"\x90" * 0x200)),
            (".initrd", b"I" * 8), (".uname", b"6.1"), (".profile", b"ID=a"), (".profile", b"ID=b"),
            (".cmdline", b"b=2")]).read_bytes()
        addon = build_uki(Path(tmp) / "a.addon.efi", [(".cmdline", b"x=1"), (".uname", b"6.1"),
                                                      (".ucode", b"U")]).read_bytes()
    return image, addon


UKI_SEED, ADDON_SEED = _seeds()


def _hot(data: bytes) -> tuple[int, ...]:
    """e_lfanew, the COFF header, and every section header's sizes and offsets."""
    lfanew = struct.unpack_from("<I", data, 0x3C)[0]
    count = struct.unpack_from("<H", data, lfanew + 6)[0]
    table = lfanew + 24 + struct.unpack_from("<H", data, lfanew + 20)[0]
    return (0x3C, lfanew + 6, lfanew + 20, lfanew + 24) + tuple(
        table + 40 * i + f for i in range(count) for f in (0, 8, 12, 16, 20))


@fuzz_settings(250)
@given(image=raw_or_mutated(UKI_SEED, _hot(UKI_SEED), max_size=0x800),
       addon=st.none() | raw_or_mutated(ADDON_SEED, _hot(ADDON_SEED), max_size=0x400),
       profile=st.none() | st.integers(0, 3), given_cmdline=st.none() | st.text(max_size=20),
       locked=st.none() | st.just("Secure Boot is on"), backend=st.sampled_from(("kexec_load", "kexec_file_load")))
def test_uki(image: bytes, addon: bytes | None, profile: int | None, given_cmdline: str | None,
             locked: str | None, backend: str) -> None:
    outcome(pe_file.parse, image)
    why = outcome(uki.probe, image)
    assert why is None or (isinstance(why, str) and "\n" not in why), repr(why)
    unpacked = outcome(uki_unpack.unpack, image, "fuzz.efi", profile=profile,
                       addons=[("a.addon.efi", addon)] if addon is not None else None,
                       user_cmdline=given_cmdline, locked=locked)
    if why is not None:
        assert isinstance(unpacked, KexecError), "unpacked a UKI its probe refused"
    result = outcome(uki.plan, LoadRequest("fuzz.efi", image, MACHINE, cmdline=given_cmdline or "",
                                           backend=backend))
    assert isinstance(result, (LoadPlan, KexecError))
