"""Test support code: synthetic image and dump builders, the fuzzers' helpers, the QEMU
test bed, the kexec-tools oracle and the independent model of Xen's CRASH_EFI rules.

Importable as ``support`` because ``tests`` is on the path: pytest puts it there
(``pythonpath`` in pyproject.toml), and scripts/setup.sh puts it in the virtual
environment (a ``.pth`` file) for the benchmarks, scripts/demo.py and the command lines
of the test bed and the corpus (``python -m support.testbed fetch``).
"""
