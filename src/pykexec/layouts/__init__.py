"""Binary layouts, each defined once: boot protocol, kexec ABI, purgatory parameters."""
