// Device-side helpers shared by the CUDA kernels: error checks, exact ports of the CPU's float16/bfloat16
// conversions and of the reference quantizers (kernels/cpu/reference.cpp), and the 4-bit weight view with
// (nested) absmax decoding. Every rounding that must match the CPU is spelled with an _rn intrinsic: those
// are never contracted into a fused multiply-add, whatever --fmad says.
#pragma once
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "kernels/cpu/gemm4.h"
#include "nibble/dtype.h"

namespace nibble::kernels::cuda {

// Throws DeviceError "<what>: <CUDA error string> (<error name>)" unless e == cudaSuccess.
void check(cudaError_t e, const char* what);
// After a kernel launch: a launch error (bad configuration, no device) as DeviceError.
inline void check_launch(const char* kernel) {
  check(cudaGetLastError(), kernel);
}

constexpr unsigned kFullMask = 0xffffffffu;

// log2 of a power of two, else -1 (host).
inline int log2_exact(int64_t v) {
  return v > 0 && (v & (v - 1)) == 0 ? __builtin_ctzll(static_cast<unsigned long long>(v)) : -1;
}

namespace dev {

// --- conversions: integer-for-integer ports of nibble/dtype.h (bit-exact, NaN payloads included)
__device__ __forceinline__ float bf16_to_float(uint16_t h) {
  return __uint_as_float(static_cast<uint32_t>(h) << 16);
}

__device__ __forceinline__ uint16_t float_to_bf16(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

__device__ __forceinline__ float fp16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0x1f) return __uint_as_float(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    const float v = __fmul_rn(__uint2float_rn(man), 0x1p-24f);  // exact
    return sign ? -v : v;
  }
  return __uint_as_float(sign | ((exp + 112u) << 23) | (man << 13));
}

__device__ __forceinline__ uint16_t float_to_fp16(float f) {
  const uint32_t u = __float_as_uint(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u | static_cast<uint16_t>((a >> 13) & 0x3ffu);
  if (a >= 0x477ff000u) return sign | 0x7c00u;
  if (a < 0x38800000u) {
    const float scaled = __fmul_rn(__uint_as_float(a), 0x1p24f);  // exact
    uint32_t q = __float2uint_rz(scaled);
    const float rem = __fsub_rn(scaled, __uint2float_rn(q));
    if (rem > 0.5f || (rem == 0.5f && (q & 1u))) ++q;
    return sign | static_cast<uint16_t>(q);
  }
  uint32_t r = a - 0x38000000u;
  r += 0xfffu + ((r >> 13) & 1u);
  return sign | static_cast<uint16_t>(r >> 13);
}

__device__ __forceinline__ float load(const void* src, DType dt, int64_t i) {
  switch (dt) {
    case DType::Float16:
      return fp16_to_float(static_cast<const uint16_t*>(src)[i]);
    case DType::BFloat16:
      return bf16_to_float(static_cast<const uint16_t*>(src)[i]);
    default:
      return static_cast<const float*>(src)[i];
  }
}

__device__ __forceinline__ void store(void* dst, DType dt, int64_t i, float v) {
  switch (dt) {
    case DType::Float16:
      static_cast<uint16_t*>(dst)[i] = float_to_fp16(v);
      break;
    case DType::BFloat16:
      static_cast<uint16_t*>(dst)[i] = float_to_bf16(v);
      break;
    default:
      static_cast<float*>(dst)[i] = v;
  }
}

// --- the 4-bit weight view: kernels::Q4Weights' fields, passed by value to kernels
struct Q4View {
  const uint8_t* packed;
  const float* code;  // 16 floats
  const float* absmax;
  const uint8_t* absmax_q;
  const float* code2;
  const float* absmax2;
  float offset;
  int bs_shift;      // log2(blocksize)
  int nested_shift;  // log2(nested_blocksize), or -1
  int64_t nested_blocksize;

  // quant/quant_state.cpp's float_absmax: code2[q] * absmax2 and + offset, two roundings
  __device__ __forceinline__ float block_absmax(int64_t b) const {
    if (absmax) return absmax[b];
    const int64_t b2 = nested_shift >= 0 ? b >> nested_shift : b / nested_blocksize;
    return __fadd_rn(__fmul_rn(code2[absmax_q[b]], absmax2[b2]), offset);
  }
};

}  // namespace dev

// The device view of w (host); ValueError unless the blocksize is a power of two and the absmax is given.
dev::Q4View make_view(const Q4Weights& w, const char* what);

}  // namespace nibble::kernels::cuda
