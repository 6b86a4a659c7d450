// AVX2 + FMA + F16C paths of the fused 4-bit GEMV/GEMM and the dense GEMM, for CPUs without AVX-512 (most
// laptops and desktops, AMD before Zen 4) and for float16 compute on x86 CPUs without a faster path.
// Functions carry target attributes and run only after a CPU feature check.
//
// The 16-entry code table lives in byte planes, one vpshufb each. Packed bytes widen to registers of 32
// nibble indices (16 bytes: high nibbles, elements 2j, in the low 128-bit lane and low nibbles, elements
// 2j + 1, in the high lane; 32 bytes: one register of high nibbles and one of low nibbles), and
//  - bfloat16 compute looks up the low and high byte of bfloat16(code), interleaves them (vpunpck) into
//    words and widens each word to float32 with a shift or a mask: 2 lookups + 2 unpacks + 4 ALU ops for
//    32 weights, instead of 2 vpermps + a blend per 8 weights;
//  - float32 compute looks up the 4 bytes of the float32 code and interleaves them twice;
//  - float16 compute does the same with bitsandbytes' float16 weights themselves: per block, the 16 values
//    fp16(code * absmax), widened to float32 (exactly) and transposed into byte planes, byte 0 (always zero)
//    not looked up. (Looking up float16 words and widening each with vcvtph2ps was 1.6x slower: vcvtph2ps is
//    costly on Zen 3.)
// The lookups come out in a fixed permuted order; x is prepared once per call in that order (rounded to the
// compute dtype), so the dot product needs no shuffles. Per block, the sum of code * x is scaled by the
// block's absmax (bfloat16: as on the AVX512-BF16 path, the table is rounded to bfloat16 instead of each
// code * absmax; see gemm4_test.cpp for the bound). The output is rounded to the compute dtype.
//
// M > 1 decodes each chunk once for a group of up to 4 tokens (gemv_batch).
#include <cpuid.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "kernels/cpu/avx2_common.h"
#include "kernels/cpu/gemm4.h"
#include "nibble/tensor.h"

#define NB_F16C __attribute__((target("avx2,fma,f16c")))

namespace nibble::kernels::avx2 {

namespace {

// Scratch that grows to the largest size asked of it and is reused, so the decode loop allocates nothing
// after its first token.
// 64-byte aligned (x is read with 32-byte loads; an unlucky malloc alignment would split every other one
// across cache lines).
float* scratch(std::vector<float>& v, size_t n) {
  if (v.size() < n + 16) v.resize(n + 16);
  const uintptr_t p = reinterpret_cast<uintptr_t>(v.data());
  return reinterpret_cast<float*>((p + 63) & ~static_cast<uintptr_t>(63));
}

// A chunk of 32 weights (16 packed bytes) becomes one register of nibble indices, position p in 0..31
// holding element p < 16 ? 2p : 2(p - 16) + 1 (high nibbles in the low lane). A chunk of 64 (32 bytes, when
// the blocksize allows) becomes two, high nibbles (elements 2p) and low ones (2p + 1), saving the lane
// insert and half the nibble masking. decode() turns a register into 4 float32 registers; lane `lane` of
// register i holds position pos_of(cd, i, lane).
int pos_of(DType cd, int i, int lane) {
  const int half = lane / 4, q = lane % 4;
  switch (cd) {
    case DType::BFloat16:  // words from vpunpck{l,h}bw (i / 2), low/high word of each dword (i % 2)
      return half * 16 + (i / 2) * 8 + 2 * q + (i % 2);
    default:  // float32 and float16: dwords from vpunpck{l,h}wd of the byte interleaves
      return half * 16 + i * 4 + q;
  }
}

// The element (within its chunk) that float slot s of the decoded chunk holds.
int elem_of(DType cd, int64_t chunk, int s) {
  const int g = s / 8, lane = s % 8;
  if (chunk == 64) return 2 * pos_of(cd, g % 4, lane) + g / 4;
  const int p = pos_of(cd, g, lane);
  return p < 16 ? 2 * p : 2 * (p - 16) + 1;
}

// Finite float32 lanes with the low Bits mantissa bits rounded off (to nearest even), kept as float32:
// bfloat16 (Bits = 16); float16 (13) where the results are normal float16s.
template <int Bits>
NB_F16C inline __m256 round_low_bits(__m256 v) {
  const __m256i b = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, Bits), _mm256_set1_epi32(1));
  const __m256i r = _mm256_add_epi32(b, _mm256_add_epi32(lsb, _mm256_set1_epi32((1 << (Bits - 1)) - 1)));
  return _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32(static_cast<int>(~0u << Bits))));
}

// Finite float32 lanes rounded to the compute dtype (round to nearest even, as float_to_bf16 /
// float_to_fp16), kept as float32.
NB_F16C inline __m256 round_vec(__m256 v, DType cd) {
  if (cd == DType::Float16) return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  if (cd != DType::BFloat16) return v;
  return round_low_bits<16>(v);
}

// n floats (n % 8 == 0) rounded to the compute dtype in place
NB_F16C void round_in_place(float* v, int64_t n, DType cd) {
  if (cd == DType::Float32) return;
  for (int64_t i = 0; i < n; i += 8) _mm256_storeu_ps(v + i, round_vec(_mm256_loadu_ps(v + i), cd));
}

// x rounded to the compute dtype, each chunk of `chunk` elements in the order decode() produces for `order`
float* prepare_x(const float* x, int64_t M, int64_t K, DType round, DType order, int64_t chunk,
                 std::vector<float>& buf) {
  std::array<int, 64> src{};
  for (int s = 0; s < chunk; ++s) src[static_cast<size_t>(s)] = elem_of(order, chunk, s);
  float* xd = scratch(buf, static_cast<size_t>(M * K));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < K; c += chunk)
      for (int s = 0; s < chunk; ++s) xd[m * K + c + s] = x[m * K + c + src[static_cast<size_t>(s)]];
  round_in_place(xd, M * K, round);
  return xd;
}

// Byte planes of the 16-entry table in the compute dtype, each broadcast to both 128-bit lanes.
struct Lut {
  __m256i plane[4];
};

NB_F16C Lut make_lut(const float* code, DType cd) {
  alignas(32) uint8_t b[4][32];
  for (int e = 0; e < 16; ++e) {
    uint32_t bits;
    if (cd == DType::BFloat16) {
      bits = float_to_bf16(code[e]);
    } else {
      __builtin_memcpy(&bits, &code[e], 4);
    }
    for (int k = 0; k < 4; ++k) b[k][e] = b[k][e + 16] = static_cast<uint8_t>(bits >> (8 * k));
  }
  Lut t;
  for (int k = 0; k < 4; ++k) t.plane[k] = _mm256_load_si256(reinterpret_cast<const __m256i*>(b[k]));
  return t;
}

// float16 compute looks up bitsandbytes' dequantized weight itself, fp16(code * absmax): per block, the 16
// values widened to float32 (exactly) as 4 byte planes. The rounding to float16 is integer arithmetic on the
// float32 bits (round to nearest even at mantissa bit 13) where every nonzero value of the block is a normal
// float16 (`Fp16Blocks::normal`: a range check on absmax alone), else vcvtps2ph / vcvtph2ps (subnormals,
// overflow, NaN); the F16C pair costs ~4 cycles per 4 values on CPUs with 128-bit vector units (Zen 1). The
// planes are gathered in 128-bit registers (a byte shuffle per 4 entries, a 4 x 4 dword transpose):
// cross-lane vpermd and vperm2i128 cost several uops each on those CPUs.
struct Fp16Blocks {
  __m256 code[2] = {};   // the code table
  float lo = 0, hi = 0;  // absmax in [lo, hi]: code * absmax is zero or a normal float16 for every entry

  Fp16Blocks() = default;  // unused (compute dtypes other than float16)

  NB_F16C explicit Fp16Blocks(const float* c) {
    code[0] = _mm256_loadu_ps(c);
    code[1] = _mm256_loadu_ps(c + 8);
    float cmin = INFINITY, cmax = 0;
    for (int e = 0; e < 16; ++e) {
      const float a = std::fabs(c[e]);
      if (a > 0) {
        cmin = std::min(cmin, a);
        cmax = std::max(cmax, a);
      }
    }
    if (!(cmax > 0 && cmax < INFINITY)) return;  // empty range: always the F16C path
    // the smallest absmax with cmin * absmax >= 2^-14 and the largest with cmax * absmax <= 65504, checked on
    // the float32 products the kernel computes (so rounding of the division cannot let a block through)
    lo = 0x1p-14f / cmin;
    while (cmin * lo < 0x1p-14f) lo = std::nextafter(lo, INFINITY);
    hi = 65504.0f / cmax;
    while (cmax * hi > 65504.0f) hi = std::nextafter(hi, 0.0f);
  }
  bool normal(float absmax) const { return absmax >= lo && absmax <= hi; }
};

NB_F16C inline Lut block_lut_fp16(const Fp16Blocks& fb, float absmax) {
  const __m256 s = _mm256_set1_ps(absmax);
  __m256 v[2];
  if (fb.normal(absmax)) {
    for (int h = 0; h < 2; ++h) v[h] = round_low_bits<13>(_mm256_mul_ps(fb.code[h], s));
  } else {
    for (int h = 0; h < 2; ++h)
      v[h] = _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_mul_ps(fb.code[h], s), _MM_FROUND_TO_NEAREST_INT));
  }
  // per 4 entries: byte k of each entry gathered into dword k
  const __m256i by_byte = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, 0, 4, 8, 12,
                                           1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m256i g0 = _mm256_shuffle_epi8(_mm256_castps_si256(v[0]), by_byte);
  const __m256i g1 = _mm256_shuffle_epi8(_mm256_castps_si256(v[1]), by_byte);
  const __m128i q0 = _mm256_castsi256_si128(g0), q1 = _mm256_extracti128_si256(g0, 1);
  const __m128i q2 = _mm256_castsi256_si128(g1), q3 = _mm256_extracti128_si256(g1, 1);
  const __m128i lo01 = _mm_unpacklo_epi32(q0, q1), lo23 = _mm_unpacklo_epi32(q2, q3);
  const __m128i hi01 = _mm_unpackhi_epi32(q0, q1), hi23 = _mm_unpackhi_epi32(q2, q3);
  const __m128i p[4] = {_mm_unpacklo_epi64(lo01, lo23), _mm_unpackhi_epi64(lo01, lo23),
                        _mm_unpacklo_epi64(hi01, hi23), _mm_unpackhi_epi64(hi01, hi23)};
  Lut lut;
  for (int k = 0; k < 4; ++k) lut.plane[k] = _mm256_broadcastsi128_si256(p[k]);
  return lut;
}

// float16 looks up float32 planes (of each block's float16 weights, widened)
constexpr DType lookup(DType cd) {
  return cd == DType::Float16 ? DType::Float32 : cd;
}

template <DType CD>
NB_F16C inline void decode(__m256i idx, const Lut& t, __m256 f[4]) {
  // float16 compute: byte 0 of a float16 widened to float32 is always zero (no lookup)
  const __m256i b0 = CD == DType::Float16 ? _mm256_setzero_si256() : _mm256_shuffle_epi8(t.plane[0], idx);
  const __m256i b1 = _mm256_shuffle_epi8(t.plane[1], idx);
  const __m256i w0 = _mm256_unpacklo_epi8(b0, b1), w1 = _mm256_unpackhi_epi8(b0, b1);
  if constexpr (CD == DType::BFloat16) {
    const __m256i hi = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
    f[0] = _mm256_castsi256_ps(_mm256_slli_epi32(w0, 16));
    f[1] = _mm256_castsi256_ps(_mm256_and_si256(w0, hi));
    f[2] = _mm256_castsi256_ps(_mm256_slli_epi32(w1, 16));
    f[3] = _mm256_castsi256_ps(_mm256_and_si256(w1, hi));
  } else {
    const __m256i b2 = _mm256_shuffle_epi8(t.plane[2], idx), b3 = _mm256_shuffle_epi8(t.plane[3], idx);
    const __m256i v0 = _mm256_unpacklo_epi8(b2, b3), v1 = _mm256_unpackhi_epi8(b2, b3);
    f[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(w0, v0));
    f[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(w0, v0));
    f[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(w1, v1));
    f[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(w1, v1));
  }
}

// y[n] for rows [n0, n1) of a single token, blocksize 32 (or any not a multiple of 64; gemv64 below takes the
// rest); xd prepared in CD's order for chunks of 32. CD is the compute dtype the table is rounded to.
template <DType CD>
NB_F16C void gemv32(const Q4Weights& w, DType cd, const float* xd, float* y, int64_t n0, int64_t n1) {
  const int64_t K = w.K, bs = w.blocksize, nbr = K / bs;
  Lut t = make_lut(w.code, cd);  // float16: rebuilt per block
  const Fp16Blocks fb = CD == DType::Float16 ? Fp16Blocks(w.code) : Fp16Blocks();
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w.packed + n * K / 2;
    __m256 total0 = _mm256_setzero_ps(), total1 = _mm256_setzero_ps(), a0, a1, a2, a3;
    for (int64_t b = 0; b < nbr; ++b) {
      // float16: the looked-up weights carry their absmax
      if constexpr (CD == DType::Float16) t = block_lut_fp16(fb, w.block_absmax(n * nbr + b));
      a0 = a1 = a2 = a3 = _mm256_setzero_ps();
      for (int64_t c = b * bs; c < (b + 1) * bs; c += 32) {
        __m256 f[4];
        decode<CD>(nibble_indices(row + c / 2), t, f);
        a0 = _mm256_fmadd_ps(f[0], _mm256_loadu_ps(xd + c), a0);
        a1 = _mm256_fmadd_ps(f[1], _mm256_loadu_ps(xd + c + 8), a1);
        a2 = _mm256_fmadd_ps(f[2], _mm256_loadu_ps(xd + c + 16), a2);
        a3 = _mm256_fmadd_ps(f[3], _mm256_loadu_ps(xd + c + 24), a3);
      }
      if constexpr (CD == DType::Float16) {  // fresh accumulators per block: short FMA chains
        total0 = _mm256_add_ps(total0, _mm256_add_ps(a0, a1));
        total1 = _mm256_add_ps(total1, _mm256_add_ps(a2, a3));
      } else {
        const __m256 s = _mm256_set1_ps(w.block_absmax(n * nbr + b));
        total0 = _mm256_fmadd_ps(_mm256_add_ps(a0, a1), s, total0);
        total1 = _mm256_fmadd_ps(_mm256_add_ps(a2, a3), s, total1);
      }
    }
    y[n] = round_to(cd, hsum(_mm256_add_ps(total0, total1)));  // the output in the compute dtype
  }
}

// Blocksize a multiple of 64 (every compute dtype; float16 rebuilds its table per block and adds each
// block's sums unscaled, as gemv32):
// per block, products started with a multiply (no zeroed accumulators), four chains, at most four decoded
// registers live (the generic loop's eight spilled its totals to the stack), the nested absmax decoded
// without block_absmax's branches. Single-core L3-resident 1.1x the generic loop, decode 1.08x end to end
// (Zen 3).
template <DType CD, bool Nested>
NB_F16C void gemv64(const Q4Weights& w, DType cd, const float* xd, float* y, int64_t n0, int64_t n1) {
  const int64_t K = w.K, bs = w.blocksize, nbr = K / bs, shift = w.nested_shift;
  Lut t = make_lut(w.code, cd);  // float16: rebuilt per block
  const Fp16Blocks fb = CD == DType::Float16 ? Fp16Blocks(w.code) : Fp16Blocks();
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w.packed + n * K / 2;
    __m256 t0 = _mm256_setzero_ps(), t1 = t0;
    for (int64_t b = 0; b < nbr; ++b) {
      const int64_t nb = n * nbr + b;
      float absmax;
      if constexpr (Nested)
        absmax = w.code2[w.absmax_q[nb]] * w.absmax2[shift >= 0 ? nb >> shift : nb / w.nested_blocksize] +
                 w.offset;
      else
        absmax = w.absmax[nb];
      if constexpr (CD == DType::Float16) t = block_lut_fp16(fb, absmax);
      // 64 weights at a time, high nibbles then low ones (4 decoded registers live, not 8)
      __m256 a0, a1, a2, a3, f[4];
      int64_t c = b * bs;
      __m256i hi, lo;
      nibble_indices64(row + c / 2, hi, lo);
      decode<CD>(hi, t, f);
      a0 = _mm256_mul_ps(f[0], _mm256_loadu_ps(xd + c));
      a1 = _mm256_mul_ps(f[1], _mm256_loadu_ps(xd + c + 8));
      a2 = _mm256_mul_ps(f[2], _mm256_loadu_ps(xd + c + 16));
      a3 = _mm256_mul_ps(f[3], _mm256_loadu_ps(xd + c + 24));
      for (;;) {
        decode<CD>(lo, t, f);
        a0 = _mm256_fmadd_ps(f[0], _mm256_loadu_ps(xd + c + 32), a0);
        a1 = _mm256_fmadd_ps(f[1], _mm256_loadu_ps(xd + c + 40), a1);
        a2 = _mm256_fmadd_ps(f[2], _mm256_loadu_ps(xd + c + 48), a2);
        a3 = _mm256_fmadd_ps(f[3], _mm256_loadu_ps(xd + c + 56), a3);
        if ((c += 64) == (b + 1) * bs) break;
        nibble_indices64(row + c / 2, hi, lo);
        decode<CD>(hi, t, f);
        a0 = _mm256_fmadd_ps(f[0], _mm256_loadu_ps(xd + c), a0);
        a1 = _mm256_fmadd_ps(f[1], _mm256_loadu_ps(xd + c + 8), a1);
        a2 = _mm256_fmadd_ps(f[2], _mm256_loadu_ps(xd + c + 16), a2);
        a3 = _mm256_fmadd_ps(f[3], _mm256_loadu_ps(xd + c + 24), a3);
      }
      if constexpr (CD == DType::Float16) {  // the looked-up weights carry their absmax
        t0 = _mm256_add_ps(t0, _mm256_add_ps(a0, a1));
        t1 = _mm256_add_ps(t1, _mm256_add_ps(a2, a3));
      } else {
        const __m256 s = _mm256_set1_ps(absmax);
        t0 = _mm256_fmadd_ps(_mm256_add_ps(a0, a1), s, t0);
        t1 = _mm256_fmadd_ps(_mm256_add_ps(a2, a3), s, t1);
      }
    }
    y[n] = round_to(cd, hsum(_mm256_add_ps(t0, t1)));
  }
}

template <DType CD>
void gemv_rows(const Q4Weights& w, DType cd, const float* xd, float* y, int64_t chunk) {
#pragma omp parallel
  {
    const auto [a, b] = thread_rows(w.N);
    if (chunk == 64) {
      if (w.absmax)
        gemv64<CD, false>(w, cd, xd, y, a, b);
      else
        gemv64<CD, true>(w, cd, xd, y, a, b);
    } else {
      gemv32<CD>(w, cd, xd, y, a, b);
    }
  }
}

// Several tokens (M > 1): y[m, n] for MT tokens at once, each 32-weight chunk decoded once (as for a single
// token), scaled by its block's absmax and met by every token, so a group of tokens reads and decodes the
// weights once. xd: all M tokens prepared in CD's order, chunks of 32. Measured against decoding rows to a
// float32 buffer and streaming tokens over it: faster at every M from 2 to 128 (the float32 FMAs, one per
// 8 weights and token, are the limit either way).

template <DType CD, int MT>
NB_F16C void gemv_batch(const Q4Weights& w, DType cd, const float* xd, int64_t m0, float* y, int64_t n0,
                        int64_t n1) {
  // 2 accumulators per token whatever the group size, so a token's result does not depend on which tokens
  // share its group (a prefix recomputed after Session::truncate is bit-identical); 8 FMA chains in flight
  // at MT = 4
  constexpr int NA = 2;
  const int64_t K = w.K, N = w.N, bs = w.blocksize, nbr = K / bs;
  Lut t = make_lut(w.code, cd);  // float16: rebuilt per block
  const Fp16Blocks fb = CD == DType::Float16 ? Fp16Blocks(w.code) : Fp16Blocks();
  const float* xm = xd + m0 * K;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w.packed + n * K / 2;
    __m256 acc[MT][NA];
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m)
#pragma GCC unroll 8
      for (int a = 0; a < NA; ++a) acc[m][a] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nbr; ++b) {
      const float absmax = w.block_absmax(n * nbr + b);
      if constexpr (CD == DType::Float16) t = block_lut_fp16(fb, absmax);
      const __m256 s = _mm256_set1_ps(absmax);
      for (int64_t c = b * bs; c < (b + 1) * bs; c += 32) {
        __m256 f[4];
        decode<CD>(nibble_indices(row + c / 2), t, f);
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) {
          // float16: the looked-up weight already is fp16(code * absmax)
          const __m256 wv = CD == DType::Float16 ? f[i] : _mm256_mul_ps(f[i], s);
#pragma GCC unroll 8
          for (int m = 0; m < MT; ++m)
            acc[m][i % NA] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xm + m * K + c + 8 * i), acc[m][i % NA]);
        }
      }
    }
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) {
      __m256 sum = acc[m][0];
#pragma GCC unroll 8
      for (int a = 1; a < NA; ++a) sum = _mm256_add_ps(sum, acc[m][a]);
      y[(m0 + m) * N + n] = round_to(cd, hsum(sum));
    }
  }
}

// (no target attribute on functions holding an OpenMP region: clang outlines the region without it)
template <DType CD>
void gemv_batch_rows(const Q4Weights& w, DType cd, const float* xd, int64_t M, float* y) {
#pragma omp parallel
  {
    const auto rows = thread_rows(w.N);  // (a lambda may not capture structured bindings in clang 15)
    const int64_t a = rows.first, b = rows.second;
    for_token_groups(
        M, [&](auto mt, int64_t m0) { gemv_batch<CD, decltype(mt)::value>(w, cd, xd, m0, y, a, b); });
  }
}

// 8 weights of a dense row as float32
NB_F16C inline __m256 load8(const void* w, DType wdt, int64_t k) {
  if (wdt == DType::Float32) return _mm256_loadu_ps(static_cast<const float*>(w) + k);
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + k));
  if (wdt == DType::Float16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// Prompts (M >= kAvx2PanelMinTokens, not row-invariant): the weights are decoded once per call, a panel at a
// time, to what bitsandbytes' dequantize_4bit gives in the compute dtype (code * absmax in float32, rounded
// to bfloat16 / float16, widened back exactly), and a register-blocked GEMM meets them: 6 tokens x 16 rows
// of y in 12 accumulators, per k one load of 16 weights and 6 broadcasts of x (rounded to the compute
// dtype). The products are exact in float32 and each y[m, n] is one float32 chain over k in order (kept in y
// between panels), so the result does not depend on M or on which tokens share a tile. Panels: 16 strips of
// 16 rows x 256 k, [strip][k][16] (256 KiB, L2-resident while every token meets it). Decoding per call is
// amortised over the tokens; at few tokens the fused kernels above win (kAvx2PanelMinTokens, measured).
constexpr int64_t kStrip = 16, kPanelK = 256, kPanelStrips = 16;

// 8 registers of 8 floats transposed in place: v[i] lane l <-> v[l] lane i
NB_F16C inline void transpose8(__m256 v[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
  }
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    v[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

// P[(s * kc + k) * 16 + r] = weight (n0 + 16 s + r, k0 + k') for the rows [n0, n1) and k in [k0, k0 + kc),
// where k' runs through each chunk of 32 in the float32 lookup order (x is prepared in the same order); rows
// past n1 in the last strip are zero. The weight is bitsandbytes' dequantized value in the compute dtype.
// Eight rows at a time: each row's 32 weights looked up (byte planes of the float32 code), scaled and
// rounded, then 8x8 transposes turn rows into the panel's k-major vectors. kc % 32 == 0.
NB_F16C void decode_panel(const Q4Weights& w, DType cd, int64_t n0, int64_t n1, int64_t k0, int64_t kc,
                          float* P) {
  const Lut t = make_lut(w.code, DType::Float32);
  const int64_t K = w.K, bs = w.blocksize, nbr = K / bs, strips = (n1 - n0 + kStrip - 1) / kStrip;
  for (int64_t g = 0; g < strips * 2; ++g) {  // groups of 8 rows: half g % 2 of strip g / 2
    const int64_t r0 = n0 + 8 * g, rows = std::clamp<int64_t>(n1 - r0, 0, 8);
    float* dst = P + (g / 2) * kc * kStrip + (g % 2) * 8;
    for (int64_t c = k0; c < k0 + kc; c += 32) {
      __m256 f[4][8];
      for (int64_t i = 0; i < 8; ++i) {
        if (i >= rows) {
          for (int j = 0; j < 4; ++j) f[j][i] = _mm256_setzero_ps();
          continue;
        }
        const int64_t n = r0 + i;
        __m256 d[4];
        decode<DType::Float32>(nibble_indices(w.packed + n * K / 2 + c / 2), t, d);
        const __m256 s = _mm256_set1_ps(w.block_absmax(n * nbr + c / bs));
        for (int j = 0; j < 4; ++j) f[j][i] = round_vec(_mm256_mul_ps(d[j], s), cd);
      }
      float* out = dst + (c - k0) * kStrip;
      for (int j = 0; j < 4; ++j) {
        transpose8(f[j]);
        for (int l = 0; l < 8; ++l) _mm256_store_ps(out + (8 * j + l) * kStrip, f[j][l]);
      }
    }
  }
}

// The input gradient's panel, dx = dy @ W': output columns are W's columns, the sum runs over W's rows, so
// P[(s * jc + j) * 16 + c] = W'[j0 + j, b0 + 16 s + c] - each 16 weights of a row decoded in order and stored
// whole. W' is bitsandbytes' dequantized weight in the compute dtype. b0, b1 multiples of 16 (K % 32 == 0),
// so 16 columns never straddle a quantization block (blocksize % 32 == 0).
NB_F16C void decode_rows_panel(const Q4Weights& w, DType cd, int64_t b0, int64_t b1, int64_t j0, int64_t jc,
                               float* P) {
  const int64_t K = w.K, bs = w.blocksize, nbr = K / bs, strips = (b1 - b0) / kStrip;
  alignas(32) float tmp[16];
  for (int64_t j = 0; j < jc; ++j) {
    const int64_t n = j0 + j;
    const uint8_t* row = w.packed + n * K / 2;
    for (int64_t s = 0; s < strips; ++s) {
      const int64_t c0 = b0 + kStrip * s;
      const __m256 sc = _mm256_set1_ps(w.block_absmax(n * nbr + c0 / bs));
      for (int i = 0; i < 8; ++i) {
        const uint8_t b = row[c0 / 2 + i];
        tmp[2 * i] = w.code[b >> 4];
        tmp[2 * i + 1] = w.code[b & 15];
      }
      float* d = P + (s * jc + j) * kStrip;
      _mm256_store_ps(d, round_vec(_mm256_mul_ps(_mm256_load_ps(tmp), sc), cd));
      _mm256_store_ps(d + 8, round_vec(_mm256_mul_ps(_mm256_load_ps(tmp + 8), sc), cd));
    }
  }
}

// The same panel of dense rows (float32, or bfloat16 / float16 widened exactly). kc % 8 == 0.
NB_F16C void widen_panel(const void* wp, DType wdt, int64_t K, int64_t n0, int64_t n1, int64_t k0, int64_t kc,
                         float* P) {
  const size_t es = dtype_size(wdt);
  const int64_t strips = (n1 - n0 + kStrip - 1) / kStrip;
  alignas(32) float tmp[8];
  for (int64_t r = n1 - n0; r < strips * kStrip; ++r)
    for (int64_t k = 0; k < kc; ++k) P[((r / kStrip) * kc + k) * kStrip + r % kStrip] = 0.0f;
  for (int64_t n = n0; n < n1; ++n) {
    const void* row = static_cast<const uint8_t*>(wp) + static_cast<size_t>(n * K) * es;
    float* dst = P + ((n - n0) / kStrip) * kc * kStrip + (n - n0) % kStrip;
    for (int64_t k = 0; k < kc; k += 8) {
      _mm256_store_ps(tmp, load8(row, wdt, k0 + k));
#pragma GCC unroll 8
      for (int e = 0; e < 8; ++e) dst[(k + e) * kStrip] = tmp[e];
    }
  }
}

// y[0..MR, 0..16] (+)= x[0..MR, 0..kc] @ strip, x rows ldx apart, y rows ldy apart
template <int MR>
NB_F16C void panel_tile(const float* x, int64_t ldx, const float* strip, int64_t kc, float* y, int64_t ldy,
                        bool accumulate) {
  __m256 c[MR][2];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
    c[r][0] = accumulate ? _mm256_loadu_ps(y + r * ldy) : _mm256_setzero_ps();
    c[r][1] = accumulate ? _mm256_loadu_ps(y + r * ldy + 8) : _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(strip + k * kStrip), b1 = _mm256_load_ps(strip + k * kStrip + 8);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const __m256 a = _mm256_broadcast_ss(x + r * ldx + k);
      c[r][0] = _mm256_fmadd_ps(a, b0, c[r][0]);
      c[r][1] = _mm256_fmadd_ps(a, b1, c[r][1]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
    _mm256_storeu_ps(y + r * ldy, c[r][0]);
    _mm256_storeu_ps(y + r * ldy + 8, c[r][1]);
  }
}

// MR tokens against one strip of `cols` (<= 16) rows; a narrow strip goes through a 16-wide scratch tile
template <int MR>
NB_F16C void panel_strip(const float* x, int64_t ldx, const float* strip, int64_t kc, float* y, int64_t ldy,
                         int64_t cols, bool accumulate) {
  if (cols == kStrip) {
    panel_tile<MR>(x, ldx, strip, kc, y, ldy, accumulate);
    return;
  }
  alignas(32) float t[MR * kStrip] = {};
  for (int r = 0; r < MR; ++r)
    for (int64_t j = 0; j < cols && accumulate; ++j) t[r * kStrip + j] = y[r * ldy + j];
  panel_tile<MR>(x, ldx, strip, kc, t, kStrip, accumulate);
  for (int r = 0; r < MR; ++r)
    for (int64_t j = 0; j < cols; ++j) y[r * ldy + j] = t[r * kStrip + j];
}

// panel_strip for 1 .. 6 tokens
using StripFn = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, int64_t, bool);
constexpr StripFn kStripFns[6] = {panel_strip<1>, panel_strip<2>, panel_strip<3>,
                                  panel_strip<4>, panel_strip<5>, panel_strip<6>};

// This thread's rows [n0, n1) of y[M, N] = xr[M, K] @ W^T: panel by panel (fill(b0, b1, k0, kc, P) writes
// one), every token; the output rounded to `out` at the end.
template <class Fill>
NB_F16C void panel_rows(const Fill& fill, int64_t N, int64_t K, const float* xr, int64_t M, float* y,
                        int64_t n0, int64_t n1, float* P, DType out) {
  for (int64_t b0 = n0; b0 < n1; b0 += kPanelStrips * kStrip) {
    const int64_t b1 = std::min(n1, b0 + kPanelStrips * kStrip);
    for (int64_t k0 = 0; k0 < K; k0 += kPanelK) {
      const int64_t kc = std::min(kPanelK, K - k0);
      fill(b0, b1, k0, kc, P);
      for (int64_t m = 0; m < M; m += 6) {
        const float* xm = xr + m * K + k0;
        for (int64_t s = b0; s < b1; s += kStrip) {
          const float* strip = P + ((s - b0) / kStrip) * kc * kStrip;
          float* ym = y + m * N + s;
          const int64_t cols = std::min(kStrip, b1 - s);
          kStripFns[std::min<int64_t>(6, M - m) - 1](xm, K, strip, kc, ym, N, cols, k0 > 0);
        }
      }
    }
    if (out != DType::Float32)
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = b0; n < b1; ++n) y[m * N + n] = round_to(out, y[m * N + n]);
  }
}

thread_local std::vector<float> tl_panel;

template <class Fill>
void panel_gemm(const Fill& fill, int64_t N, int64_t K, const float* xr, int64_t M, float* y, DType out) {
  const int64_t strips = (N + kStrip - 1) / kStrip, per = kPanelStrips * kStrip * kPanelK;
  float* panels = scratch(tl_panel, static_cast<size_t>(per * omp_get_max_threads()));
#pragma omp parallel
  {
    // threads share whole strips
    const auto share = thread_rows(strips);
    const int64_t n0 = share.first * kStrip, n1 = std::min(N, share.second * kStrip);
    if (n0 < n1) panel_rows(fill, N, K, xr, M, y, n0, n1, panels + per * omp_get_thread_num(), out);
  }
}

// MT tokens (x rows ldx apart, y rows N apart), rows [n0, n1): y[m, n] = x_m . w_n, weights widened in
// registers once for all MT tokens. Each (row, token) is summed the same way whatever MT - two accumulators
// over 16-weight steps (a tail of 8 into the first), added, then the horizontal sum - so a token's result
// does not depend on the tokens beside it, and MT = 1 is the single-token GEMV.
template <int MT>
NB_F16C void dense_rows(const void* wp, DType wdt, int64_t K, const float* x, float* y, int64_t N, int64_t n0,
                        int64_t n1) {
  const size_t es = dtype_size(wdt);
  for (int64_t n = n0; n < n1; ++n) {
    const void* wn = static_cast<const uint8_t*>(wp) + static_cast<size_t>(n * K) * es;
    __m256 a0[MT], a1[MT];
#pragma GCC unroll 4
    for (int m = 0; m < MT; ++m) a0[m] = a1[m] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
      const __m256 w0 = load8(wn, wdt, k), w1 = load8(wn, wdt, k + 8);
#pragma GCC unroll 4
      for (int m = 0; m < MT; ++m) {
        a0[m] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + m * K + k), a0[m]);
        a1[m] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + m * K + k + 8), a1[m]);
      }
    }
    if (k < K) {
      const __m256 w0 = load8(wn, wdt, k);
#pragma GCC unroll 4
      for (int m = 0; m < MT; ++m) a0[m] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + m * K + k), a0[m]);
    }
#pragma GCC unroll 4
    for (int m = 0; m < MT; ++m) y[m * N + n] = hsum(_mm256_add_ps(a0[m], a1[m]));
  }
}

void dense_gemv(const void* wp, DType wdt, int64_t N, int64_t K, const float* x, float* y) {
#pragma omp parallel
  {
    const auto [n0, n1] = thread_rows(N);
    dense_rows<1>(wp, wdt, K, x, y, N, n0, n1);
  }
}

// M tokens: row blocks of ~16 KiB of weights (L1-resident while every group of tokens meets them), threads
// over blocks
void dense_tokens(const void* wp, DType wdt, int64_t N, int64_t K, const float* x, int64_t M, float* y) {
  const int64_t bytes = K * static_cast<int64_t>(dtype_size(wdt));
  const int64_t R = std::max<int64_t>(1, (int64_t{16} << 10) / bytes), blocks = (N + R - 1) / R;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t n0 = b * R, n1 = std::min(N, n0 + R);
    for_token_groups(M, [&](auto mt, int64_t m0) {
      dense_rows<decltype(mt)::value>(wp, wdt, K, x + m0 * K, y + m0 * N, N, n0, n1);
    });
  }
}

thread_local std::vector<float> tl_x;

// CPUID.1:ECX.F16C (clang's __builtin_cpu_supports does not know "f16c")
bool has_f16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) != 0;
}

}  // namespace

bool supported(DType compute) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c() &&
         (compute == DType::Float32 || compute == DType::BFloat16 || compute == DType::Float16);
}

// Requires: supported(compute), K % blocksize == 0, K % 32 == 0 (blocksize >= 32). invariant: a single
// token takes gemv_batch too (its sums are in gemv_batch's order, as when it shares a call).
void gemm_4bit(const Q4Weights& w, const float* x, int64_t M, float* y, DType compute, bool invariant) {
  if (!invariant && M >= kAvx2PanelMinTokens) {
    // x rounded to the compute dtype, each chunk of 32 in the float32 lookup's order (the panel's k order)
    const float* xr = prepare_x(x, M, w.K, compute, DType::Float32, 32, tl_x);
    const auto fill = [&](int64_t n0, int64_t n1, int64_t k0, int64_t kc, float* P) {
      decode_panel(w, compute, n0, n1, k0, kc, P);
    };
    panel_gemm(fill, w.N, w.K, xr, M, y, compute);
    return;
  }
  // bfloat16: 2-plane lookups of the code; float32: 4 planes; float16: 4 planes of each block's weights
  const bool single = M == 1 && !invariant;
  const int64_t chunk = single && w.blocksize % 64 == 0 ? 64 : 32;
  const float* xd = prepare_x(x, M, w.K, compute, lookup(compute), chunk, tl_x);
  if (single) {
    if (compute == DType::BFloat16)
      gemv_rows<DType::BFloat16>(w, compute, xd, y, chunk);
    else if (compute == DType::Float16)
      gemv_rows<DType::Float16>(w, compute, xd, y, chunk);
    else
      gemv_rows<DType::Float32>(w, compute, xd, y, chunk);
  } else if (compute == DType::BFloat16) {
    gemv_batch_rows<DType::BFloat16>(w, compute, xd, M, y);
  } else if (compute == DType::Float16) {
    gemv_batch_rows<DType::Float16>(w, compute, xd, M, y);
  } else {
    gemv_batch_rows<DType::Float32>(w, compute, xd, M, y);
  }
}

// Dense float32 / bfloat16 / float16 weights. bfloat16 weights meet x rounded to bfloat16, as on the
// AVX512-BF16 path; float32 and float16 weights meet float32 x (float16 widens exactly, as in the reference).
// Several tokens: blocks of rows small enough to stay in L1 meet every token in turn, each (row, token)
// summed exactly as the single-token GEMV sums it (dense_rows), so a row's result does not depend on M, and
// weights are widened in registers, never through a buffer. Prompt-sized calls outside row-invariant mode
// (kAvx2PanelMinTokens) take the panel GEMM instead (rows widened once per call). Requires K % 8 == 0.
void gemm_dense(const void* wp, DType wdt, int64_t N, int64_t K, const float* x, int64_t M, float* y,
                bool invariant) {
  const float* xs = x;
  if (wdt == DType::BFloat16) {
    float* xr = scratch(tl_x, static_cast<size_t>(M * K));
    for (int64_t i = 0; i < M * K; ++i) xr[i] = bf16_to_float(float_to_bf16(x[i]));
    xs = xr;
  }
  if (M == 1) {
    dense_gemv(wp, wdt, N, K, xs, y);
    return;
  }
  if (!invariant && M >= kAvx2PanelMinTokens) {
    const auto fill = [&](int64_t n0, int64_t n1, int64_t k0, int64_t kc, float* P) {
      widen_panel(wp, wdt, K, n0, n1, k0, kc, P);
    };
    panel_gemm(fill, N, K, xs, M, y, DType::Float32);
    return;
  }
  dense_tokens(wp, wdt, N, K, xs, M, y);
}

// dx[M, K] = dy[M, N] @ W' (W' bitsandbytes' dequantize_4bit in the compute dtype): the panel GEMM over W's
// rows as they are stored, no transposed copy. bfloat16 compute rounds dy to bfloat16 (as gemm_dense does for
// bfloat16 weights); float32 sums, float32 output. Requires K % 32 == 0, K % blocksize == 0.
void gemm_4bit_input_grad(const Q4Weights& w, const float* dy, int64_t M, float* dx, DType compute) {
  float* dr = scratch(tl_x, static_cast<size_t>(M * w.N + 8));
  std::copy(dy, dy + M * w.N, dr);
  if (compute == DType::BFloat16)
    for (int64_t i = 0; i < M * w.N; ++i) dr[i] = round_to(DType::BFloat16, dr[i]);
  const auto fill = [&](int64_t b0, int64_t b1, int64_t j0, int64_t jc, float* P) {
    decode_rows_panel(w, compute, b0, b1, j0, jc, P);
  };
  panel_gemm(fill, w.K, w.N, dr, M, dx, DType::Float32);
}

}  // namespace nibble::kernels::avx2
