/*
 * pykexec purgatory, C part: verify every loaded segment against the
 * SHA-256 digest pykexec computed, copy the kdump backup region, report
 * on a 16550 UART if asked.  Returns 0 to let entry.S jump to the next
 * kernel, anything else to halt.
 */
#include "purgatory.h"

static inline void outb(u16 port, u8 v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline u8 inb(u16 port)
{
	u8 v;

	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

/* Polled output only: the UART keeps the baud rate the old kernel set. */
static void putc_serial(u16 port, char c)
{
	unsigned int spin;

	/* Bounded wait for LSR.THRE, so a dead UART cannot stop the boot. */
	for (spin = 0; spin < 100000; spin++)
		if (inb(port + 5) & 0x20)
			break;
	outb(port, (u8)c);
}

static void puts_serial(u16 port, const char *s)
{
	if (!port)
		return;
	for (; *s; s++) {
		if (*s == '\n')
			putc_serial(port, '\r');
		putc_serial(port, *s);
	}
}

static void putdec(u16 port, u64 v)
{
	char buf[21];
	int i = sizeof(buf) - 1;

	buf[i] = 0;
	do {
		buf[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	puts_serial(port, buf + i);
}

static void puthex(u16 port, u64 v)
{
	char buf[19];
	int i = sizeof(buf) - 1;

	buf[i] = 0;
	do {
		buf[--i] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v);
	buf[--i] = 'x';
	buf[--i] = '0';
	puts_serial(port, buf + i);
}

static int digest_equal(const u8 *a, const u8 *b)
{
	u8 diff = 0;
	int i;

	for (i = 0; i < 32; i++)
		diff |= a[i] ^ b[i];
	return diff == 0;
}

int purgatory_main(struct params *p)
{
	u16 port = p->console_port;
	u8 digest[32];
	unsigned int i;

	puts_serial(port, "pykexec purgatory: started\n");
	if (p->nr_regions > MAX_REGIONS ||
	    (p->mode != MODE_JUMP_64 && p->mode != MODE_JUMP_32)) {
		puts_serial(port, "pykexec purgatory: bad parameter block\n");
		return 1;
	}

	for (i = 0; i < p->nr_regions; i++) {
		struct region *r = &p->regions[i];

		/* Identity mapped: a physical address is a pointer. */
		sha256((const void *)r->start, r->len, digest);
		if (!digest_equal(digest, r->sha256)) {
			puts_serial(port, "pykexec purgatory: sha256 mismatch in segment ");
			putdec(port, i);
			puts_serial(port, " at ");
			puthex(port, r->start);
			puts_serial(port, "\n");
			return 1;
		}
	}
	puts_serial(port, "pykexec purgatory: verified ");
	putdec(port, p->nr_regions);
	puts_serial(port, " segments\n");

	/* kdump: save what the crash kernel is about to overwrite (low 640K). */
	if (p->backup_size) {
		u64 n = p->backup_size;
		void *dst = (void *)p->backup_dst;
		const void *src = (const void *)p->backup_src;

		__asm__ volatile("rep movsb"
				 : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
		puts_serial(port, "pykexec purgatory: copied backup\n");
	}

	puts_serial(port, "pykexec purgatory: jumping to ");
	puthex(port, p->entry);
	puts_serial(port, "\n");
	return 0;
}
