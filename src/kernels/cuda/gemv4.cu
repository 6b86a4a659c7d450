// Fused 4-bit GEMV for decode (bitsandbytes' gemv_4bit role): y[N] = W[N, K] x[K] straight from the
// bitsandbytes layout (packed nibbles, float or nested absmax), never materialising W.
//
// Vectorised kernel (K % 32 == 0, 16-byte aligned weights and x): a warp per output row, 8 rows per
// 256-thread block. Lane l reads the row's 16-byte chunks l, l + 32, ... (32 weights each, inside one
// quantization block since blocksizes are multiples of 32), so a warp reads 512 contiguous bytes per step,
// with kUnroll chunks' loads issued before any is used. Weights are streamed (ld.global.cs: read once per
// token, they should not evict x and the absmax from L2); x, 4-32 KiB, stays in L1/L2 for every row. The
// 16-entry code sits in shared memory, one word per bank, so a warp's 32 lookups never conflict (a 256-entry
// table of nibble pairs would halve the lookups but conflict on random bytes; unmeasured either way). float32
// compute scales each 32-weight partial sum by the block's absmax; float16/bfloat16 compute rounds code *
// absmax to the compute dtype per weight pair (a packed cvt), as bitsandbytes' dequantize-then-matmul does.
// float32 accumulation, warp-shuffle reduction, output rounded to the compute dtype.
//
// Scalar kernel (any K, rows starting mid-byte): a warp per row, one weight per lane and step.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/quant4.h"
#include "nibble/error.h"

namespace nibble::kernels::cuda {
namespace {

enum Compute : int { kF32, kBF16, kF16 };
constexpr int kRowsPerBlock = 8;
constexpr int kUnroll = 4;

template <int C>
__device__ __forceinline__ float round_c(float v) {
  if constexpr (C == kBF16) return __bfloat162float(__float2bfloat16_rn(v));
  if constexpr (C == kF16) return __half2float(__float2half_rn(v));
  return v;
}

// round_c for two values with one packed conversion
template <int C>
__device__ __forceinline__ float2 round_c2(float2 v) {
  if constexpr (C == kBF16) return __bfloat1622float2(__float22bfloat162_rn(v));
  if constexpr (C == kF16) return __half22float2(__float22half2_rn(v));
  return v;
}

template <int C>
__device__ __forceinline__ float load_x(const void* x, int64_t k) {
  if constexpr (C == kF32) return static_cast<const float*>(x)[k];
  const uint16_t h = static_cast<const uint16_t*>(x)[k];
  if constexpr (C == kBF16) return __uint_as_float(static_cast<uint32_t>(h) << 16);
  return __half2float(__ushort_as_half(h));
}

// x[k .. k + 8) widened to float32 (k % 8 == 0, x 16-byte aligned)
template <int C>
__device__ __forceinline__ void load_x8(const void* x, int64_t k, float (&xv)[8]) {
  if constexpr (C == kF32) {
    const float4* p = reinterpret_cast<const float4*>(static_cast<const float*>(x) + k);
    const float4 a = __ldg(p), b = __ldg(p + 1);
    xv[0] = a.x, xv[1] = a.y, xv[2] = a.z, xv[3] = a.w, xv[4] = b.x, xv[5] = b.y, xv[6] = b.z, xv[7] = b.w;
  } else {
    const uint4 u = __ldg(reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(x) + k));
    const uint32_t words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {  // little-endian: the low half of each word is the even element
      if constexpr (C == kBF16) {
        xv[2 * i] = __uint_as_float(words[i] << 16);
        xv[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
      } else {
        const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&words[i]));
        xv[2 * i] = f.x;
        xv[2 * i + 1] = f.y;
      }
    }
  }
}

template <int C>
__device__ __forceinline__ void store_y(void* y, int64_t n, float v) {
  if constexpr (C == kF32) static_cast<float*>(y)[n] = v;
  if constexpr (C == kBF16) static_cast<uint16_t*>(y)[n] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
  if constexpr (C == kF16) static_cast<uint16_t*>(y)[n] = __half_as_ushort(__float2half_rn(v));
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

// The 32 weights of one 16-byte chunk against x[k0 .. k0 + 32), absmax am.
template <int C>
__device__ __forceinline__ float chunk_dot(const uint4 q, const float* code, const void* x, int64_t k0,
                                           float am) {
  const uint32_t words[4] = {q.x, q.y, q.z, q.w};
  float part = 0.0f;
  const char* code_bytes = reinterpret_cast<const char*>(code);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    float xv[8];
    load_x8<C>(x, k0 + 8 * j, xv);
    // byte b of hi / lo: 4 * (high / low nibble of byte b), the byte offset into code; one byte_perm each
    const uint32_t hi = (words[j] >> 2) & 0x3c3c3c3cu, lo = (words[j] << 2) & 0x3c3c3c3cu;
#pragma unroll
    for (int b = 0; b < 4; ++b) {  // byte b of the word: elements 2b (high nibble) and 2b + 1 (low nibble)
      const float2 c =
          make_float2(*reinterpret_cast<const float*>(code_bytes + __byte_perm(hi, 0, 0x4440 | b)),
                      *reinterpret_cast<const float*>(code_bytes + __byte_perm(lo, 0, 0x4440 | b)));
      if constexpr (C == kF32) {
        part = fmaf(xv[2 * b], c.x, part);
        part = fmaf(xv[2 * b + 1], c.y, part);
      } else {
        const float2 wv = round_c2<C>(make_float2(__fmul_rn(c.x, am), __fmul_rn(c.y, am)));
        part = fmaf(xv[2 * b], wv.x, part);
        part = fmaf(xv[2 * b + 1], wv.y, part);
      }
    }
  }
  return C == kF32 ? part * am : part;
}

template <int C>
__global__ void __launch_bounds__(kRowsPerBlock * 32)
    gemv_4bit_vec(dev::Q4View w, int64_t N, int64_t K, const void* __restrict__ x, void* __restrict__ y) {
  __shared__ float code[16];
  if (threadIdx.x < 16) code[threadIdx.x] = w.code[threadIdx.x];
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  if (row >= N) return;
  const int64_t chunks = K / 32;
  const uint4* wrow = reinterpret_cast<const uint4*>(w.packed + row * (K / 2));
  const int64_t e_row = row * K;
  float acc = 0.0f;
  for (int64_t c0 = lane; c0 < chunks; c0 += 32 * kUnroll) {
    uint4 q[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + 32 * u;
      q[u] = c < chunks ? __ldcs(wrow + c) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + 32 * u;
      if (c < chunks)
        acc += chunk_dot<C>(q[u], code, x, 32 * c, w.block_absmax((e_row + 32 * c) >> w.bs_shift));
    }
  }
  acc = warp_sum(acc);
  if (lane == 0) store_y<C>(y, row, acc);
}

template <int C>
__global__ void __launch_bounds__(kRowsPerBlock * 32)
    gemv_4bit_scalar(dev::Q4View w, int64_t N, int64_t K, const void* __restrict__ x, void* __restrict__ y) {
  __shared__ float code[16];
  if (threadIdx.x < 16) code[threadIdx.x] = w.code[threadIdx.x];
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  if (row >= N) return;
  float acc = 0.0f;
  for (int64_t k = lane; k < K; k += 32) {
    const int64_t e = row * K + k;
    const uint8_t byte = w.packed[e >> 1];
    const uint8_t c = (e & 1) ? (byte & 0x0f) : (byte >> 4);
    const float wv = round_c<C>(__fmul_rn(code[c], w.block_absmax(e >> w.bs_shift)));
    acc = fmaf(load_x<C>(x, k), wv, acc);
  }
  acc = warp_sum(acc);
  if (lane == 0) store_y<C>(y, row, acc);
}

bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

template <int C>
void launch(const dev::Q4View& v, int64_t N, int64_t K, const void* x, void* y, bool vec) {
  const unsigned blocks = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  if (vec) {
    gemv_4bit_vec<C><<<blocks, kRowsPerBlock * 32>>>(v, N, K, x, y);
    check_launch("gemv_4bit_vec");
  } else {
    gemv_4bit_scalar<C><<<blocks, kRowsPerBlock * 32>>>(v, N, K, x, y);
    check_launch("gemv_4bit_scalar");
  }
}

}  // namespace

bool gemv_vectorized(const Q4Weights& w) {
  return w.K % 32 == 0 && aligned16(w.packed);
}

void gemv_4bit(const Q4Weights& w, const void* x, void* y, DType compute) {
  const dev::Q4View v = make_view(w, "gemv_4bit");
  if (w.N < 0 || w.K < 0) throw ValueError("gemv_4bit: negative shape");
  if (w.N == 0) return;
  if (w.N > int64_t{0x7fffffff} * kRowsPerBlock) throw ValueError("gemv_4bit: too many rows for one launch");
  const bool vec = gemv_vectorized(w) && aligned16(x);
  switch (compute) {
    case DType::Float32:
      return launch<kF32>(v, w.N, w.K, x, y, vec);
    case DType::BFloat16:
      return launch<kBF16>(v, w.N, w.K, x, y, vec);
    case DType::Float16:
      return launch<kF16>(v, w.N, w.K, x, y, vec);
    default:
      throw ValueError("gemv_4bit: compute dtype must be float32, float16 or bfloat16, got " +
                       std::string(dtype_name(compute)));
  }
}

}  // namespace nibble::kernels::cuda
