// The fused 4-bit GEMV/GEMM (AVX2, AVX-512 float32, AVX512-BF16, AMX-BF16) against the scalar reference.
// Tolerance: the fast paths multiply by each block's absmax after the dot product instead of rounding
// code * absmax per weight, and sum in another order. Per output the difference is bounded by
// eps * sum_k |x_k * w_k| with eps = 1e-5 (float32), 2^-7 (bfloat16: one rounding of each weight and of
// the result, 2^-8 each) and 2^-10 (float16: the same two roundings, 2^-11 each).
#include "kernels/cpu/gemm4.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "nibble/quantize.h"
#include "nn/linear.h"

using namespace nibble;
using namespace nibble::kernels;

namespace {
struct Case {
  Tensor wt;
  Quantized4bit q;
  std::vector<float> absmax;
};

Case make(int64_t N, int64_t K, int64_t bs, QuantType qt, bool dq, unsigned seed) {
  std::mt19937 rng(seed);
  std::student_t_distribution<float> sd(4.0f);
  std::vector<float> v(static_cast<size_t>(N * K));
  for (auto& x : v) x = 0.02f * sd(rng);
  Case c{Tensor::from_vector(DType::Float32, {N, K}, v), {}, {}};
  c.q = quantize_4bit(c.wt, bs, qt, dq);
  return c;
}

Q4Weights view(const Quantized4bit& q) {
  return nn::q4_weights(q.packed, q.state);
}
}  // namespace

namespace {
// N, K, blocksize: odd row counts, blocksize 32 (the 32-weight steps), one block per row, K != blocksize
const std::vector<std::tuple<int64_t, int64_t, int64_t>> kShapes{
    {37, 256, 64}, {64, 128, 32}, {5, 4096, 4096}, {130, 512, 128}, {3, 2048, 256}};

void check_fast_path(DType cd, GemmPath path) {
  {
    for (auto [N, K, bs] : kShapes) {
      for (QuantType qt : {QuantType::NF4, QuantType::FP4}) {
        for (bool dq : {false, true}) {
          const Case c = make(N, K, bs, qt, dq, static_cast<unsigned>(N * K + bs));
          const Q4Weights w = view(c.q);
          const Tensor deq = dequantize_4bit(c.q.packed, c.q.state);
          // 11: AVX2 token groups of 4 + 4 + 3; 70: the prompt GEMMs (AMX pads 70 to 96)
          for (int64_t M : {1, 2, 5, 11, 70}) {
            SCOPED_TRACE(gemm_path_name(path, cd) + " " + std::string(dtype_name(cd)) + " N=" +
                         std::to_string(N) + " K=" + std::to_string(K) + " bs=" + std::to_string(bs) + " " +
                         std::string(quant_type_name(qt)) + (dq ? " dq" : "") + " M=" + std::to_string(M));
            std::mt19937 rng(static_cast<unsigned>(M));
            std::normal_distribution<float> nd;
            std::vector<float> x(static_cast<size_t>(M * K));
            for (auto& e : x) e = nd(rng);
            std::vector<float> yr(static_cast<size_t>(M * N)), yf(yr.size());
            gemm_4bit(w, x.data(), M, yr.data(), cd, GemmPath::Reference);
            gemm_4bit(w, x.data(), M, yf.data(), cd, path);
            const double eps = cd == DType::BFloat16  ? std::ldexp(1.0, -7)
                               : cd == DType::Float16 ? std::ldexp(1.0, -10)
                                                      : 1e-5;
            for (int64_t m = 0; m < M; ++m)
              for (int64_t n = 0; n < N; ++n) {
                double mag = 0;
                for (int64_t k = 0; k < K; ++k)
                  mag += std::fabs(x[static_cast<size_t>(m * K + k)] * deq.data<float>()[n * K + k]);
                const size_t i = static_cast<size_t>(m * N + n);
                ASSERT_LE(std::fabs(yf[i] - yr[i]), eps * mag + 1e-30) << "m=" << m << " n=" << n;
                // float16 compute looks up bitsandbytes' float16 weights themselves: only the order of the
                // float32 sums differs, then the same rounding of the output (at most one float16 step apart)
                if (cd == DType::Float16) {
                  ASSERT_LE(std::fabs(yf[i] - yr[i]), 1e-6 * mag + std::ldexp(std::fabs(yr[i]), -10) + 1e-30)
                      << "m=" << m << " n=" << n;
                }
              }
          }
        }
      }
    }
  }
}
}  // namespace

// Reported as skipped (not passed) on CPUs without the instructions; this machine and CI have them.
TEST(Gemm4, Avx512Float32MatchesReference) {
  if (!gemm_path_available(GemmPath::Avx512, DType::Float32)) GTEST_SKIP() << "no AVX-512 on this CPU";
  check_fast_path(DType::Float32, GemmPath::Avx512);
}

TEST(Gemm4, Avx512Bf16MatchesReference) {
  if (!gemm_path_available(GemmPath::Avx512, DType::BFloat16)) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  check_fast_path(DType::BFloat16, GemmPath::Avx512);
}

// AVX2 + FMA (CPUs without AVX-512): float32 FMAs; bfloat16 compute rounds x and the table like vdpbf16ps.
TEST(Gemm4, Avx2Float32MatchesReference) {
  if (!gemm_path_available(GemmPath::Avx2, DType::Float32)) GTEST_SKIP() << "no AVX2/FMA on this CPU";
  check_fast_path(DType::Float32, GemmPath::Avx2);
}

TEST(Gemm4, Avx2Bf16MatchesReference) {
  if (!gemm_path_available(GemmPath::Avx2, DType::BFloat16)) GTEST_SKIP() << "no AVX2/FMA on this CPU";
  check_fast_path(DType::BFloat16, GemmPath::Avx2);
}

// float16 compute: bitsandbytes' numerics - each block's 16 weights fp16(code * absmax) looked up, x rounded
// to float16, float32 sums, the output rounded to float16.
TEST(Gemm4, Avx2Fp16MatchesReference) {
  if (!gemm_path_available(GemmPath::Avx2, DType::Float16)) GTEST_SKIP() << "no AVX2/FMA/F16C on this CPU";
  check_fast_path(DType::Float16, GemmPath::Avx2);
}

// The float16 table itself: with x a unit vector each output is one looked-up weight, which must be exactly
// bitsandbytes' fp16(code * absmax). absmax values around the range where the kernel rounds with integer
// arithmetic (every nonzero weight of the block a normal float16) and outside it (subnormal weights, values
// that round to 65504, the F16C path), ties to even, both 4-bit types, blocksizes 64 (gemv64) and 32, one
// token (GEMV) and two (the batch kernel).
TEST(Gemm4, Avx2Fp16WeightsAreBitsandbytesFloat16Exactly) {
  if (!gemm_path_available(GemmPath::Avx2, DType::Float16)) GTEST_SKIP() << "no AVX2/FMA/F16C on this CPU";
  for (QuantType qt : {QuantType::NF4, QuantType::FP4}) {
    const Case c = make(4, 64, 64, qt, false, 7);
    const float* code = c.q.state.code.data<float>();
    float cmin = INFINITY, cmax = 0;
    for (int e = 0; e < 16; ++e)
      if (code[e] != 0) cmin = std::min(cmin, std::fabs(code[e])), cmax = std::max(cmax, std::fabs(code[e]));
    std::vector<float> scales{0.0f, 1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, 0x1p-30f, 1e-7f, 3e-5f};
    for (float edge : {0x1p-14f / cmin, 65504.0f / cmax}) {
      float a = edge;
      for (int i = 0; i < 4; ++i) a = std::nextafter(a, 0.0f);
      for (int i = 0; i < 9; ++i, a = std::nextafter(a, INFINITY)) scales.push_back(a);
    }
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> lg(-30.0f, std::log2(65519.0f / cmax));
    for (int i = 0; i < 300; ++i) scales.push_back(std::exp2(lg(rng)));
    for (int64_t bs : {64, 32}) {
      // row n holds code n everywhere; two blocks per row with their own absmax
      const int64_t N = 16, K = 2 * bs;
      std::vector<uint8_t> packed(static_cast<size_t>(N * K / 2));
      for (int64_t n = 0; n < N; ++n)
        std::fill_n(packed.begin() + n * K / 2, K / 2, static_cast<uint8_t>(n << 4 | n));
      for (size_t si = 0; si + 1 < scales.size(); si += 2) {
        std::vector<float> absmax(static_cast<size_t>(2 * N));
        for (int64_t n = 0; n < N; ++n) absmax[2 * n] = scales[si], absmax[2 * n + 1] = scales[si + 1];
        Q4Weights w;
        w.packed = packed.data();
        w.N = N;
        w.K = K;
        w.blocksize = bs;
        w.code = code;
        w.absmax = absmax.data();
        // token 0 reads element 3 (block 0), token 1 element bs + 5 (block 1)
        std::vector<float> x(static_cast<size_t>(2 * K), 0.0f), y(static_cast<size_t>(2 * N));
        x[3] = 1.0f;
        x[static_cast<size_t>(K + bs + 5)] = 1.0f;
        for (int64_t M : {1, 2}) {
          gemm_4bit(w, x.data(), M, y.data(), DType::Float16, GemmPath::Avx2);
          for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) {
              const float want = fp16_to_float(float_to_fp16(code[n] * scales[si + static_cast<size_t>(m)]));
              ASSERT_EQ(y[static_cast<size_t>(m * N + n)], want)
                  << quant_type_name(qt) << " bs=" << bs << " M=" << M << " token " << m << " code " << n
                  << " absmax " << scales[si + static_cast<size_t>(m)];
            }
        }
      }
    }
  }
}

// The AVX2 prompt GEMM (M >= kAvx2PanelMinTokens): each y[m, n] is one float32 chain over k, so a token's
// row is the same bits whatever the other tokens of the call (the 6-token tiles and the narrow tail tiles
// sum alike), for every compute dtype, and a partial 16-row strip (N = 37) matches a full one.
TEST(Gemm4, Avx2PromptGemmRowsDoNotDependOnTheOtherTokens) {
  if (!gemm_path_available(GemmPath::Avx2, DType::Float16)) GTEST_SKIP() << "no AVX2/FMA/F16C on this CPU";
  const Case c = make(37, 512, 64, QuantType::NF4, true, 7);
  const Q4Weights w = view(c.q);
  const int64_t M = kAvx2PanelMinTokens + 11, K = 512, N = 37;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::vector<float> x(static_cast<size_t>(M * K));
  for (auto& e : x) e = nd(rng);
  for (DType cd : {DType::Float32, DType::BFloat16, DType::Float16}) {
    SCOPED_TRACE(std::string(dtype_name(cd)));
    std::vector<float> all(static_cast<size_t>(M * N)), some(static_cast<size_t>((M - 5) * N));
    gemm_4bit(w, x.data(), M, all.data(), cd, GemmPath::Avx2);
    // the last M - 5 tokens alone: tiles of 6 now start at another token
    gemm_4bit(w, x.data() + 5 * K, M - 5, some.data(), cd, GemmPath::Avx2);
    for (int64_t m = 0; m < M - 5; ++m)
      for (int64_t n = 0; n < N; ++n)
        ASSERT_EQ(some[static_cast<size_t>(m * N + n)], all[static_cast<size_t>((m + 5) * N + n)])
            << "m=" << m << " n=" << n;
  }
}

// AMX tiles (TDPBF16PS) accumulate bfloat16 products in float32 like vdpbf16ps: same tolerance.
TEST(Gemm4, AmxBf16MatchesReference) {
  if (!gemm_path_available(GemmPath::Amx, DType::BFloat16)) GTEST_SKIP() << "no AMX-BF16 on this CPU/kernel";
  check_fast_path(DType::BFloat16, GemmPath::Amx);
}

// K = 288: two of the AVX2 prompt GEMM's k panels (256 + 32); N = 45: a partial 16-row strip; M = 35: that
// GEMM (kAvx2PanelMinTokens and up) with a tail tile of 5 tokens.
TEST(Gemm4, DenseMatchesNaive) {
  const int64_t N = 45, K = 288;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::vector<float> w(static_cast<size_t>(N * K));
  for (auto& e : w) e = nd(rng);
  const Tensor wf = Tensor::from_vector(DType::Float32, {N, K}, w), wb = wf.to(DType::BFloat16),
               wh = wf.to(DType::Float16);
  const std::vector<float> wbf = wb.to_float_vector(), whf = wh.to_float_vector();
  static_assert(kAvx2PanelMinTokens <= 35);
  for (int64_t M : {1, 3, 9, 35}) {
    std::vector<float> x(static_cast<size_t>(M * K));
    for (auto& e : x) e = nd(rng);
    std::vector<float> y(static_cast<size_t>(M * N));
    for (auto [dt, path] : {std::pair{DType::Float32, GemmPath::Auto},
                            {DType::BFloat16, GemmPath::Auto},
                            {DType::Float32, GemmPath::Avx2},
                            {DType::BFloat16, GemmPath::Avx2},
                            {DType::Float16, GemmPath::Auto},
                            {DType::Float16, GemmPath::Avx2},
                            {DType::Float32, GemmPath::Reference},
                            {DType::BFloat16, GemmPath::Reference},
                            {DType::Float16, GemmPath::Reference}}) {
      if (!gemm_path_available(path, dt)) continue;  // AVX2 on a CPU without it: the Auto case still runs
      SCOPED_TRACE(gemm_path_name(path, dt));
      const Tensor& wt = dt == DType::Float32 ? wf : dt == DType::BFloat16 ? wb : wh;
      gemm_dense(wt.raw(), dt, N, K, x.data(), M, y.data(), path);
      const std::vector<float>& ww = dt == DType::Float32 ? w : dt == DType::BFloat16 ? wbf : whf;
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
          double want = 0, mag = 0;
          for (int64_t k = 0; k < K; ++k) {
            // bfloat16 weights meet x rounded to bfloat16 (vdpbf16ps; the AVX2 path does the same) on the
            // fast paths; float32 and float16 weights meet float32 x
            const float xv = dt == DType::BFloat16 && path != GemmPath::Reference
                                 ? bf16_to_float(float_to_bf16(x[static_cast<size_t>(m * K + k)]))
                                 : x[static_cast<size_t>(m * K + k)];
            want += static_cast<double>(xv) * ww[static_cast<size_t>(n * K + k)];
            mag += std::fabs(static_cast<double>(xv) * ww[static_cast<size_t>(n * K + k)]);
          }
          EXPECT_NEAR(y[static_cast<size_t>(m * N + n)], want, 1e-5 * mag + 1e-6) << dtype_name(dt);
        }
    }
  }
}

#include "kernels/cpu/attention.h"

// Both AVX-512 paths (and the AVX2 one): per token (T < 8, decode) and blocked prefill (partial query/key
// blocks, GQA groups, head_dim above one 128-float register set, a cache that already holds earlier tokens).
TEST(Attention, FastPathMatchesReference) {
  for (const AttentionShape& s :
       {AttentionShape{.T = 7, .heads = 8, .kv_heads = 2, .head_dim = 64, .start = 5, .scale = 0.125f},
        AttentionShape{.T = 1, .heads = 4, .kv_heads = 4, .head_dim = 32, .start = 9, .scale = 0.2f},
        AttentionShape{.T = 37, .heads = 8, .kv_heads = 2, .head_dim = 128, .start = 0, .scale = 0.088f},
        AttentionShape{.T = 21, .heads = 3, .kv_heads = 1, .head_dim = 160, .start = 13, .scale = 0.079f},
        // sliding windows: inside the prompt, across the cached part, wider than every position
        AttentionShape{
            .T = 24, .heads = 4, .kv_heads = 2, .head_dim = 32, .start = 0, .scale = 0.2f, .window = 8},
        AttentionShape{
            .T = 3, .heads = 4, .kv_heads = 2, .head_dim = 64, .start = 30, .scale = 0.1f, .window = 5},
        AttentionShape{
            .T = 9, .heads = 2, .kv_heads = 1, .head_dim = 16, .start = 2, .scale = 0.3f, .window = 100}}) {
    SCOPED_TRACE("T=" + std::to_string(s.T) + " D=" + std::to_string(s.head_dim) +
                 " window=" + std::to_string(s.window));
    const int64_t P = s.start + s.T, kvw = s.kv_heads * s.head_dim;
    std::mt19937 rng(static_cast<unsigned>(11 + s.T));
    std::normal_distribution<float> nd;
    std::vector<float> q(static_cast<size_t>(s.T * s.heads * s.head_dim)), k(static_cast<size_t>(P * kvw)),
        v(k.size());
    for (auto* vec : {&q, &k, &v})
      for (auto& e : *vec) e = nd(rng);
    std::vector<float> a(q.size()), b(q.size(), -1.0f);
    kernels::ref::attention(s, q.data(), k.data(), v.data(), a.data());
    kernels::attention(s, q.data(), k.data(), v.data(), b.data());
    for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-5f * (1 + std::fabs(a[i]))) << i;
    if (kernels::avx2::supported(s.head_dim)) {
      std::fill(b.begin(), b.end(), -1.0f);
      kernels::avx2::attention(s, q.data(), k.data(), v.data(), b.data());
      for (size_t i = 0; i < a.size(); ++i)
        ASSERT_NEAR(a[i], b[i], 1e-5f * (1 + std::fabs(a[i]))) << "avx2 " << i;
    }
  }
}

// The sliding window as transformers masks it: key j is kept for the query at position p iff j > p - window.
// Window 1 returns each position's own value; a window wider than the sequence is full causal attention;
// window W equals full attention over the last W cached positions only.
TEST(Attention, SlidingWindowKeepsTheLastWindowPositions) {
  const int64_t T = 12, H = 2, D = 8, W = 4;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  std::vector<float> q(T * H * D), k(T * H * D), v(T * H * D);
  for (auto* vec : {&q, &k, &v})
    for (auto& e : *vec) e = nd(rng);
  const AttentionShape base{.T = T, .heads = H, .kv_heads = H, .head_dim = D, .start = 0, .scale = 0.35f};
  std::vector<float> full(q.size()), one(q.size()), wide(q.size()), win(q.size());
  kernels::ref::attention(base, q.data(), k.data(), v.data(), full.data());
  AttentionShape s = base;
  s.window = 1;
  kernels::ref::attention(s, q.data(), k.data(), v.data(), one.data());
  EXPECT_EQ(one, v);  // softmax over one key is exactly 1
  s.window = T + 5;
  kernels::ref::attention(s, q.data(), k.data(), v.data(), wide.data());
  EXPECT_EQ(wide, full);
  s.window = W;
  kernels::ref::attention(s, q.data(), k.data(), v.data(), win.data());
  for (int64_t t = 0; t < T;
       ++t) {  // position t attends to max(0, t - W + 1) .. t: a cache holding only those
    const int64_t lo = std::max<int64_t>(0, t - W + 1), n = t - lo + 1;
    const AttentionShape one_q{
        .T = 1, .heads = H, .kv_heads = H, .head_dim = D, .start = n - 1, .scale = 0.35f};
    std::vector<float> out(H * D);
    kernels::ref::attention(one_q, q.data() + t * H * D, k.data() + lo * H * D, v.data() + lo * H * D,
                            out.data());
    for (int64_t i = 0; i < H * D; ++i)
      EXPECT_EQ(win[static_cast<size_t>(t * H * D + i)], out[static_cast<size_t>(i)]);
  }
  EXPECT_NE(win, full);
}

// A window-bounded cache (kv_first > 0: rows before it dropped) gives the bits of the full cache on every
// path, and reads no row before kv_first (those are poisoned with NaN here).
TEST(Attention, DroppedRowsGiveTheSameBits) {
  const int64_t T = 5, H = 4, KVH = 2, D = 32, start = 40, W = 9, first = start - W + 1;
  const int64_t P = start + T, kvw = KVH * D;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  std::vector<float> q(static_cast<size_t>(T * H * D)), k(static_cast<size_t>(P * kvw)), v(k.size());
  for (auto* vec : {&q, &k, &v})
    for (auto& e : *vec) e = nd(rng);
  std::vector<float> kb(k.begin() + first * kvw, k.end()), vb(v.begin() + first * kvw, v.end());
  kb.insert(kb.begin(), 3 * kvw, NAN);  // rows before kv_first: never read
  vb.insert(vb.begin(), 3 * kvw, NAN);
  const AttentionShape full{
      .T = T, .heads = H, .kv_heads = KVH, .head_dim = D, .start = start, .scale = 0.2f, .window = W};
  AttentionShape bounded = full;
  bounded.kv_first = first - 3;
  using Fn = void (*)(const AttentionShape&, const float*, const float*, const float*, float*);
  std::vector<std::pair<const char*, Fn>> paths{{"reference", kernels::ref::attention},
                                                {"dispatch", kernels::attention}};
  if (kernels::avx2::supported(D)) paths.emplace_back("avx2", kernels::avx2::attention);
  for (const auto& [name, fn] : paths) {
    SCOPED_TRACE(name);
    std::vector<float> a(q.size()), b(q.size());
    fn(full, q.data(), k.data(), v.data(), a.data());
    fn(bounded, q.data(), kb.data(), vb.data(), b.data());
    EXPECT_EQ(a, b);
  }
}

// Opt-in int8 activations: the AVX2 path against the int8 reference (same quantized operands, exact integer
// dot products: only float32 scaling and summation order differ), and the int8 reference against the exact
// bitsandbytes reference (activation and table quantization: a loose bound, and a real difference).
TEST(Gemm4Int8, Avx2MatchesInt8Reference) {
  if (gemm_int8_auto_path(Q4Weights{.K = 64, .blocksize = 64}) != GemmPath::Avx2)
    GTEST_SKIP() << "no AVX2/FMA on this CPU";
  auto shapes = kShapes;
  shapes.emplace_back(9, 96, 32);  // K not a multiple of 64: the 32-byte step's tail
  for (auto [N, K, bs] : shapes) {
    for (QuantType qt : {QuantType::NF4, QuantType::FP4}) {
      for (bool dq : {false, true}) {
        const Case c = make(N, K, bs, qt, dq, static_cast<unsigned>(N * K + bs + 1));
        const Q4Weights w = view(c.q);
        const Tensor deq = dequantize_4bit(c.q.packed, c.q.state);
        for (int64_t M : {1, 2, 3, 4, 7}) {
          SCOPED_TRACE("N=" + std::to_string(N) + " K=" + std::to_string(K) + " bs=" + std::to_string(bs) +
                       " " + std::string(quant_type_name(qt)) + (dq ? " dq" : "") +
                       " M=" + std::to_string(M));
          std::mt19937 rng(static_cast<unsigned>(M + 100));
          std::normal_distribution<float> nd;
          std::vector<float> x(static_cast<size_t>(M * K));
          for (auto& e : x) e = nd(rng);
          std::vector<float> yr(static_cast<size_t>(M * N)), yf(yr.size()), ye(yr.size());
          gemm_4bit_int8(w, x.data(), M, yr.data(), GemmPath::Reference);
          gemm_4bit_int8(w, x.data(), M, yf.data(), GemmPath::Avx2);
          gemm_4bit(w, x.data(), M, ye.data(), DType::Float32, GemmPath::Reference);
          double err = 0, total_mag = 0;
          for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) {
              double mag = 0;
              for (int64_t k = 0; k < K; ++k)
                mag += std::fabs(x[static_cast<size_t>(m * K + k)] * deq.data<float>()[n * K + k]);
              const size_t i = static_cast<size_t>(m * N + n);
              ASSERT_LE(std::fabs(yf[i] - yr[i]), 1e-5 * mag + 1e-30) << "m=" << m << " n=" << n;
              // each product is off by at most half a step of x (d / 2) and of the table (1 / 254) relative
              ASSERT_LE(std::fabs(yr[i] - ye[i]), 0.02 * mag + 1e-6) << "m=" << m << " n=" << n;
              err += std::fabs(yr[i] - ye[i]);
              total_mag += mag;
            }
          EXPECT_GT(err, 0.0) << "int8 activations changed nothing: the int8 path is not in use";
          EXPECT_LT(err, 0.005 * total_mag);
        }
      }
    }
  }
}
