"""``pykexec kdump``: kdump as a service (issue 13; design in docs/kdump-service.md).

* :mod:`~pykexec.kdump.config` -- the configuration file, ``/etc/pykexec/kdump.toml``;
* :mod:`~pykexec.kdump.paths` -- every path the service uses, under one root;
* :mod:`~pykexec.kdump.records` -- the saved crashes on the target (``record.json``);
* :mod:`~pykexec.kdump.service` -- load, unload and status of the crash kernel;
* :mod:`~pykexec.kdump.unit` -- the systemd unit ``pykexec-kdump.service``;
* :mod:`~pykexec.kdump.estimate` -- the ``crashkernel=`` needed, the dump's predicted size;
* :mod:`~pykexec.kdump.selftest` -- ``kdump test``: every check possible without crashing;
* :mod:`~pykexec.kdump.initramfs` -- the crash initramfs, from :mod:`~pykexec.kdump.capture_plan`
  (what the capture needs to know), :mod:`~pykexec.kdump.pyclosure` (the Python modules it
  imports), :mod:`~pykexec.kdump.shlibs` (shared libraries), :mod:`~pykexec.kdump.kmods`
  (kernel modules), :mod:`~pykexec.kdump.target_probe` and :mod:`~pykexec.kdump.fsuuid`
  (where the target lives), :mod:`~pykexec.kdump.cpio` / :mod:`~pykexec.kdump.cpio_reader`;
* :mod:`~pykexec.kdump.capture` -- the capture, PID 1 of the crash kernel (:mod:`~pykexec.kdump.pid1`:
  mount, modules and reboot through libc; :mod:`~pykexec.kdump.capture_ssh`: ssh targets);
* :mod:`~pykexec.kdump.kcore`, :mod:`~pykexec.kdump.dump_size` -- the live kernel's memory and
  the dump-size prediction behind ``estimate``; :mod:`~pykexec.kdump.crashes` -- ``list`` and ``show``;
* :mod:`~pykexec.kdump.cli` -- the command line.
"""
