"""Where a plan goes: the Linux kexec syscalls, or nowhere (dry run)."""
