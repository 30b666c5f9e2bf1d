/*
 * SHA-256 (FIPS 180-4), small rather than fast: purgatory hashes a few
 * tens of MiB once per boot.  Freestanding: no libc, no SSE.
 */
#include "purgatory.h"

static const u32 K[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
	0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
	0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
	0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
	0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
	0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
	0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
	0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
	0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static u32 ror(u32 x, int n)
{
	return (x >> n) | (x << (32 - n));
}

static void compress(u32 h[8], const u8 blk[64])
{
	u32 w[64], a, b, c, d, e, f, g, hh, t1, t2;
	int i;

	for (i = 0; i < 16; i++)
		w[i] = (u32)blk[4 * i] << 24 | (u32)blk[4 * i + 1] << 16 |
		       (u32)blk[4 * i + 2] << 8 | blk[4 * i + 3];
	for (; i < 64; i++) {
		u32 s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
		u32 s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	a = h[0]; b = h[1]; c = h[2]; d = h[3];
	e = h[4]; f = h[5]; g = h[6]; hh = h[7];
	for (i = 0; i < 64; i++) {
		t1 = hh + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) +
		     ((e & f) ^ (~e & g)) + K[i] + w[i];
		t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) +
		     ((a & b) ^ (a & c) ^ (b & c));
		hh = g; g = f; f = e; e = d + t1;
		d = c; c = b; b = a; a = t1 + t2;
	}
	h[0] += a; h[1] += b; h[2] += c; h[3] += d;
	h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}

void sha256(const void *data, u64 len, u8 out[32])
{
	/* Initial values written out, not copied from a table, so the
	 * compiler has no reason to call memcpy. */
	u32 h[8];
	u8 tail[128];
	const u8 *p = data;
	u64 full = len & ~(u64)63, rest = len - full, i, n;

	h[0] = 0x6a09e667; h[1] = 0xbb67ae85; h[2] = 0x3c6ef372;
	h[3] = 0xa54ff53a; h[4] = 0x510e527f; h[5] = 0x9b05688c;
	h[6] = 0x1f83d9ab; h[7] = 0x5be0cd19;

	for (i = 0; i < full; i += 64)
		compress(h, p + i);

	/* Last partial block, the 0x80 marker, zeros, then the bit length:
	 * one extra block when fewer than 9 bytes are left (rest >= 56). */
	n = rest < 56 ? 64 : 128;
	for (i = 0; i < n; i++)
		tail[i] = i < rest ? p[full + i] : 0;
	tail[rest] = 0x80;
	for (i = 0; i < 8; i++)
		tail[n - 1 - i] = (u8)((len << 3) >> (8 * i));
	for (i = 0; i < n; i += 64)
		compress(h, tail + i);

	for (i = 0; i < 32; i++)
		out[i] = (u8)(h[i / 4] >> (24 - 8 * (i % 4)));
}
