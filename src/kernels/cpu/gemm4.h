// Fused dequantize-and-multiply for bitsandbytes 4-bit weights (NF4/FP4, any blocksize, nested absmax decoded
// on the fly): y[M, N] = x[M, K] @ W[N, K]^T. A scalar reference defines the result (bitsandbytes'
// dequantize-then-matmul in the compute dtype); AVX2+FMA+F16C (every compute dtype), AVX-512 (float32 and
// float16 compute), AVX512-BF16 and AMX-BF16 (bfloat16 compute) paths are chosen at run time and tested
// against it within a stated tolerance.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "nibble/dtype.h"

namespace nibble::kernels {

struct Q4Weights {
  const uint8_t* packed = nullptr;  // bitsandbytes layout: flattened row-major, element 2j = high nibble
  int64_t N = 0, K = 0, blocksize = 64;
  const float* code = nullptr;  // 16 entries
  // absmax: float per block, or nested (uint8 code into code2, scaled by absmax2 per nested block, + offset)
  const float* absmax = nullptr;
  const uint8_t* absmax_q = nullptr;
  const float* code2 = nullptr;
  const float* absmax2 = nullptr;
  int64_t nested_blocksize = 256;
  float offset = 0.0f;
  // log2 of nested_blocksize when it is a power of two (bitsandbytes always uses 256), else -1. Hot loops
  // must not divide: an integer division costs tens of cycles, more than the 64 weights it serves.
  int nested_shift = 8;

  void set_nested_blocksize(int64_t nbs) {
    nested_blocksize = nbs;
    nested_shift = (nbs & (nbs - 1)) == 0 ? __builtin_ctzll(static_cast<unsigned long long>(nbs)) : -1;
  }
  // the nested block (index into absmax2) of quantization block b
  int64_t nested_block(int64_t b) const {
    return nested_shift >= 0 ? b >> nested_shift : b / nested_blocksize;
  }
  float block_absmax(int64_t b) const {
    if (absmax) return absmax[b];
    const float v = code2[absmax_q[b]] * absmax2[nested_block(b)];
    return v + offset;
  }
};

// Which implementation gemm_4bit uses; "auto" picks the best this CPU supports: AMX tiles for bfloat16
// prompts/batches (M >= 8) where the CPU and kernel allow them, else AVX-512, else AVX2 + FMA, else the
// scalar reference.
enum class GemmPath { Auto, Reference, Avx512, Amx, Avx2 };

// Row-invariant mode, for batched decode (several sequences' tokens in one call): while a scope is alive on
// the calling thread, gemm_4bit gives each row the same bits whatever M (1 .. 31) - a single token takes the
// multi-token kernels instead of the GEMV ones (which sum in another order) and no path switches with M (no
// AMX, no outer-product GEMM). So a sequence decoded beside others gets exactly what it gets alone
// (tests/kernels/row_invariance_test.cpp). gemm_dense (its AVX2 multi-token loop sums each row as the GEMV
// does, and its prompt GEMM is off in this mode; AVX-512 has one path for every M) and gemm_4bit_int8 are
// row-invariant always.
class RowInvariantScope {
 public:
  explicit RowInvariantScope(bool on = true);
  ~RowInvariantScope();
  RowInvariantScope(const RowInvariantScope&) = delete;
  RowInvariantScope& operator=(const RowInvariantScope&) = delete;

 private:
  bool prev_;
};
bool row_invariant();
std::string gemm_path_name(GemmPath p, DType compute);
// The path Auto takes for these weights and M tokens.
GemmPath gemm_auto_path(const Q4Weights& w, int64_t M, DType compute);
bool gemm_path_available(GemmPath p, DType compute);

// The AVX2 prompt GEMM (weights decoded or widened once per call into panels, then a register-blocked
// float32 GEMM) serves gemm_4bit and gemm_dense calls of at least this many tokens outside row-invariant
// mode; fewer take the fused / row-blocked kernels.
constexpr int64_t kAvx2PanelMinTokens = 16;

// compute: Float32, BFloat16 or Float16 (the fast paths round x and the code table to float16 and sum in
// float32; docs/DESIGN-NOTES.md states the rounding).
void gemm_4bit(const Q4Weights& w, const float* x, int64_t M, float* y, DType compute,
               GemmPath path = GemmPath::Auto);

// The path gemm_dense's Auto takes for weights of this dtype and row length.
GemmPath gemm_dense_auto_path(DType wdtype, int64_t K);
// Dense y = x @ W^T for float32 / bfloat16 weights (the unquantized lm_head and friends), threaded.
void gemm_dense(const void* w, DType wdtype, int64_t N, int64_t K, const float* x, int64_t M, float* y,
                GemmPath path = GemmPath::Auto);

// W[N, K] dequantized as bitsandbytes' dequantize_4bit computes each element (code * absmax in float32, then
// `out`: Float32, BFloat16 or Float16) and written transposed, dst[k * N + n] (K x N): the input gradient of
// a 4-bit linear layer, dx = dy @ W, is then gemm_dense over it. Threaded.
void dequantize_4bit_transposed(const Q4Weights& w, DType out, void* dst);

// dx[M, K] = dy[M, N] @ W', W' = dequantize_4bit(W) in `compute` (bitsandbytes' MatMul4Bit.backward),
// straight from the packed rows: the AVX2 panel GEMM, bfloat16 compute rounding dy to bfloat16, float32 sums
// and output. Returns false, writing nothing, where it has no kernel for these weights on this CPU (or path
// is Reference): the caller then takes dequantize_4bit_transposed + gemm_dense, which defines the result.
bool gemm_4bit_input_grad(const Q4Weights& w, const float* dy, int64_t M, float* dx, DType compute,
                          GemmPath path = GemmPath::Auto);

// Opt-in int8 activations (FromPretrainedOptions::activations = Int8, `--fast-activations int8`), the
// llama.cpp way rather than bitsandbytes': each token's x is quantized per block of 32 consecutive elements
// to int8 (d = max |x| / 127, q = x / d rounded to nearest even), the 16-entry code table to int8
// (round(code * 127)), and each row's sum is
//   y[m, n] = sum over weight blocks b: absmax_b * (1/127) * sum over x blocks j in b: d_j * (int32 sum of t
//   * q)
// with exact integer dot products. Needs K % 32 == 0 and blocksize % 32 == 0, K % blocksize == 0.
// Paths: the scalar reference, AVX2 (vpmaddubsw).
bool int8_shape_ok(const Q4Weights& w);
GemmPath gemm_int8_auto_path(const Q4Weights& w);
std::string gemm_int8_path_name(GemmPath p);
void gemm_4bit_int8(const Q4Weights& w, const float* x, int64_t M, float* y, GemmPath path = GemmPath::Auto);

// v rounded to `dt` (round to nearest even) and back to float32; identity for float32. Inline: the LLM.int8
// epilogue runs it per output.
inline float round_to(DType dt, float v) {
  if (dt == DType::BFloat16) return bf16_to_float(float_to_bf16(v));
  if (dt == DType::Float16) return fp16_to_float(float_to_fp16(v));
  return v;
}

// Inside an OpenMP parallel region: this thread's contiguous share [first, second) of n output rows.
std::pair<int64_t, int64_t> thread_rows(int64_t n);

namespace ref {
void gemm_4bit(const Q4Weights& w, const float* x, int64_t M, float* y, DType compute, int64_t n0,
               int64_t n1);
}

}  // namespace nibble::kernels
