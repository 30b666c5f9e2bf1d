"""Reading Linux crash dumps (``/proc/vmcore`` style ELF cores, kdump-compressed files).

* :mod:`pykexec.vmcore.open` -- :func:`~pykexec.vmcore.open.open_dump`: either format, by its first bytes,
  as a file or as a flattened makedumpfile stream (:mod:`~pykexec.vmcore.flattened`).
* :mod:`pykexec.vmcore.elfcore` -- the ELF core: notes, PT_LOAD address translation.
* :mod:`pykexec.vmcore.kdump` -- the kdump-compressed file (makedumpfile's format).
* :mod:`pykexec.vmcore.page_codecs` -- its pages' codecs (zlib, lzo, snappy, zstd), both ways.
* :mod:`pykexec.vmcore.dump_memory` -- :class:`~pykexec.vmcore.dump_memory.DumpMemory`,
  what every reader offers the log, info and Xen code.
* :mod:`pykexec.vmcore.paging` -- the x86-64 page-table walker all readers share.
* :mod:`pykexec.vmcore.vmcoreinfo` -- the VMCOREINFO ``KEY=VALUE`` note.
* :mod:`pykexec.vmcore.printk` -- the kernel log in its three in-memory formats.
* :mod:`pykexec.vmcore.xen` -- dumps of a Xen machine: the hypervisor's ring, dom0's memory.
* :mod:`pykexec.vmcore.info` -- ``vmcore info``: what a dump is, its CPUs, a dump cut short.
* :mod:`pykexec.vmcore.save` -- ``vmcore save``: what to keep, in batches; the writers
  :mod:`~pykexec.vmcore.kdump_writer` (makedumpfile's format) and
  :mod:`~pykexec.vmcore.elf_writer` (filtered ELF), with :mod:`~pykexec.vmcore.output`
  (a file, or a flattened stream for ``-F``).
* :mod:`pykexec.vmcore.reassemble` -- ``vmcore reassemble``: a file from a flattened stream.
* :mod:`pykexec.vmcore.filtering` -- dump levels from VMCOREINFO alone:
  :mod:`~pykexec.vmcore.scan_plan` (what to look for), :mod:`~pykexec.vmcore.sparsemem`
  (the struct page array), :mod:`~pykexec.vmcore.page_rules` (makedumpfile's rules),
  :mod:`~pykexec.vmcore.pfn_runs` (page-frame runs).
* :mod:`pykexec.vmcore.errors` -- :class:`~pykexec.vmcore.errors.VmcoreError`.
* :mod:`pykexec.vmcore.cli` -- ``pykexec vmcore dmesg|info|save|reassemble``.

Empty on purpose: ``vmcore dmesg`` start-up time is part of its speed, and the readers
import only what they use.
"""
