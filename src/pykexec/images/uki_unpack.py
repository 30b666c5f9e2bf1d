"""What systemd-stub hands the kernel from a Unified Kernel Image, as it unpacks it at
boot (systemd's src/boot/stub.c and pe.c), so that kexec starts what the firmware
would have started:

* sections: the base ones (before the first ``.profile``), overridden by those of the
  chosen profile (``.profile`` sections each open one; profile 0 is the default and is
  implied when the image has none); ``.linux`` is required;
* kernel: ``.linux`` (a bzImage: the bzImage64 loader or kexec_file_load takes it);
* initrd: ucode addons (last first), ``.ucode``, the user's ``--initrd`` (the stub's
  "previous initrd", one a boot loader registered), ``.initrd``, then the stub's
  generated ones that a UKI carries (``.pcrsig``, ``.pcrpkey``, ``.osrel``, ``.profile``
  as ``/.extra/...`` cpio archives), then initrd addons; each padded to 4 bytes;
* command line: the user's, if given, else ``.cmdline``; under Secure Boot the stub
  drops a given one when the UKI has a ``.cmdline`` (we also do under lockdown); addon
  ``.cmdline``\\ s are appended after it.
"""

from __future__ import annotations

import hashlib
from collections import namedtuple

from pykexec.errors import ImageFormatError, UsageError
from pykexec.images.pe_file import PeFile, Section, parse
from pykexec.layouts import cpio

#: The sections systemd-stub looks up (its unified_sections), in its order.
UNIFIED_SECTIONS = (".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname", ".sbat",
                    ".pcrsig", ".pcrpkey", ".profile", ".dtbauto", ".hwids", ".efifw")
#: Sections the stub wraps into /.extra/NAME cpio archives, in its initrd order.
EXTRA_FILES = ((".pcrsig", "tpm2-pcr-signature.json"), (".pcrpkey", "tpm2-pcr-public-key.pem"),
               (".osrel", "os-release"), (".profile", "profile"))
ADDON_SECTIONS = (".cmdline", ".initrd", ".ucode", ".dtb", ".dtbauto")


class Part(namedtuple("Part", "name origin data")):
    """A piece of what is loaded: a section (``name``) and where it came from
    (``"base"``, ``"profile N"``, an addon's path, or a file the user gave)."""

    __slots__ = ()
    name: str
    origin: str
    data: bytes

    def doc(self) -> dict[str, object]:
        return {"section": self.name, "from": self.origin, "size": len(self.data),
                "sha256": hashlib.sha256(self.data).hexdigest()}


class Unpacked(namedtuple("Unpacked", "kernel initrd cmdline initrd_parts kernel_part info notes warnings")):
    """What systemd-stub would hand the kernel: ``kernel`` (``.linux``), ``initrd`` (the
    parts concatenated, or None), ``cmdline``; ``info`` describes it for plans."""

    __slots__ = ()
    kernel: bytes
    initrd: bytes | None
    cmdline: str
    initrd_parts: list[Part]
    kernel_part: Part
    info: dict[str, object]
    notes: list[str]
    warnings: list[str]


def profiles(pe: PeFile) -> list[list[Section]]:
    """The section groups: the base (before the first ``.profile``), then one per profile,
    each starting with its ``.profile``."""
    groups: list[list[Section]] = [[]]
    for s in pe.sections:
        if s.name == ".profile":
            groups.append([])
        groups[-1].append(s)
    return groups


def select_sections(pe: PeFile, profile: int | None, what: str) -> tuple[dict[str, tuple[Section, str]], int]:
    """The unified sections for ``profile`` (default 0), each with its origin; and the
    number of profiles. Within a group the first section of a name wins, as in pe.c."""
    groups = profiles(pe)
    count = len(groups) - 1
    chosen = 0 if profile is None else profile
    if chosen >= max(count, 1):
        have = f"profiles 0-{count - 1}" if count else "no .profile sections (only profile 0, implied)"
        raise UsageError(f"{what}: no UKI profile {chosen}: it has {have}")
    found: dict[str, tuple[Section, str]] = {}
    for s in groups[0]:
        if s.name in UNIFIED_SECTIONS and s.name not in found:
            found[s.name] = (s, "base")
    if count:
        overrides: dict[str, tuple[Section, str]] = {}
        for s in groups[chosen + 1]:
            if s.name in UNIFIED_SECTIONS and s.name not in overrides:
                overrides[s.name] = (s, f"profile {chosen}")
        found.update(overrides)
    if ".linux" not in found:
        raise ImageFormatError(f"{what}: the UKI has no .linux section (for profile {chosen})")
    return found, count


def section_text(data: bytes) -> str:
    """A text section as systemd-stub reads it: up to the first NUL."""
    return data.split(b"\0", 1)[0].decode("utf-8", "replace")


def mangle_cmdline(text: str) -> str:
    """systemd-stub's clean-up of a command line: control characters (newlines from
    ``echo > cmdline``) become spaces, trailing spaces go."""
    return "".join(" " if ord(c) < 0x20 else c for c in text).rstrip(" ")


def os_release_field(text: str, key: str) -> str | None:
    """One os-release(5) field, its shell quoting removed."""
    for line in text.splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name == key:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            return value.replace('\\"', '"').replace("\\\\", "\\")
    return None


def extra_cpio(filename: str, data: bytes) -> bytes:
    """A cpio archive with ``.extra/FILENAME`` (read-only), as the stub passes its
    generated metadata to the initrd."""
    out = []
    for ino, (name, mode, body) in enumerate(((".extra", 0o40555, b""), (f".extra/{filename}", 0o100444, data)), 1):
        header = cpio.NewcHeader(ino, mode, 0, 0, 2 if mode & 0o40000 else 1, 0, len(body), 0, 0, 0, 0,
                                 len(name) + 1, 0)
        out.append(cpio.pack_entry(header, name, body))
    out.append(cpio.pack_entry(cpio.NewcHeader(0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(cpio.TRAILER) + 1, 0),
                               cpio.TRAILER))
    return b"".join(out)


def combine(parts: list[Part]) -> bytes | None:
    """The initrds one after another, each zero-padded to 4 bytes (the kernel unpacks
    concatenated archives; the stub pads every one)."""
    if not parts:
        return None
    return b"".join(p.data + bytes(-len(p.data) % 4) for p in parts)


class Addon(namedtuple("Addon", "path cmdline initrd ucode")):
    __slots__ = ()
    path: str
    cmdline: str
    initrd: bytes | None
    ucode: bytes | None


def read_addon(path: str, data: bytes, uname: str | None) -> Addon:
    """A type-1 addon (``*.addon.efi``): a PE with some of .cmdline/.initrd/.ucode/.dtb
    and no .linux; its .uname, if any, must match the UKI's. systemd-stub skips a bad
    addon with a message; one given on the command line is an error instead."""
    try:
        pe = parse(data)
    except ImageFormatError as err:
        raise ImageFormatError(f"addon {path}: {err}") from None
    found: dict[str, Section] = {}
    for s in pe.sections:  # addons have no profiles: the first of each name wins
        found.setdefault(s.name, s)
    if ".linux" in found:
        raise ImageFormatError(f"addon {path} is a UKI (it has a .linux section), not an addon")
    if not any(name in found for name in ADDON_SECTIONS):
        raise ImageFormatError(f"addon {path} has none of the sections an addon carries "
                               f"({', '.join(ADDON_SECTIONS)})")
    if uname is not None and ".uname" in found:
        theirs = section_text(pe.section_data(found[".uname"]))
        if theirs != uname:
            raise ImageFormatError(f"addon {path} is for kernel {theirs!r}, the UKI's .uname is {uname!r}")

    def get(name: str) -> bytes | None:
        return pe.section_data(found[name]) if name in found else None

    cmd = get(".cmdline")
    return Addon(path, mangle_cmdline(section_text(cmd)) if cmd is not None else "", get(".initrd"), get(".ucode"))


def unpack(data: bytes, what: str, *, profile: int | None = None, addons: list[tuple[str, bytes]] | None = None,
           user_initrd: tuple[str, bytes] | None = None, user_cmdline: str | None = None,
           locked: str | None = None) -> Unpacked:
    """Everything systemd-stub would hand the kernel from the UKI ``data``. ``locked``
    names why overrides are refused (Secure Boot, lockdown), or None."""
    pe = parse(data)
    chosen, count = select_sections(pe, profile, what)

    def part(name: str) -> Part | None:
        if name not in chosen:
            return None
        s, origin = chosen[name]
        return Part(name, origin, pe.section_data(s))

    kernel = part(".linux")
    assert kernel is not None  # select_sections insists
    notes: list[str] = []
    warnings: list[str] = []
    uname_part = part(".uname")
    uname = section_text(uname_part.data) if uname_part else None
    if addons and locked:
        raise UsageError(f"--uki-addon refused: {locked}, and pykexec cannot check an addon's signature "
                         "(systemd-stub has the firmware check it)")
    loaded = [read_addon(p, d, uname) for p, d in (addons or [])]

    embedded_part = part(".cmdline")
    embedded = mangle_cmdline(section_text(embedded_part.data)) if embedded_part else None
    if user_cmdline is not None and locked and embedded is not None:
        warnings.append(f"the command line given was ignored: {locked} and the UKI carries .cmdline "
                        "(systemd-stub ignores it under Secure Boot too)")
        user_cmdline = None
    if user_cmdline is not None:
        cmdline, source = user_cmdline, "given (replaces the UKI's .cmdline)" if embedded is not None else "given"
    else:
        cmdline, source = embedded or "", f".cmdline ({chosen['.cmdline'][1]})" if embedded is not None else "none"
    extra = " ".join(a.cmdline for a in loaded if a.cmdline)
    if extra:
        cmdline = f"{cmdline} {extra}" if cmdline else extra
        source += " + addons"

    # The kernel takes the first microcode it finds: the addons' (last given first), then the UKI's.
    initrds: list[Part] = [Part(".ucode", a.path, a.ucode) for a in reversed(loaded) if a.ucode]
    if (p := part(".ucode")) is not None:
        initrds.append(p)
    if user_initrd is not None:
        initrds.append(Part("--initrd", user_initrd[0], user_initrd[1]))
    if (p := part(".initrd")) is not None:
        initrds.append(p)
    for name, filename in EXTRA_FILES:
        if (p := part(name)) is not None:
            initrds.append(Part(f"{name} as /.extra/{filename}", p.origin, extra_cpio(filename, p.data)))
    initrds += [Part(".initrd", a.path, a.initrd) for a in loaded if a.initrd]

    osrel = part(".osrel")
    prof = part(".profile")
    used = [kernel] + [p for p in (embedded_part if user_cmdline is None else None, osrel, uname_part, prof) if p]
    info: dict[str, object] = {
        "pretty_name": os_release_field(section_text(osrel.data), "PRETTY_NAME") if osrel else None,
        "uname": uname,
        "profile": 0 if profile is None else profile,
        "profiles": count,
        "profile_title": _profile_title(prof.data) if prof else None,
        "cmdline_from": source,
        "addons": [a.path for a in loaded],
        "sections": [p.doc() for p in used],
        "initrd": [p.doc() for p in initrds],
    }
    if locked:
        notes.append("the UKI's own signature is not verified (the firmware does that at boot): kexec_file_load "
                     "checks .linux alone; .cmdline and the initrd parts are as trustworthy as the file")
    for name in (".dtb", ".dtbauto", ".splash", ".efifw"):
        if name in chosen:
            notes.append(f"UKI section {name} not used: x86 kexec has no device tree, splash or firmware to load")
    return Unpacked(kernel.data, combine(initrds), cmdline, initrds, kernel, info, notes, warnings)


def _profile_title(data: bytes) -> str | None:
    text = section_text(data)
    return os_release_field(text, "TITLE") or os_release_field(text, "ID")
