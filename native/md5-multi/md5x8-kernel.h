// One multi-buffer MD5 kernel (RFC 1321, section 3.4): `nblocks` 64-byte blocks of each of 8 independent messages, lane
// i of every vector holding message i's state. Included by md5-multi.c once per instruction set, with KERNEL_NAME,
// KERNEL_TARGET and the round functions F, G, H, I and the rotation ROTL defined for it.

__attribute__((target(KERNEL_TARGET)))
static void KERNEL_NAME(uint32_t st[4][LANES], const uint8_t *const p[LANES], const size_t stride[LANES], size_t nblocks) {
  __m256i a = _mm256_loadu_si256((const __m256i *)st[0]);
  __m256i b = _mm256_loadu_si256((const __m256i *)st[1]);
  __m256i c = _mm256_loadu_si256((const __m256i *)st[2]);
  __m256i d = _mm256_loadu_si256((const __m256i *)st[3]);
  const uint8_t *q[LANES];
  for (int i = 0; i < LANES; i++) q[i] = p[i];
  // T through an opaque pointer: GCC would otherwise rebuild each constant with a mov, vmovd and vpbroadcastd
  // instead of adding it from memory.
  const uint32_t (*t)[LANES] = T;
  __asm__("" : "+r"(t));
  for (size_t n = 0; n < nblocks; n++) {
    // X[0..15] of RFC 1321 for all lanes: load each lane's 16 little-endian words, then transpose (8 x 8 twice) so that
    // x[j] holds word j of every lane.
    __m256i x[16];
    for (int half = 0; half < 2; half++) {
      __m256i r0 = _mm256_loadu_si256((const __m256i *)(q[0] + 32 * half));
      __m256i r1 = _mm256_loadu_si256((const __m256i *)(q[1] + 32 * half));
      __m256i r2 = _mm256_loadu_si256((const __m256i *)(q[2] + 32 * half));
      __m256i r3 = _mm256_loadu_si256((const __m256i *)(q[3] + 32 * half));
      __m256i r4 = _mm256_loadu_si256((const __m256i *)(q[4] + 32 * half));
      __m256i r5 = _mm256_loadu_si256((const __m256i *)(q[5] + 32 * half));
      __m256i r6 = _mm256_loadu_si256((const __m256i *)(q[6] + 32 * half));
      __m256i r7 = _mm256_loadu_si256((const __m256i *)(q[7] + 32 * half));
      __m256i t0 = _mm256_unpacklo_epi32(r0, r1), t1 = _mm256_unpackhi_epi32(r0, r1);
      __m256i t2 = _mm256_unpacklo_epi32(r2, r3), t3 = _mm256_unpackhi_epi32(r2, r3);
      __m256i t4 = _mm256_unpacklo_epi32(r4, r5), t5 = _mm256_unpackhi_epi32(r4, r5);
      __m256i t6 = _mm256_unpacklo_epi32(r6, r7), t7 = _mm256_unpackhi_epi32(r6, r7);
      __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
      __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
      __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
      __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
      __m256i *w = x + 8 * half;
      w[0] = _mm256_permute2x128_si256(u0, u4, 0x20);
      w[1] = _mm256_permute2x128_si256(u1, u5, 0x20);
      w[2] = _mm256_permute2x128_si256(u2, u6, 0x20);
      w[3] = _mm256_permute2x128_si256(u3, u7, 0x20);
      w[4] = _mm256_permute2x128_si256(u0, u4, 0x31);
      w[5] = _mm256_permute2x128_si256(u1, u5, 0x31);
      w[6] = _mm256_permute2x128_si256(u2, u6, 0x31);
      w[7] = _mm256_permute2x128_si256(u3, u7, 0x31);
    }
    const __m256i aa = a, bb = b, cc = c, dd = d;
    // a = b + ((a + FN(b,c,d) + X[k] + T[i]) <<< s). a + X[k] + T[i] (and FN##_PRE: the part of FN that does not
    // depend on b, when FN splits into two disjoint terms) does not wait for the previous step; the empty asm keeps
    // the compiler from reassociating the adds so that the one after FN is the only one on the serial chain.
#define STEP(FN, a, b, c, d, k, s, i) { \
    __m256i s_ = _mm256_add_epi32(a, _mm256_add_epi32(x[k], _mm256_load_si256((const __m256i *)t[i]))); \
    s_ = FN##_PRE(s_, b, c, d); \
    __asm__("" : "+x"(s_)); \
    a = _mm256_add_epi32(s_, FN(b, c, d)); \
    a = ROTL(a, s); \
    a = _mm256_add_epi32(a, b); }
    // Round 1.
    STEP(F, a, b, c, d, 0, 7, 0)    STEP(F, d, a, b, c, 1, 12, 1)   STEP(F, c, d, a, b, 2, 17, 2)   STEP(F, b, c, d, a, 3, 22, 3)
    STEP(F, a, b, c, d, 4, 7, 4)    STEP(F, d, a, b, c, 5, 12, 5)   STEP(F, c, d, a, b, 6, 17, 6)   STEP(F, b, c, d, a, 7, 22, 7)
    STEP(F, a, b, c, d, 8, 7, 8)    STEP(F, d, a, b, c, 9, 12, 9)   STEP(F, c, d, a, b, 10, 17, 10) STEP(F, b, c, d, a, 11, 22, 11)
    STEP(F, a, b, c, d, 12, 7, 12)  STEP(F, d, a, b, c, 13, 12, 13) STEP(F, c, d, a, b, 14, 17, 14) STEP(F, b, c, d, a, 15, 22, 15)
    // Round 2.
    STEP(G, a, b, c, d, 1, 5, 16)   STEP(G, d, a, b, c, 6, 9, 17)   STEP(G, c, d, a, b, 11, 14, 18) STEP(G, b, c, d, a, 0, 20, 19)
    STEP(G, a, b, c, d, 5, 5, 20)   STEP(G, d, a, b, c, 10, 9, 21)  STEP(G, c, d, a, b, 15, 14, 22) STEP(G, b, c, d, a, 4, 20, 23)
    STEP(G, a, b, c, d, 9, 5, 24)   STEP(G, d, a, b, c, 14, 9, 25)  STEP(G, c, d, a, b, 3, 14, 26)  STEP(G, b, c, d, a, 8, 20, 27)
    STEP(G, a, b, c, d, 13, 5, 28)  STEP(G, d, a, b, c, 2, 9, 29)   STEP(G, c, d, a, b, 7, 14, 30)  STEP(G, b, c, d, a, 12, 20, 31)
    // Round 3.
    STEP(H, a, b, c, d, 5, 4, 32)   STEP(H, d, a, b, c, 8, 11, 33)  STEP(H, c, d, a, b, 11, 16, 34) STEP(H, b, c, d, a, 14, 23, 35)
    STEP(H, a, b, c, d, 1, 4, 36)   STEP(H, d, a, b, c, 4, 11, 37)  STEP(H, c, d, a, b, 7, 16, 38)  STEP(H, b, c, d, a, 10, 23, 39)
    STEP(H, a, b, c, d, 13, 4, 40)  STEP(H, d, a, b, c, 0, 11, 41)  STEP(H, c, d, a, b, 3, 16, 42)  STEP(H, b, c, d, a, 6, 23, 43)
    STEP(H, a, b, c, d, 9, 4, 44)   STEP(H, d, a, b, c, 12, 11, 45) STEP(H, c, d, a, b, 15, 16, 46) STEP(H, b, c, d, a, 2, 23, 47)
    // Round 4.
    STEP(I, a, b, c, d, 0, 6, 48)   STEP(I, d, a, b, c, 7, 10, 49)  STEP(I, c, d, a, b, 14, 15, 50) STEP(I, b, c, d, a, 5, 21, 51)
    STEP(I, a, b, c, d, 12, 6, 52)  STEP(I, d, a, b, c, 3, 10, 53)  STEP(I, c, d, a, b, 10, 15, 54) STEP(I, b, c, d, a, 1, 21, 55)
    STEP(I, a, b, c, d, 8, 6, 56)   STEP(I, d, a, b, c, 15, 10, 57) STEP(I, c, d, a, b, 6, 15, 58)  STEP(I, b, c, d, a, 13, 21, 59)
    STEP(I, a, b, c, d, 4, 6, 60)   STEP(I, d, a, b, c, 11, 10, 61) STEP(I, c, d, a, b, 2, 15, 62)  STEP(I, b, c, d, a, 9, 21, 63)
#undef STEP
    a = _mm256_add_epi32(a, aa);
    b = _mm256_add_epi32(b, bb);
    c = _mm256_add_epi32(c, cc);
    d = _mm256_add_epi32(d, dd);
    for (int i = 0; i < LANES; i++) q[i] += stride[i];
  }
  _mm256_storeu_si256((__m256i *)st[0], a);
  _mm256_storeu_si256((__m256i *)st[1], b);
  _mm256_storeu_si256((__m256i *)st[2], c);
  _mm256_storeu_si256((__m256i *)st[3], d);
}
