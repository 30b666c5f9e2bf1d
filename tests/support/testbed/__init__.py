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

A real Debian 12 system under systemd, for the kdump service's end-to-end tests:

* :mod:`.debian` -- :class:`DebianTestbed`: the mmdebstrap base image (kdump-tools installed,
  disabled) and the pykexec layer, cached; :meth:`DebianTestbed.new_disk` for each test.
* :mod:`.debian_step` -- the in-guest step runner (a systemd unit), its markers and shell helpers.
* :mod:`.debian_boot` -- :func:`boot`: one QEMU run (one boot) of a disk, console lines timed.
* :mod:`.ext4` -- :class:`Ext4Image`: files read from and written to a raw ext4 image with debugfs.

Everything downloaded or generated lives in the cache directory
(``$PYKEXEC_TESTBED_CACHE`` or ``<repo>/.cache/testbed``), guarded by a file
lock so that several pytest processes can share it.  The command line is
``python -m support.testbed`` (see ``__main__.py``).
"""
