/*
 * mbtest: a tiny 32-bit kernel with both a Multiboot 1 and a Multiboot 2 header (as
 * Xen has), to check on a (virtual) CPU what a Multiboot loader hands over.
 *
 * On entry it prints on COM1 (polled; the UART keeps the old kernel's settings):
 *
 *   MBTEST magic=<EAX> mbi=<EBX> base=<where _start runs> cr0=<CR0> eflags=<EFLAGS>
 *   MBDUMP <addr> <len> <hex bytes>      for each region it was told about
 *   MBTEST-END
 *
 * For Multiboot 2: the whole MBI (total_size bytes), then the first 16 bytes of each
 * module. For Multiboot 1: the 116-byte structure, the command line, the boot loader
 * name, the module list, each module's first 16 bytes and command line, the memory
 * map. Then the BIOS data area (0x400, 32 bytes), which a loader must not overwrite.
 * Then it triple-faults (a null IDT and int3), which with -no-reboot ends QEMU.
 *
 * The code is position independent (everything relative to EBP = _start's run-time
 * address), so the loader may relocate it as the RELOCATABLE tag allows.
 */
	.set	MB1_MAGIC, 0x1BADB002
	.set	MB1_FLAGS, 0x00000003		/* PAGE_ALIGN | MEMORY_INFO, like Xen */
	.set	MB2_MAGIC, 0xE85250D6
	.set	MB2_EAX, 0x36D76289
	.set	MB1_EAX, 0x2BADB002
	.set	COM1, 0x3F8
	.set	MAX_DUMP, 0x10000		/* never print more than 64 KiB per region */

	.text
	.code32
	.globl	_start
_start:
	jmp	start				/* e_entry; the MB2 ENTRY_ADDRESS tag names start */

	.balign	4
mb1_header:
	.long	MB1_MAGIC, MB1_FLAGS, 0x100000000 - (MB1_MAGIC + MB1_FLAGS)

	.balign	8
mb2_header:
	.long	MB2_MAGIC, 0, mb2_end - mb2_header
	.long	0x100000000 - (MB2_MAGIC + (mb2_end - mb2_header))
	/* INFORMATION_REQUEST (required): BASIC_MEMINFO, MMAP, LOAD_BASE_ADDR */
	.balign	8
	.word	1, 0
	.long	20
	.long	4, 6, 21
	/* MODULE_ALIGN (required) */
	.balign	8
	.word	6, 0
	.long	8
	/* ENTRY_ADDRESS (required): must be shifted with the image when relocated */
	.balign	8
	.word	3, 0
	.long	12
	.long	start
	/* RELOCATABLE (optional): 16 MiB .. 4 GiB, 2 MiB aligned, prefer high (as Xen) */
	.balign	8
	.word	10, 1
	.long	24
	.long	0x1000000, 0xFFFFFFFF, 0x200000, 2
	/* CONSOLE_FLAGS (optional): EGA text supported, as Xen says */
	.balign	8
	.word	4, 1
	.long	12
	.long	2
	/* EFI_BS (optional): must be ignored */
	.balign	8
	.word	7, 1
	.long	8
	.balign	8
	.word	0, 0
	.long	8
mb2_end:

start:
	cli
	cld
	movl	%eax, %edi			/* magic */
	call	1f
1:	popl	%ebp
	subl	$(1b - _start), %ebp		/* EBP = run-time address of _start */
	leal	(stack_top - _start)(%ebp), %esp

	leal	(msg_magic - _start)(%ebp), %esi
	call	puts
	movl	%edi, %eax
	call	puthex32
	leal	(msg_mbi - _start)(%ebp), %esi
	call	puts
	movl	%ebx, %eax
	call	puthex32
	leal	(msg_base - _start)(%ebp), %esi
	call	puts
	movl	%ebp, %eax
	call	puthex32
	leal	(msg_cr0 - _start)(%ebp), %esi
	call	puts
	movl	%cr0, %eax
	call	puthex32
	leal	(msg_eflags - _start)(%ebp), %esi
	call	puts
	pushfl
	popl	%eax
	call	puthex32
	call	newline

	cmpl	$MB2_EAX, %edi
	je	mb2
	cmpl	$MB1_EAX, %edi
	je	mb1
	leal	(msg_bad - _start)(%ebp), %esi
	call	puts
	jmp	done

/* Multiboot 2: the whole MBI, then each module's first 16 bytes. */
mb2:
	movl	%ebx, %esi
	movl	(%ebx), %ecx			/* total_size */
	call	dump
	leal	8(%ebx), %edx			/* first tag */
	movl	%ebx, %edi
	addl	(%ebx), %edi			/* end of the MBI */
2:	cmpl	%edi, %edx
	jae	done
	movl	(%edx), %eax			/* type */
	testl	%eax, %eax
	jz	done
	cmpl	$3, %eax			/* MODULE */
	jne	3f
	movl	8(%edx), %esi			/* mod_start */
	movl	$16, %ecx
	call	dump
3:	movl	4(%edx), %eax			/* size, then 8-byte padding */
	addl	$7, %eax
	andl	$~7, %eax
	jz	done				/* a zero size would loop forever */
	addl	%eax, %edx
	jmp	2b

/* Multiboot 1: the structure and everything it points at. */
mb1:
	movl	%ebx, %esi
	movl	$116, %ecx
	call	dump
	testl	$0x4, (%ebx)			/* CMDLINE */
	jz	4f
	movl	16(%ebx), %esi
	call	dump_string
4:	testl	$0x200, (%ebx)			/* BOOT_LOADER_NAME */
	jz	5f
	movl	64(%ebx), %esi
	call	dump_string
5:	testl	$0x8, (%ebx)			/* MODS */
	jz	7f
	movl	24(%ebx), %esi			/* mods_addr */
	movl	20(%ebx), %ecx			/* mods_count */
	andl	$0xFF, %ecx			/* bound it */
	shll	$4, %ecx
	call	dump
	movl	24(%ebx), %edx
	movl	20(%ebx), %edi
	andl	$0xFF, %edi
6:	testl	%edi, %edi
	jz	7f
	movl	(%edx), %esi			/* mod_start */
	movl	$16, %ecx
	call	dump
	movl	8(%edx), %esi			/* string */
	call	dump_string
	addl	$16, %edx
	decl	%edi
	jmp	6b
7:	testl	$0x40, (%ebx)			/* MEM_MAP */
	jz	done
	movl	48(%ebx), %esi			/* mmap_addr */
	movl	44(%ebx), %ecx			/* mmap_length */
	call	dump

done:
	movl	$0x400, %esi			/* the BIOS data area */
	movl	$32, %ecx
	call	dump
	leal	(msg_end - _start)(%ebp), %esi
	call	puts
	/* Triple fault: no IDT, then an exception. QEMU -no-reboot exits. */
	lidt	(null_idt - _start)(%ebp)
	int3
8:	hlt
	jmp	8b

/* ---- helpers: all registers preserved ---- */

/* putc: AL to COM1, after a bounded wait for the transmitter. */
putc:
	pushal
	movb	%al, %bl
	movl	$1000000, %ecx
	movw	$(COM1 + 5), %dx
9:	inb	%dx, %al
	testb	$0x20, %al
	jnz	10f
	loop	9b
10:	movw	$COM1, %dx
	movb	%bl, %al
	outb	%al, %dx
	popal
	ret

/* puts: the NUL-terminated string at ESI. */
puts:
	pushal
11:	lodsb
	testb	%al, %al
	jz	12f
	call	putc
	jmp	11b
12:	popal
	ret

newline:
	pushl	%eax
	movb	$'\n', %al
	call	putc
	popl	%eax
	ret

space:
	pushl	%eax
	movb	$' ', %al
	call	putc
	popl	%eax
	ret

/* puthex8: AL as two hex digits. */
puthex8:
	pushal
	movb	%al, %bl
	shrb	$4, %al
	call	hexdigit
	movb	%bl, %al
	andb	$0xF, %al
	call	hexdigit
	popal
	ret

hexdigit:
	andb	$0xF, %al
	addb	$'0', %al
	cmpb	$'9', %al
	jbe	13f
	addb	$('a' - '9' - 1), %al
13:	jmp	putc

/* puthex32: EAX as 0x and eight hex digits. */
puthex32:
	pushal
	movl	%eax, %edx
	movb	$'0', %al
	call	putc
	movb	$'x', %al
	call	putc
	movl	$4, %ecx
14:	roll	$8, %edx
	movb	%dl, %al
	call	puthex8
	loop	14b
	popal
	ret

/* dump: "MBDUMP <addr> <len> <hex>" for ECX bytes at ESI. */
dump:
	pushal
	cmpl	$MAX_DUMP, %ecx
	jbe	15f
	movl	$MAX_DUMP, %ecx
15:	pushl	%esi
	leal	(msg_dump - _start)(%ebp), %esi
	call	puts
	popl	%esi
	movl	%esi, %eax
	call	puthex32
	call	space
	movl	%ecx, %eax
	call	puthex32
	call	space
	jecxz	17f
16:	lodsb
	call	puthex8
	loop	16b
17:	call	newline
	popal
	ret

/* dump_string: the NUL-terminated string at ESI, NUL included (at most 4 KiB). */
dump_string:
	pushal
	movl	%esi, %edi
	xorl	%ecx, %ecx
18:	cmpb	$0, (%edi, %ecx)
	je	19f
	incl	%ecx
	cmpl	$4095, %ecx
	jb	18b
19:	incl	%ecx
	call	dump
	popal
	ret

msg_magic:	.asciz	"MBTEST magic="
msg_mbi:	.asciz	" mbi="
msg_base:	.asciz	" base="
msg_cr0:	.asciz	" cr0="
msg_eflags:	.asciz	" eflags="
msg_bad:	.asciz	"MBTEST bad magic\n"
msg_dump:	.asciz	"MBDUMP "
msg_end:	.asciz	"MBTEST-END\n"
	.balign	8
null_idt:
	.word	0
	.long	0
	.balign	16
stack:
	.skip	4096
stack_top:
