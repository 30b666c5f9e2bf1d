"""One row of the image-type table (see :mod:`pykexec.images`)."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable

TYPE_CHECKING = False  # typing costs an import; this name is all type checkers need
if TYPE_CHECKING:
    from pykexec.plan import LoadPlan
    from pykexec.request import LoadRequest


class ImageType(namedtuple("ImageType", "name probe plan usage file_load", defaults=(False,))):
    """``probe(data)`` returns None when the image is of this type, else a short reason
    why not; ``plan(request)`` makes the LoadPlan; ``file_load`` says whether
    kexec_file_load can take the image on x86_64."""

    __slots__ = ()
    name: str
    probe: Callable[[bytes], str | None]
    plan: Callable[[LoadRequest], LoadPlan]
    usage: str
    file_load: bool
