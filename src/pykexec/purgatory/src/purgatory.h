/*
 * pykexec purgatory: the native definition of the blob header and the
 * parameter block.  Included by entry.S and the C files.
 *
 * The Python mirror lives in pykexec/layouts/purgatory.py.  entry.S exports
 * one ELF symbol per field (hdr_*, params_*), and the unit tests compare
 * those symbol values with the ctypes field offsets, so a drift on either
 * side fails the tests instead of silently misreading the block.
 */
#ifndef PYKEXEC_PURGATORY_H
#define PYKEXEC_PURGATORY_H

/* ---- blob header, at offset 0 of the blob ---- */
#define HDR_VERSION        1
#define HDR_JMP            0x00  /* jmp rel32 to the entry point, int3 padded */
#define HDR_MAGIC          0x08  /* "PYKXPURG" */
#define HDR_VERSION_OFF    0x10  /* u32 */
#define HDR_HEADER_SIZE    0x14  /* u32 */
#define HDR_PARAMS_OFFSET  0x18  /* u32 */
#define HDR_PARAMS_SIZE    0x1c  /* u32 */
#define HDR_ENTRY_OFFSET   0x20  /* u32 */
#define HDR_FILE_SIZE      0x24  /* u32: length of purgatory.bin */
#define HDR_MEMSZ          0x28  /* u32: bytes to reserve, page rounded */
#define HDR_RESERVED       0x2c  /* u32: zero */
#define HDR_SIZE           0x30

/* ---- parameter block, filled in by pykexec before loading ---- */
#define MAX_REGIONS        16
#define MODE_JUMP_64       0
#define MODE_JUMP_32       1

#define P_ENTRY            0x00  /* u64 */
#define P_RSI              0x08  /* u64 */
#define P_MODE             0x10  /* u32 */
#define P_EAX              0x14  /* u32 */
#define P_EBX              0x18  /* u32 */
#define P_CONSOLE_PORT     0x1c  /* u16, 0 = silent */
#define P_NR_REGIONS       0x1e  /* u16 */
#define P_BACKUP_SRC       0x20  /* u64 */
#define P_BACKUP_DST       0x28  /* u64 */
#define P_BACKUP_SIZE      0x30  /* u64 */
#define P_REGIONS          0x38  /* MAX_REGIONS x region */
#define R_START            0x00  /* u64 */
#define R_LEN              0x08  /* u64 */
#define R_SHA256           0x10  /* u8[32] */
#define R_SIZE             0x30
#define P_SIZE             (P_REGIONS + MAX_REGIONS * R_SIZE)

/* ---- our GDT selectors ---- */
#define BOOT_CS            0x10  /* 64-bit flat code, Linux __BOOT_CS */
#define BOOT_DS            0x18  /* flat data, Linux __BOOT_DS */
#define PM_CS              0x20  /* 32-bit flat code, for JUMP_32 */
#define PM_DS              0x28  /* 32-bit flat data, for JUMP_32 */


#ifndef __ASSEMBLER__
/* Everything is internal to the blob: no GOT, direct RIP-relative calls. */
#pragma GCC visibility push(hidden)

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

struct region {
	u64 start;
	u64 len;
	u8 sha256[32];
};

struct params {
	u64 entry;
	u64 rsi;
	u32 mode;
	u32 eax;
	u32 ebx;
	u16 console_port;
	u16 nr_regions;
	u64 backup_src;
	u64 backup_dst;
	u64 backup_size;
	struct region regions[MAX_REGIONS];
};

/* The struct must agree with the offsets entry.S (and Python) use. */
#define CHECK_OFF(type, field, off) \
	_Static_assert(__builtin_offsetof(type, field) == (off), #field)
CHECK_OFF(struct params, entry, P_ENTRY);
CHECK_OFF(struct params, rsi, P_RSI);
CHECK_OFF(struct params, mode, P_MODE);
CHECK_OFF(struct params, eax, P_EAX);
CHECK_OFF(struct params, ebx, P_EBX);
CHECK_OFF(struct params, console_port, P_CONSOLE_PORT);
CHECK_OFF(struct params, nr_regions, P_NR_REGIONS);
CHECK_OFF(struct params, backup_src, P_BACKUP_SRC);
CHECK_OFF(struct params, backup_dst, P_BACKUP_DST);
CHECK_OFF(struct params, backup_size, P_BACKUP_SIZE);
CHECK_OFF(struct params, regions, P_REGIONS);
CHECK_OFF(struct region, start, R_START);
CHECK_OFF(struct region, len, R_LEN);
CHECK_OFF(struct region, sha256, R_SHA256);
_Static_assert(sizeof(struct region) == R_SIZE, "region size");
_Static_assert(sizeof(struct params) == P_SIZE, "params size");

void sha256(const void *data, u64 len, u8 out[32]);
int purgatory_main(struct params *p);

#pragma GCC visibility pop
#endif /* __ASSEMBLER__ */

#endif /* PYKEXEC_PURGATORY_H */
