"""pykexec: kexec and kdump for Linux and Xen."""

__version__ = "0.1.0"
