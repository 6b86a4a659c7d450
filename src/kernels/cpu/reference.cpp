#include "kernels/cpu/reference.h"

#include <cfloat>
#include <cmath>
#include <cstring>

namespace nibble::kernels::ref {
namespace {

float load(const void* src, DType dt, int64_t i) {
  switch (dt) {
    case DType::Float16:
      return fp16_to_float(static_cast<const uint16_t*>(src)[i]);
    case DType::BFloat16:
      return bf16_to_float(static_cast<const uint16_t*>(src)[i]);
    default:
      return static_cast<const float*>(src)[i];
  }
}

void store(void* dst, DType dt, int64_t i, float v) {
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

}  // namespace

uint8_t quantize_nf4(float x) {
  // The CUDA decision tree compares `x > t` against the midpoints; it equals counting midpoints below x.
  static constexpr float kT[15] = {-0.8480964004993439f,   -0.6106329262256622f,  -0.4599952697753906f,
                                   -0.33967943489551544f,  -0.23460740596055984f, -0.13791173323988914f,
                                   -0.045525018125772476f, 0.03979014977812767f,  0.1202552504837513f,
                                   0.2035212516784668f,    0.2920137718319893f,   0.3893125355243683f,
                                   0.5016634166240692f,    0.6427869200706482f,   0.8614784181118011f};
  if (x > kT[7]) {
    if (x > kT[11]) {
      if (x > kT[13]) return x > kT[14] ? 15 : 14;
      return x > kT[12] ? 13 : 12;
    }
    if (x > kT[9]) return x > kT[10] ? 11 : 10;
    return x > kT[8] ? 9 : 8;
  }
  if (x > kT[3]) {
    if (x > kT[5]) return x > kT[6] ? 7 : 6;
    return x > kT[4] ? 5 : 4;
  }
  if (x > kT[1]) return x > kT[2] ? 3 : 2;
  return x > kT[0] ? 1 : 0;
}

uint8_t quantize_fp4(float x) {
  const uint8_t sign = x < 0 ? 0b1000 : 0;
  x = std::fabs(x);
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

void quantize_4bit(const void* src, DType dtype, int64_t n, int64_t blocksize, QuantType qt, float* absmax,
                   uint8_t* packed, int64_t block_begin, int64_t block_end) {
  auto q = qt == QuantType::NF4 ? quantize_nf4 : quantize_fp4;
  for (int64_t b = block_begin; b < block_end; ++b) {
    const int64_t i0 = b * blocksize;
    const int64_t valid = std::min(blocksize, n - i0);
    float amax = -FLT_MAX;  // CUDA starts from -FLT_MAX and folds fmaxf(|x|): NaN inputs are ignored
    for (int64_t i = 0; i < valid; ++i) amax = std::fmax(amax, std::fabs(load(src, dtype, i0 + i)));
    if (valid < blocksize) amax = std::fmax(amax, 0.0f);  // CUDA loads padding as 0.0
    absmax[b] = amax;
    const float inv = 1.0f / amax;
    const int64_t padded = (valid + 1) & ~int64_t{1};
    for (int64_t i = 0; i < padded; i += 2) {
      const float v0 = load(src, dtype, i0 + i);
      const float v1 = i + 1 < valid ? load(src, dtype, i0 + i + 1) : 0.0f;
      packed[(i0 + i) / 2] = static_cast<uint8_t>((q(v0 * inv) << 4) | q(v1 * inv));
    }
  }
}

void dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t blocksize, const float* code,
                     DType out_dtype, void* out, int64_t elem_begin, int64_t elem_end) {
  for (int64_t k = elem_begin; k < elem_end; ++k) {
    const uint8_t byte = packed[k / 2];
    const uint8_t c = (k & 1) ? (byte & 0x0f) : (byte >> 4);
    store(out, out_dtype, k, code[c] * absmax[k / blocksize]);
  }
}

uint8_t quantize_8bit(const float* code, float x) {
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
    const float mid = (upper + val) * 0.5f;
    return static_cast<uint8_t>(x > mid ? upper_pivot : pivot);
  }
  const float mid = (lower + val) * 0.5f;
  return static_cast<uint8_t>(x < mid ? lower_pivot : pivot);
}

void quantize_blockwise(const float* src, int64_t n, int64_t blocksize, const float* code, float* absmax,
                        uint8_t* out, int64_t block_begin, int64_t block_end) {
  for (int64_t b = block_begin; b < block_end; ++b) {
    const int64_t i0 = b * blocksize;
    const int64_t valid = std::min(blocksize, n - i0);
    float amax = -FLT_MAX;
    for (int64_t i = 0; i < valid; ++i) amax = std::fmax(amax, std::fabs(src[i0 + i]));
    absmax[b] = amax;
    const float inv = 1.0f / amax;
    for (int64_t i = 0; i < valid; ++i) out[i0 + i] = quantize_8bit(code, src[i0 + i] * inv);
  }
}

}  // namespace nibble::kernels::ref
