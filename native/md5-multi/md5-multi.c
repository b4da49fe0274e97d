// Multi-buffer MD5 (RFC 1321), written from the RFC: independent messages hashed 8 at a time, one per 32-bit lane of
// AVX2 registers (each lane pads its own message; a lane whose message ends takes the next one). MD5 is serial within
// one message, so this only pays with several messages at a time: a 64-byte step costs the same whether 1 or 8 lanes
// carry a message.
//
// Exported (C ABI, loaded with koffi by md5-multi.cjs; built by scripts/build-md5-multi.mjs):
//   int md5multi_abi(void)       the interface version (MD5MULTI_ABI); the loader refuses a library of another one.
//   int md5multi_kernels(void)   bit 0: the AVX2 kernel runs on this CPU; bit 1: the AVX-512VL one does. 0: neither.
//   int md5multi_many(const uint8_t *const *ptrs, const double *lens, uint32_t n, uint8_t *out, int kernel)
//     writes the 16-byte MD5 digest of message j (lens[j] bytes at ptrs[j], any alignment; lengths are doubles,
//     exact below 2^53) at out + 16 j. kernel: 0 the best this CPU has, 1 AVX2, 2 AVX-512VL. Returns the kernel used,
//     or -1 when the CPU lacks it (nothing written). Reentrant: no global state, any thread.
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define MD5MULTI_ABI 1
#define LANES 8
#define EXPORT __attribute__((visibility("default")))

EXPORT int md5multi_abi(void) { return MD5MULTI_ABI; }

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

// T[i] = floor(2^32 * |sin(i + 1)|), RFC 1321 section 3.4; each repeated in 8 lanes, so that a step adds it straight
// from memory.
#define T8(v) { v, v, v, v, v, v, v, v }
static const uint32_t T[64][LANES] __attribute__((aligned(32))) = {
  T8(0xd76aa478u), T8(0xe8c7b756u), T8(0x242070dbu), T8(0xc1bdceeeu),
  T8(0xf57c0fafu), T8(0x4787c62au), T8(0xa8304613u), T8(0xfd469501u),
  T8(0x698098d8u), T8(0x8b44f7afu), T8(0xffff5bb1u), T8(0x895cd7beu),
  T8(0x6b901122u), T8(0xfd987193u), T8(0xa679438eu), T8(0x49b40821u),
  T8(0xf61e2562u), T8(0xc040b340u), T8(0x265e5a51u), T8(0xe9b6c7aau),
  T8(0xd62f105du), T8(0x02441453u), T8(0xd8a1e681u), T8(0xe7d3fbc8u),
  T8(0x21e1cde6u), T8(0xc33707d6u), T8(0xf4d50d87u), T8(0x455a14edu),
  T8(0xa9e3e905u), T8(0xfcefa3f8u), T8(0x676f02d9u), T8(0x8d2a4c8au),
  T8(0xfffa3942u), T8(0x8771f681u), T8(0x6d9d6122u), T8(0xfde5380cu),
  T8(0xa4beea44u), T8(0x4bdecfa9u), T8(0xf6bb4b60u), T8(0xbebfbc70u),
  T8(0x289b7ec6u), T8(0xeaa127fau), T8(0xd4ef3085u), T8(0x04881d05u),
  T8(0xd9d4d039u), T8(0xe6db99e5u), T8(0x1fa27cf8u), T8(0xc4ac5665u),
  T8(0xf4292244u), T8(0x432aff97u), T8(0xab9423a7u), T8(0xfc93a039u),
  T8(0x655b59c3u), T8(0x8f0ccc92u), T8(0xffeff47du), T8(0x85845dd1u),
  T8(0x6fa87e4fu), T8(0xfe2ce6e0u), T8(0xa3014314u), T8(0x4e0811a1u),
  T8(0xf7537e82u), T8(0xbd3af235u), T8(0x2ad7d2bbu), T8(0xeb86d391u),
};
#undef T8

typedef void kernel_fn(uint32_t st[4][LANES], const uint8_t *const p[LANES], const size_t stride[LANES], size_t nblocks);

// AVX2: F(X,Y,Z) = XY v not(X) Z = Z ^ (X & (Y ^ Z)); G(X,Y,Z) = XZ v Y not(Z), two disjoint terms, added: Y not(Z)
// before X is known (G_PRE), then XZ; H = X ^ (Y ^ Z); I(X,Y,Z) = Y ^ (X v not(Z)). No vector rotate: two shifts, an or.
#define KERNEL_NAME md5x8_avx2
#define KERNEL_TARGET "avx2"
#define F(x, y, z) _mm256_xor_si256(z, _mm256_and_si256(x, _mm256_xor_si256(y, z)))
#define F_PRE(s, x, y, z) (s)
#define G(x, y, z) _mm256_and_si256(x, z)
#define G_PRE(s, x, y, z) _mm256_add_epi32(s, _mm256_andnot_si256(z, y))
#define H(x, y, z) _mm256_xor_si256(x, _mm256_xor_si256(y, z))
#define H_PRE(s, x, y, z) (s)
#define I(x, y, z) _mm256_xor_si256(y, _mm256_or_si256(x, _mm256_xor_si256(z, _mm256_set1_epi32(-1))))
#define I_PRE(s, x, y, z) (s)
#define ROTL(v, s) _mm256_or_si256(_mm256_slli_epi32(v, s), _mm256_srli_epi32(v, 32 - (s)))
#include "md5x8-kernel.h"
#undef KERNEL_NAME
#undef KERNEL_TARGET
#undef F
#undef G
#undef H
#undef I
#undef F_PRE
#undef G_PRE
#undef H_PRE
#undef I_PRE
#undef ROTL

// AVX-512VL on the same 256-bit registers: each round function is one vpternlogd (its truth table as the immediate,
// index = x << 2 | y << 1 | z) and the rotation one vprold, which shortens the serial chain of a step to 4 operations.
#define KERNEL_NAME md5x8_avx512vl
#define KERNEL_TARGET "avx2,avx512f,avx512vl"
#define F(x, y, z) _mm256_ternarylogic_epi32(x, y, z, 0xca)
#define G(x, y, z) _mm256_ternarylogic_epi32(x, y, z, 0xe4)
#define H(x, y, z) _mm256_ternarylogic_epi32(x, y, z, 0x96)
#define I(x, y, z) _mm256_ternarylogic_epi32(x, y, z, 0x39)
#define F_PRE(s, x, y, z) (s)
#define G_PRE(s, x, y, z) (s)
#define H_PRE(s, x, y, z) (s)
#define I_PRE(s, x, y, z) (s)
#define ROTL(v, s) _mm256_rol_epi32(v, s)
#include "md5x8-kernel.h"
#undef KERNEL_NAME
#undef KERNEL_TARGET
#undef F
#undef G
#undef H
#undef I
#undef F_PRE
#undef G_PRE
#undef H_PRE
#undef I_PRE
#undef ROTL

EXPORT int md5multi_kernels(void) {
  __builtin_cpu_init();
  int k = 0;
  if (__builtin_cpu_supports("avx2")) k |= 1;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")) k |= 2;
  return k;
}

// One lane's message: its whole 64-byte blocks read in place, then 1 or 2 blocks of tail (the last len % 64 bytes,
// 0x80, zeros, the bit length as 64 bits little-endian: RFC 1321 sections 3.1 and 3.2) from the lane's own copy.
struct lane {
  const uint8_t *ptr;
  uint64_t left;  // blocks left in the current part
  int part;       // 0: the message's whole blocks, 1: its tail, 2: idle (no message left)
  uint32_t job;
  uint64_t ntail;
  uint8_t tail[128];
};

static const uint8_t idle_block[64];

static void lane_start(struct lane *l, uint32_t st[4][LANES], int i, const uint8_t *p, uint64_t len, uint32_t job) {
  const uint64_t whole = len / 64, rem = len % 64;
  memset(l->tail, 0, sizeof l->tail);
  if (rem) memcpy(l->tail, p + whole * 64, rem);
  l->tail[rem] = 0x80;
  l->ntail = rem < 56 ? 1 : 2;
  const uint64_t bits = len << 3;  // modulo 2^64, as the RFC says
  for (int k = 0; k < 8; k++) l->tail[l->ntail * 64 - 8 + k] = (uint8_t)(bits >> (8 * k));
  st[0][i] = 0x67452301u;
  st[1][i] = 0xefcdab89u;
  st[2][i] = 0x98badcfeu;
  st[3][i] = 0x10325476u;
  l->job = job;
  if (whole) {
    l->part = 0;
    l->ptr = p;
    l->left = whole;
  } else {
    l->part = 1;
    l->ptr = l->tail;
    l->left = l->ntail;
  }
}

EXPORT int md5multi_many(const uint8_t *const *ptrs, const double *lens, uint32_t n, uint8_t *out, int kernel) {
  const int have = md5multi_kernels();
  if (kernel == 0) kernel = (have & 2) ? 2 : (have & 1) ? 1 : -1;
  if (kernel < 1 || kernel > 2 || !(have & (1 << (kernel - 1)))) return -1;
  kernel_fn *run = kernel == 2 ? md5x8_avx512vl : md5x8_avx2;

  uint32_t st[4][LANES] __attribute__((aligned(32)));
  struct lane lanes[LANES];
  uint32_t next = 0;
  memset(st, 0, sizeof st);
  for (int i = 0; i < LANES; i++) {
    if (next < n) {
      lane_start(&lanes[i], st, i, ptrs[next], (uint64_t)lens[next], next);
      next++;
    } else {
      lanes[i].part = 2;
    }
  }
  // Lanes run together for as many blocks as the shortest current part has left; then the lanes whose part ended
  // move on (to their tail, or to the next message: its digest is out), the idle ones reading a block of zeros.
  for (;;) {
    uint64_t k = UINT64_MAX;
    const uint8_t *p[LANES];
    size_t stride[LANES];
    for (int i = 0; i < LANES; i++) {
      if (lanes[i].part == 2) {
        p[i] = idle_block;
        stride[i] = 0;
      } else {
        p[i] = lanes[i].ptr;
        stride[i] = 64;
        if (lanes[i].left < k) k = lanes[i].left;
      }
    }
    if (k == UINT64_MAX) break;
    run(st, p, stride, (size_t)k);
    for (int i = 0; i < LANES; i++) {
      struct lane *l = &lanes[i];
      if (l->part == 2) continue;
      l->ptr += 64 * k;
      l->left -= k;
      if (l->left) continue;
      if (l->part == 0) {
        l->part = 1;
        l->ptr = l->tail;
        l->left = l->ntail;
        continue;
      }
      // The digest: A, B, C, D, each low byte first (RFC 1321 section 3.5).
      uint8_t *d = out + 16 * (size_t)l->job;
      for (int w = 0; w < 4; w++)
        for (int b = 0; b < 4; b++) d[4 * w + b] = (uint8_t)(st[w][i] >> (8 * b));
      if (next < n) {
        lane_start(l, st, i, ptrs[next], (uint64_t)lens[next], next);
        next++;
      } else {
        l->part = 2;
      }
    }
  }
  return kernel;
}

#else
// Not x86-64: no kernel here; callers use node:crypto.
EXPORT int md5multi_kernels(void) { return 0; }
EXPORT int md5multi_many(const uint8_t *const *ptrs, const double *lens, uint32_t n, uint8_t *out, int kernel) {
  (void)ptrs; (void)lens; (void)n; (void)out; (void)kernel;
  return -1;
}
#endif
