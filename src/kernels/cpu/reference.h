// Scalar reference kernels: the definition of correct for every SIMD/CUDA path. They follow bitsandbytes'
// CUDA kernels (csrc/kernels.cu) operation by operation; see spec/bnb-4bit.md.
#pragma once
#include <cstdint>

#include "nibble/dtype.h"
#include "nibble/quant_type.h"

namespace nibble::kernels::ref {

// NF4 / FP4 codes of one value already scaled by 1/absmax (CUDA dQuantizeNF4 / dQuantizeFP4).
uint8_t quantize_nf4(float x);
uint8_t quantize_fp4(float x);

// Quantizes blocks [block_begin, block_end) of the n-element array `src` (float32/float16/bfloat16):
// absmax[b] and the packed bytes of those blocks (element 2j = high nibble of byte j; odd n pads 0.0).
void quantize_4bit(const void* src, DType dtype, int64_t n, int64_t blocksize, QuantType qt, float* absmax,
                   uint8_t* packed, int64_t block_begin, int64_t block_end);

// out[k] = code[nibble k] * absmax[k / blocksize] in float32, rounded to out_dtype, for k in
// [elem_begin, elem_end) (elem_begin even).
void dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t blocksize, const float* code,
                     DType out_dtype, void* out, int64_t elem_begin, int64_t elem_end);

// bitsandbytes' 8-bit dQuantize for a sorted 256-entry code: CUDA's 7-step pivot search and midpoint rule.
uint8_t quantize_8bit(const float* code, float x);

// Blockwise 8-bit over blocks [block_begin, block_end) of float32 input.
void quantize_blockwise(const float* src, int64_t n, int64_t blocksize, const float* code, float* absmax,
                        uint8_t* out, int64_t block_begin, int64_t block_end);

}  // namespace nibble::kernels::ref
