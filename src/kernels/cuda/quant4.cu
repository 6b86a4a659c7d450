// 4-bit quantize / dequantize and the 8-bit double quantization of the absmax on the device, bit-exact with
// the CPU reference (kernels/cpu/reference.cpp, quant/quantize_4bit.cpp). Compiled with --fmad=false, and
// every rounding spelled with an _rn intrinsic besides. Quantization runs once per weight at load time, so
// these kernels aim for clarity over peak bandwidth: a warp per quantization block, absmax by a warp max
// (exact in any order: max ignores NaN as the CPU's fmax fold does), then each lane packs pairs of elements.
#include <algorithm>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/quant4.h"
#include "kernels/cuda/runtime.h"
#include "nibble/error.h"

namespace nibble::kernels::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

// kernels/cpu/reference.cpp's quantize_nf4: the CUDA decision tree over the midpoints between NF4 codes.
__device__ __forceinline__ uint8_t quantize_nf4(float x) {
  if (x > 0.03979014977812767f) {
    if (x > 0.3893125355243683f) {
      if (x > 0.6427869200706482f) return x > 0.8614784181118011f ? 15 : 14;
      return x > 0.5016634166240692f ? 13 : 12;
    }
    if (x > 0.2035212516784668f) return x > 0.2920137718319893f ? 11 : 10;
    return x > 0.1202552504837513f ? 9 : 8;
  }
  if (x > -0.33967943489551544f) {
    if (x > -0.13791173323988914f) return x > -0.045525018125772476f ? 7 : 6;
    return x > -0.23460740596055984f ? 5 : 4;
  }
  if (x > -0.6106329262256622f) return x > -0.4599952697753906f ? 3 : 2;
  return x > -0.8480964004993439f ? 1 : 0;
}

// kernels/cpu/reference.cpp's quantize_fp4.
__device__ __forceinline__ uint8_t quantize_fp4(float x) {
  const uint8_t sign = x < 0 ? 0b1000 : 0;
  x = fabsf(x);
  uint8_t bits;
  if (x > 0.29166667f) {
    if (x > 0.583333f)
      bits = x > 0.8333333f ? 0b011 : 0b010;
    else
      bits = x > 0.4166667f ? 0b101 : 0b100;
  } else if (x > 0.0859375f) {
    bits = x > 0.20833333f ? 0b111 : 0b110;
  } else {
    bits = x > 0.00260417f ? 0b001 : 0b000;
  }
  return sign | bits;
}

// kernels/cpu/reference.cpp's quantize_8bit: bitsandbytes' pivot search over a sorted 256-entry code.
__device__ __forceinline__ uint8_t quantize_8bit(const float* code, float x) {
  int pivot = 127, upper_pivot = 255, lower_pivot = 0;
  float lower = -1.0f, upper = 1.0f;
  float val = code[pivot];
  for (int i = 64; i > 0; i >>= 1) {
    if (x > val) {
      lower_pivot = pivot;
      lower = val;
      pivot += i;
    } else {
      upper_pivot = pivot;
      upper = val;
      pivot -= i;
    }
    val = code[pivot];
  }
  if (upper_pivot == 255) upper = code[upper_pivot];
  if (lower_pivot == 0) lower = code[lower_pivot];
  if (x > val) {
    const float mid = __fmul_rn(__fadd_rn(upper, val), 0.5f);
    return static_cast<uint8_t>(x > mid ? upper_pivot : pivot);
  }
  const float mid = __fmul_rn(__fadd_rn(lower, val), 0.5f);
  return static_cast<uint8_t>(x < mid ? lower_pivot : pivot);
}

__device__ __forceinline__ float warp_max(float v) {
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}

template <bool kNF4>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    quantize_4bit_kernel(const void* __restrict__ src, DType dt, int64_t n, int64_t blocksize, int64_t nb,
                         float* __restrict__ absmax, uint8_t* __restrict__ packed) {
  const int lane = threadIdx.x & 31;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (b >= nb) return;  // the whole warp leaves together
  const int64_t i0 = b * blocksize;
  const int64_t valid = min(blocksize, n - i0);
  float amax = -FLT_MAX;  // as the reference: NaN inputs are ignored
  for (int64_t i = lane; i < valid; i += 32) amax = fmaxf(amax, fabsf(dev::load(src, dt, i0 + i)));
  amax = warp_max(amax);
  if (valid < blocksize) amax = fmaxf(amax, 0.0f);  // padding counts as 0.0
  if (lane == 0) absmax[b] = amax;
  const float inv = __fdiv_rn(1.0f, amax);  // 1/0 = inf: an all-zero block gives 0 * inf = NaN -> code 0
  const int64_t padded = (valid + 1) & ~int64_t{1};
  for (int64_t i = 2 * lane; i < padded; i += 64) {
    const float v0 = dev::load(src, dt, i0 + i);
    const float v1 = i + 1 < valid ? dev::load(src, dt, i0 + i + 1) : 0.0f;
    const float s0 = __fmul_rn(v0, inv), s1 = __fmul_rn(v1, inv);
    const uint8_t q0 = kNF4 ? quantize_nf4(s0) : quantize_fp4(s0);
    const uint8_t q1 = kNF4 ? quantize_nf4(s1) : quantize_fp4(s1);
    packed[(i0 + i) / 2] = static_cast<uint8_t>((q0 << 4) | q1);
  }
}

// quant/quantize_4bit.cpp's offset: the double sum in index order, divided and rounded once. One thread, so
// the order (and every bit) is the CPU's; loads are issued 8 ahead of the adds that consume them.
__global__ void mean_kernel(const float* __restrict__ absmax, int64_t nb, float* __restrict__ offset) {
  double sum = 0;
  int64_t i = 0;
  for (; i + 8 <= nb; i += 8) {
    float v[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = absmax[i + j];
#pragma unroll
    for (int j = 0; j < 8; ++j) sum = __dadd_rn(sum, static_cast<double>(v[j]));
  }
  for (; i < nb; ++i) sum = __dadd_rn(sum, static_cast<double>(absmax[i]));
  *offset = nb > 0 ? __double2float_rn(__ddiv_rn(sum, static_cast<double>(nb))) : 0.0f;
}

// reference quantize_blockwise over (absmax - offset): a warp per block of nested_blocksize values.
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    quantize_nested_kernel(const float* __restrict__ absmax, int64_t nb, const float* __restrict__ code256,
                           int64_t bs2, int64_t nb2, const float* __restrict__ offset_p,
                           uint8_t* __restrict__ absmax_q, float* __restrict__ absmax2) {
  __shared__ float code[256];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) code[i] = code256[i];
  __syncthreads();
  const float offset = *offset_p;
  const int lane = threadIdx.x & 31;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (b >= nb2) return;
  const int64_t i0 = b * bs2;
  const int64_t valid = min(bs2, nb - i0);
  float amax = -FLT_MAX;  // no padding rule here: the reference folds over the valid values only
  for (int64_t i = lane; i < valid; i += 32) amax = fmaxf(amax, fabsf(__fsub_rn(absmax[i0 + i], offset)));
  amax = warp_max(amax);
  if (lane == 0) absmax2[b] = amax;
  const float inv = __fdiv_rn(1.0f, amax);
  for (int64_t i = lane; i < valid; i += 32)
    absmax_q[i0 + i] = quantize_8bit(code, __fmul_rn(__fsub_rn(absmax[i0 + i], offset), inv));
}

// Each thread writes the two elements of one packed byte (grid-stride).
__global__ void dequantize_4bit_kernel(dev::Q4View w, int64_t n, DType out_dt, void* __restrict__ out) {
  __shared__ float code[16];
  if (threadIdx.x < 16) code[threadIdx.x] = w.code[threadIdx.x];
  __syncthreads();
  const int64_t nbytes = (n + 1) / 2;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < nbytes; j += stride) {
    const uint8_t byte = w.packed[j];
    const int64_t k0 = 2 * j, k1 = k0 + 1;
    dev::store(out, out_dt, k0, __fmul_rn(code[byte >> 4], w.block_absmax(k0 >> w.bs_shift)));
    if (k1 < n) dev::store(out, out_dt, k1, __fmul_rn(code[byte & 0x0f], w.block_absmax(k1 >> w.bs_shift)));
  }
}

void check_float_dtype(DType dt, const char* what) {
  if (dt != DType::Float32 && dt != DType::Float16 && dt != DType::BFloat16)
    throw ValueError(std::string(what) + " must be float32, float16 or bfloat16, got " +
                     std::string(dtype_name(dt)));
}

unsigned grid_for(int64_t warps) {
  return static_cast<unsigned>((warps + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

}  // namespace

void quantize_4bit(const void* src, DType dtype, int64_t n, int64_t blocksize, QuantType qt, float* absmax,
                   uint8_t* packed) {
  check_float_dtype(dtype, "quantize_4bit: input");
  const int shift = log2_exact(blocksize);
  if (shift < 5 || shift > 12)
    throw ValueError("quantize_4bit: blocksize must be one of 32, 64, ..., 4096; got " +
                     std::to_string(blocksize));
  if (n < 0) throw ValueError("quantize_4bit: negative element count");
  const int64_t nb = (n + blocksize - 1) / blocksize;
  if (nb == 0) return;
  if (qt == QuantType::NF4)
    quantize_4bit_kernel<true>
        <<<grid_for(nb), kWarpsPerBlock * 32>>>(src, dtype, n, blocksize, nb, absmax, packed);
  else
    quantize_4bit_kernel<false>
        <<<grid_for(nb), kWarpsPerBlock * 32>>>(src, dtype, n, blocksize, nb, absmax, packed);
  check_launch("quantize_4bit_kernel");
}

float quantize_nested_absmax(const float* absmax, int64_t nb, const float* code, int64_t nested_blocksize,
                             uint8_t* absmax_q, float* absmax2) {
  const int shift = log2_exact(nested_blocksize);
  if (shift < 6 || shift > 12)
    throw ValueError("quantize_nested_absmax: nested blocksize must be one of 64, 128, ..., 4096; got " +
                     std::to_string(nested_blocksize));
  if (nb < 0) throw ValueError("quantize_nested_absmax: negative block count");
  DeviceBuffer offset(sizeof(float));
  mean_kernel<<<1, 1>>>(absmax, nb, offset.as<float>());
  check_launch("mean_kernel");
  const int64_t nb2 = (nb + nested_blocksize - 1) / nested_blocksize;
  if (nb2 > 0) {
    quantize_nested_kernel<<<grid_for(nb2), kWarpsPerBlock * 32>>>(absmax, nb, code, nested_blocksize, nb2,
                                                                   offset.as<float>(), absmax_q, absmax2);
    check_launch("quantize_nested_kernel");
  }
  float host_offset = 0;
  offset.download(&host_offset, sizeof host_offset);
  return host_offset;
}

void dequantize_4bit(const Q4Weights& w, int64_t n, DType out_dtype, void* out) {
  check_float_dtype(out_dtype, "dequantize_4bit: output dtype");
  const dev::Q4View v = make_view(w, "dequantize_4bit");
  if (n < 0) throw ValueError("dequantize_4bit: negative element count");
  const int64_t nbytes = (n + 1) / 2;
  if (nbytes == 0) return;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((nbytes + threads - 1) / threads, int64_t{1} << 20);
  dequantize_4bit_kernel<<<static_cast<unsigned>(blocks), threads>>>(v, n, out_dtype, out);
  check_launch("dequantize_4bit_kernel");
}

}  // namespace nibble::kernels::cuda
