"""Unified Kernel Images (systemd-stub PE files): the image type. A UKI is unpacked as
systemd-stub unpacks it at boot (:mod:`pykexec.images.uki_unpack`, imported only when
one is loaded) and its ``.linux`` is then a bzImage.
"""

from __future__ import annotations

from pykexec.errors import ImageFormatError
from pykexec.images.image_type import ImageType
from pykexec.images.pe_file import looks_like_pe, parse

TYPE_CHECKING = False  # typing costs an import; this name is all type checkers need
if TYPE_CHECKING:
    from pykexec.images.uki_unpack import Unpacked
    from pykexec.plan import LoadPlan
    from pykexec.request import LoadRequest

NAME = "uki"


def probe(data: bytes) -> str | None:
    why = looks_like_pe(data)
    if why is not None:
        return why
    try:
        pe = parse(data)
    except ImageFormatError as err:
        return str(err)
    if pe.find(".linux") is None:
        return "a PE file without a .linux section (not a UKI)"
    return None


def plan(req: LoadRequest) -> LoadPlan:
    """For a library caller handing a UKI straight to the table: the UKI's default
    profile, its initrd (``req.initrd`` as the user's), its command line unless
    ``req.cmdline`` is set; then the bzImage64 loader on ``.linux``."""
    from pykexec.images import bzimage
    from pykexec.images.uki_unpack import unpack
    from pykexec.request import LoadRequest

    u = unpack(req.kernel, str(req.kernel_path),
               user_initrd=(str(req.initrd_path), req.initrd) if req.initrd is not None else None,
               user_cmdline=req.cmdline or None)
    inner = LoadRequest(f"{req.kernel_path}:.linux", u.kernel, req.machine, cmdline=u.cmdline,
                        initrd_path=f"{req.kernel_path}:initrd" if u.initrd else None, initrd=u.initrd,
                        crash=req.crash, mem_min=req.mem_min, mem_max=req.mem_max, backend=req.backend,
                        purgatory_console=req.purgatory_console, memmap_cmdline=req.memmap_cmdline)
    result = bzimage.plan(inner)
    describe(result, u)
    return result


def describe(result: LoadPlan, u: Unpacked) -> None:
    """Mark a plan made from ``.linux`` as a UKI's, with what was used."""
    result.image_type = NAME
    result.uki = u.info
    result.notes[:0] = u.notes
    result.warnings.extend(u.warnings)


UKI = ImageType(
    name=NAME,
    probe=probe,
    plan=plan,
    usage="uki: Unified Kernel Image (systemd-stub PE: .linux, .initrd, .ucode, .cmdline, profiles), loaded\n"
          "    as systemd-stub boots it. --uki-profile N, --uki-addon FILE.addon.efi (repeatable);\n"
          "    --append/--reuse-cmdline replace .cmdline (not under Secure Boot or lockdown);\n"
          "    --initrd FILE goes between .ucode and .initrd",
    file_load=True,
)
