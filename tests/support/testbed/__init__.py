"""QEMU end-to-end test bed for pykexec.

Boots real Debian kernels under QEMU (TCG) with small busybox initramfs
images, optionally carrying a Python 3.11 interpreter, pykexec and Debian's
kexec-tools (the reference implementation).  Stdlib only.

* :mod:`.packages` -- :class:`PackageCache`: downloads and unpacks Debian packages.
* :mod:`.assets` -- :class:`Assets`: the initramfs layers built from them, cached by
  content hash, and :func:`build_initramfs`, which puts a guest together.
* :mod:`.guest_init` -- the guests' /init and the markers it prints.
* :mod:`.qemu` -- :func:`run_qemu`: boots a kernel, streams the serial console to a log.
* :mod:`.guest` -- :func:`run_guest_script`: all of the above in one call, cached.
* :mod:`.cpio`, :mod:`.initramfs`, :mod:`.host`, :mod:`.cache` -- what those are made of.

Everything downloaded or generated lives in the cache directory
(``$PYKEXEC_TESTBED_CACHE`` or ``<repo>/.cache/testbed``), guarded by a file
lock so that several pytest processes can share it.  The command line is
``python -m support.testbed`` (see ``__main__.py``).
"""
