// AMX-BF16 tile GEMM of the fused 4-bit kernels (bfloat16 compute, M > 1).
#include <cpuid.h>
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/avx512_common.h"

namespace nibble::kernels::avx512 {

namespace {
// --- GEMM, bfloat16 compute, AMX tiles ------------------------------------------------------------------
// TDPBF16PS multiplies a 16 x 32 bfloat16 tile A by a 32 x 16 tile B held as 16 rows of (k, k+1) pairs and
// accumulates 16 x 16 float32: 8192 MACs per instruction. A is 16 decoded weight rows x 32 k; B is x packed
// per group of 16 tokens by pack_pairs. Each C tile is a block of y transposed (rows x tokens), scattered
// into y once per K. Tiles 0-3 accumulate a 32-row x 32-token block, 4-5 hold A, 6-7 hold B. A panel of np
// rows is decoded once per call into [K/32][np][32] (every A tile 1 KiB contiguous: a row stride of K would
// put a tile's 16 lines in one L1 set) and met by every token pair; within a token pair the x slices stay in
// L2 across the panel's 32-row sub-panels.

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// The compiler cannot see that tile loads read (and tile stores write) memory: fence ordinary accesses.
inline void compiler_fence() {
  __asm__ volatile("" ::: "memory");
}

// One weight row straight into the A-tile layout [K/32][np][32] at row r, in the nibble order of
// gemv_bf16_128 (per 128-chunk: elements 4j+1, 4j, 4j+3, 4j+2); x is packed in the same order. Each chunk's
// two blocks get one 32-entry table bf16(code * absmax) (lanes 0-15: first block, 16-31: second), so vpermw
// yields the reference's dequantized weight directly. Blocksize a multiple of 64, K % 128 == 0.
NB_BF16 void decode_row_tiles(const Q4Weights& w, int64_t n, uint16_t* tiles, int64_t np, int64_t r) {
  const int64_t K = w.K, bs = w.blocksize, nbr = K / bs;
  const uint8_t* row = w.packed + n * K / 2;
  const __m512 code = _mm512_loadu_ps(w.code);
  const __m512i lo4 = _mm512_set1_epi16(15);
  const __m512i half = _mm512_set_epi16(16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 0, 0,
                                        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  __m512 am = _mm512_setzero_ps();
  for (int64_t c = 0; c < K; c += 128) {
    __m512 sa, sb;
    if (bs == 64) {  // 16 blocks' absmax decoded at once, each chunk's pair permuted out
      if (c % 1024 == 0) am = absmax16(w, n * nbr + c / 64, std::min<int64_t>(16, (K - c) / 64));
      const int j = static_cast<int>(c % 1024 / 128);
      sa = _mm512_permutexvar_ps(_mm512_set1_epi32(2 * j), am);
      sb = _mm512_permutexvar_ps(_mm512_set1_epi32(2 * j + 1), am);
    } else {
      sa = _mm512_set1_ps(w.block_absmax(n * nbr + c / bs));
      sb = _mm512_set1_ps(w.block_absmax(n * nbr + (c + 64) / bs));
    }
    const __m512i table = (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(code, sb), _mm512_mul_ps(code, sa));
    const __m512i v = _mm512_loadu_si512(row + c / 2);
    // index = nibble | half: vpternlog 0xEA is (a & b) | c
    const __m512i idx[4] = {_mm512_ternarylogic_epi32(v, lo4, half, 0xEA),
                            _mm512_ternarylogic_epi32(_mm512_srli_epi16(v, 4), lo4, half, 0xEA),
                            _mm512_ternarylogic_epi32(_mm512_srli_epi16(v, 8), lo4, half, 0xEA),
                            _mm512_ternarylogic_epi32(_mm512_srli_epi16(v, 12), lo4, half, 0xEA)};
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i)
      _mm512_storeu_si512(tiles + ((c / 32 + i) * np + r) * 32, _mm512_permutexvar_epi16(idx[i], table));
  }
}

// One thread's share of the AMX GEMM (called inside the parallel region: clang outlines a parallel region
// into a function without the enclosing target attributes, so the tile code lives in its own function).
NB_AMX void amx_panels(const Q4Weights& w, const uint32_t* xpk, int64_t M, float* y, int64_t sub,
                       bool direct) {
  const int64_t N = w.N, K = w.K, kp = K / 2, np = 32 * sub;
  const int64_t panels = (N + np - 1) / np, pairs = (M + 31) / 32;
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) {
    cfg.rows[i] = 16;
    cfg.colsb[i] = 64;
  }
  _tile_loadconfig(&cfg);
  std::vector<uint16_t> rows(static_cast<size_t>(np * K)), row(static_cast<size_t>(K));
  std::vector<float> tmp(static_cast<size_t>(K));
  alignas(64) float c[4][16][16];
#pragma omp for schedule(static)
  for (int64_t p = 0; p < panels; ++p) {
    const int64_t n0 = p * np;
    for (int64_t r = 0; r < np; ++r) {
      if (n0 + r < N && direct) {
        decode_row_tiles(w, n0 + r, rows.data(), np, r);
        continue;
      }
      if (n0 + r < N)
        decode_row_bf16(w, n0 + r, row.data(), tmp.data());
      else
        std::fill(row.begin(), row.end(), uint16_t{0});
      for (int64_t k = 0; k < K; k += 32)  // to [K/32][np][32]: each A tile is 1 KiB contiguous
        std::memcpy(rows.data() + (k / 32 * np + r) * 32, row.data() + k, 64);
    }
    compiler_fence();
    for (int64_t g = 0; g < pairs; ++g) {
      const uint32_t* b0 = xpk + 2 * g * kp * 16;
      const uint32_t* b1 = b0 + kp * 16;
      for (int64_t s = 0; s < sub && n0 + 32 * s < N; ++s) {
        const uint16_t* a0 = rows.data() + 32 * s * 32;
        const uint16_t* a1 = a0 + 16 * 32;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t k = 0; k < K; k += 32) {
          _tile_loadd(4, a0 + k * np, 64);
          _tile_loadd(5, a1 + k * np, 64);
          _tile_loadd(6, b0 + k / 2 * 16, 64);
          _tile_loadd(7, b1 + k / 2 * 16, 64);
          _tile_dpbf16ps(0, 4, 6);
          _tile_dpbf16ps(1, 4, 7);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
        _tile_stored(0, c[0], 64);
        _tile_stored(1, c[1], 64);
        _tile_stored(2, c[2], 64);
        _tile_stored(3, c[3], 64);
        compiler_fence();
        // c[2 * ra + tb][r][t]: weight row n0 + 32 s + 16 ra + r, token 32 g + 16 tb + t
        for (int ra = 0; ra < 2; ++ra)
          for (int tb = 0; tb < 2; ++tb)
            for (int64_t t = 0; t < 16; ++t) {
              const int64_t m = 32 * g + 16 * tb + t;
              if (m >= M) break;
              const int64_t nb = n0 + 32 * s + 16 * ra, nr = std::min<int64_t>(16, N - nb);
              float* dst = y + m * N + nb;
              for (int64_t r = 0; r < nr; ++r) dst[r] = c[2 * ra + tb][r][t];
            }
      }
    }
  }
  _tile_release();
}

}  // namespace

void gemm_bf16_amx(const Q4Weights& w, const uint16_t* xb, int64_t M, float* y) {
  const int64_t K = w.K;
  // panel rows: as many 32-row sub-panels as fit ~1 MiB of decoded bfloat16, 1 to 8
  const int64_t sub = std::clamp<int64_t>((int64_t{1} << 20) / (K * 2 * 32), 1, 8);
  // decode straight into tiles (nibble order, x permuted to match) where the shape allows
  const bool direct = w.blocksize % 64 == 0 && K % 128 == 0;
  const std::vector<uint32_t> xpk = pack_pairs(xb, M, K, 16, 2 * ((M + 31) / 32), direct);
#pragma omp parallel
  amx_panels(w, xpk.data(), M, y, sub, direct);
}
// AMX needs the CPU bits (CPUID.7.0:EDX[22] AMX-BF16, [24] AMX-TILE) and the kernel's permission to use the
// 8 KiB tile state (arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA), asked once per process.
bool amx_supported() {
  static const bool ok = [] {
    if (!supported(DType::BFloat16)) return false;
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!(d & (1u << 22)) || !(d & (1u << 24))) return false;
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}

}  // namespace nibble::kernels::avx512
