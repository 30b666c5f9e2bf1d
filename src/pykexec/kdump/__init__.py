"""``pykexec kdump``: kdump as a service (issue 13; design in docs/kdump-service.md).

* :mod:`~pykexec.kdump.config` -- the configuration file, ``/etc/pykexec/kdump.toml``;
* :mod:`~pykexec.kdump.paths` -- every path the service uses, under one root;
* :mod:`~pykexec.kdump.records` -- the saved crashes on the target (``record.json``);
* :mod:`~pykexec.kdump.service` -- load, unload and status of the crash kernel;
* :mod:`~pykexec.kdump.unit` -- the systemd unit ``pykexec-kdump.service``;
* :mod:`~pykexec.kdump.estimate` -- the ``crashkernel=`` needed, the dump's predicted size;
* :mod:`~pykexec.kdump.selftest` -- ``kdump test``: every check possible without crashing;
* :mod:`~pykexec.kdump.initramfs` -- the crash initramfs;
* :mod:`~pykexec.kdump.capture` -- the capture, PID 1 of the crash kernel;
* :mod:`~pykexec.kdump.cli` -- the command line.
"""
