"""Backends: what hands a checked plan to the kernel or to the hypervisor.

One protocol, three implementations: ``kexec_load`` (our segments and purgatory),
``kexec_file_load`` (the kernel parses the image) and Xen's ``kexec_op`` (a PV dom0).
The library core (:mod:`pykexec.kexec`) chooses one before planning; the plan is then
checked through that backend's :meth:`Backend.check` and handed to its :meth:`Backend.load`.
"""

from __future__ import annotations

from typing import Protocol

TYPE_CHECKING = False  # typing costs an import; this name is all type checkers need
if TYPE_CHECKING:
    from pykexec.machine import Machine
    from pykexec.plan import LoadPlan


class Backend(Protocol):
    """A way to load, unload, query and start a kexec image."""

    #: ``kexec_load``, ``kexec_file_load`` or ``xen_kexec_op`` (the plan's ``backend``).
    name: str

    def check(self, plan: LoadPlan, machine: Machine) -> None:
        """Refuse, with a :class:`~pykexec.errors.PlanError` naming the segment and the
        rule, a plan this backend's kernel or hypervisor would refuse."""

    def load(self, plan: LoadPlan) -> None:
        """Load a checked plan (normal or crash, as ``plan.crash`` says)."""

    def unload(self, crash: bool) -> None:
        """Unload the normal (or crash) image."""

    def is_loaded(self, crash: bool) -> bool:
        """Whether a normal (or crash) image is loaded."""

    def execute(self) -> None:
        """Jump into the loaded normal image; returns only by raising."""
