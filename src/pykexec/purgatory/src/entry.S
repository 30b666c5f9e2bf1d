/*
 * pykexec purgatory entry (x86_64, GNU as, AT&T syntax).
 *
 * The kernel's kexec jumps here in 64-bit mode with identity-mapped paging.
 * Nothing it leaves behind is trusted: the stack and the GDT may belong to
 * the old kernel and may already be gone.  Everything is addressed
 * RIP-relative so the blob runs at whatever address it is loaded.
 */
#include "purgatory.h"

#define CR0_PG     0x80000000
#define CR4_PAE    0x00000020
#define MSR_EFER   0xc0000080
#define EFER_LME   0x00000100

	.section .head, "awx", @progbits
	.code64

/* ---- blob header (layout: purgatory.h, pykexec/layouts/purgatory.py) ---- */
	.globl hdr_jmp
hdr_jmp:
	jmp	purgatory_entry		/* lets a loader also enter at offset 0 */
	.balign	8, 0xcc
	.globl hdr_magic, hdr_version, hdr_header_size, hdr_params_offset
	.globl hdr_params_size, hdr_entry_offset, hdr_file_size, hdr_memsz
	.globl hdr_reserved
hdr_magic:		.ascii	"PYKXPURG"
hdr_version:		.long	HDR_VERSION
hdr_header_size:	.long	hdr_end - hdr_jmp
hdr_params_offset:	.long	params - hdr_jmp
hdr_params_size:	.long	params_end - params
hdr_entry_offset:	.long	purgatory_entry - hdr_jmp
hdr_file_size:		.long	__pyk_file_size		/* absolute, from the linker script */
hdr_memsz:		.long	__pyk_memsz		/* absolute, from the linker script */
hdr_reserved:		.long	0
hdr_end:

/* ---- parameter block (filled in by pykexec) ---- */
	.balign	64, 0
	.globl params, params_end
params:
	.space	P_SIZE, 0
params_end:

/* One symbol per field, so tests can check the Python layout against ours. */
	.globl params_entry, params_rsi, params_mode, params_eax, params_ebx
	.globl params_console_port, params_nr_regions, params_backup_src
	.globl params_backup_dst, params_backup_size, params_regions
	.globl params_region0_start, params_region0_len, params_region0_sha256
	.globl params_region1_start
	.set	params_entry,		params + P_ENTRY
	.set	params_rsi,		params + P_RSI
	.set	params_mode,		params + P_MODE
	.set	params_eax,		params + P_EAX
	.set	params_ebx,		params + P_EBX
	.set	params_console_port,	params + P_CONSOLE_PORT
	.set	params_nr_regions,	params + P_NR_REGIONS
	.set	params_backup_src,	params + P_BACKUP_SRC
	.set	params_backup_dst,	params + P_BACKUP_DST
	.set	params_backup_size,	params + P_BACKUP_SIZE
	.set	params_regions,		params + P_REGIONS
	.set	params_region0_start,	params + P_REGIONS + R_START
	.set	params_region0_len,	params + P_REGIONS + R_LEN
	.set	params_region0_sha256,	params + P_REGIONS + R_SHA256
	.set	params_region1_start,	params + P_REGIONS + R_SIZE + R_START

/* ---- our GDT: flat segments as the Linux and Multiboot protocols want ---- */
	.balign	16
gdt:
	.quad	0			/* 0x00 null */
	.quad	0			/* 0x08 unused */
	.quad	0x00af9b000000ffff	/* 0x10 BOOT_CS: 64-bit code, exec/read */
	.quad	0x00cf93000000ffff	/* 0x18 BOOT_DS: flat data, read/write */
	.quad	0x00cf9b000000ffff	/* 0x20 PM_CS: 32-bit flat code */
	.quad	0x00cf93000000ffff	/* 0x28 PM_DS: 32-bit flat data */
gdt_end:
	.balign	16
	.word	0, 0, 0			/* pad so that gdtr_base is 8-aligned */
gdtr:
	.word	gdt_end - gdt - 1
gdtr_base:
	.quad	0			/* set at run time: we do not know our address */

/* ---- entry point ---- */
	.balign	16
	.globl purgatory_entry
purgatory_entry:
	cli
	cld
	leaq	stack_top(%rip), %rsp	/* the incoming stack is not ours */

	/* The old kernel's GDT may be unmapped: install ours. */
	leaq	gdt(%rip), %rax
	movq	%rax, gdtr_base(%rip)
	lgdt	gdtr(%rip)

	/* Reload CS through a far return; there is no RIP-relative ljmp. */
	leaq	1f(%rip), %rax
	pushq	$BOOT_CS
	pushq	%rax
	lretq
1:	movl	$BOOT_DS, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%eax, %fs
	movl	%eax, %gs

	leaq	params(%rip), %rdi
	call	purgatory_main
	testl	%eax, %eax
	jnz	halt

	cmpl	$MODE_JUMP_32, params_mode(%rip)
	je	jump32

	/* JUMP_64: Linux 64-bit boot protocol; only RSI carries a value. */
	movq	params_rsi(%rip), %rsi
	xorl	%eax, %eax
	xorl	%ebx, %ebx
	xorl	%ecx, %ecx
	xorl	%edx, %edx
	xorl	%edi, %edi
	xorl	%ebp, %ebp
	xorl	%r8d, %r8d
	xorl	%r9d, %r9d
	xorl	%r10d, %r10d
	xorl	%r11d, %r11d
	xorl	%r12d, %r12d
	xorl	%r13d, %r13d
	xorl	%r14d, %r14d
	xorl	%r15d, %r15d
	jmp	*params_entry(%rip)

	/* Verification failed (or bad parameters): never boot, just stop. */
	.globl halt
halt:
	cli
	hlt
	jmp	halt

/*
 * JUMP_32: leave long mode for 32-bit protected mode without paging
 * (Multiboot).  Only valid when the purgatory sits below 4 GiB: from the
 * compatibility-mode step on, EIP, ESP and ESI are 32 bits wide.
 */
jump32:
	leaq	params(%rip), %rsi	/* 32-bit code has no RIP-relative form */
	leaq	2f(%rip), %rax
	pushq	$PM_CS
	pushq	%rax
	lretq
	.code32
2:	movl	$PM_DS, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %fs
	movl	%eax, %gs
	movl	%eax, %ss
	/* Paging off first: that is what drops EFER.LMA (SDM 9.8.5.4). */
	movl	%cr0, %eax
	andl	$~CR0_PG, %eax
	movl	%eax, %cr0
	jmp	3f
3:	movl	$MSR_EFER, %ecx
	rdmsr
	andl	$~EFER_LME, %eax
	wrmsr
	movl	%cr4, %eax
	andl	$~CR4_PAE, %eax
	movl	%eax, %cr4

	pushl	P_ENTRY(%esi)		/* low dword; Python checks entry < 4 GiB */
	movl	P_EAX(%esi), %eax
	movl	P_EBX(%esi), %ebx
	xorl	%ecx, %ecx
	xorl	%edx, %edx
	xorl	%esi, %esi
	xorl	%edi, %edi
	xorl	%ebp, %ebp
	ret
	.code64

	.section .note.GNU-stack, "", @progbits
