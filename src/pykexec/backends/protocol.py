"""The one interface every backend implements (kexec_load, kexec_file_load, Xen's
kexec_op). Callers import it for type checking only: ``typing`` costs the command line
an import."""

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
