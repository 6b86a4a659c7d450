// bitsandbytes 4-bit kernels on a CUDA device. Every pointer is a device pointer (a DeviceBuffer's data()),
// and every call is queued on the default stream (asynchronous unless it says otherwise); a bad argument
// throws ValueError, a failed launch DeviceError. Without CUDA they throw NotSupportedError (no_cuda.cpp).
//
// Contracts (tests/cuda check them against the CPU):
// - quantize_4bit / quantize_nested_absmax / dequantize_4bit are bit-exact with kernels/cpu/reference.h and
//   quant/quantize_4bit.cpp (the CPU reference, itself bitsandbytes' CUDA rules): same absmax, same codes,
//   same output bits, for NF4 and FP4, blocksizes 32..4096, float32/float16/bfloat16, all-zero blocks, NaN
//   and inf.
// - gemv_4bit follows the numerics of kernels/cpu/gemm4.h's reference (bitsandbytes' dequantize-then-matmul
//   in the compute dtype) up to the order of float32 sums: each weight is round(code * absmax) in the compute
//   dtype (code * absmax rounded once in float32; for float32 compute the absmax multiplies each 32-weight
//   partial sum instead, as gemm4's fast CPU paths may), products and sums in float32, the output rounded to
//   the compute dtype.
#pragma once
#include <cstdint>

#include "kernels/cpu/gemm4.h"
#include "nibble/dtype.h"
#include "nibble/quant_type.h"

namespace nibble::kernels::cuda {

// src: n elements of dtype (float32, float16 or bfloat16). absmax: ceil(n / blocksize) floats; packed:
// ceil(n / 2) bytes (element 2j = high nibble of byte j; odd n pads 0.0). blocksize: 32, 64, ..., 4096.
void quantize_4bit(const void* src, DType dtype, int64_t n, int64_t blocksize, QuantType qt, float* absmax,
                   uint8_t* packed);

// Double quantization of nb absmax values (bitsandbytes' compress_statistics): offset = their mean (the
// sequential double-precision sum of quant/quantize_4bit.cpp, rounded once, so bit-exact), then
// absmax - offset quantized blockwise to 8 bits with `code` (256 sorted floats: create_dynamic_map()) in
// blocks of nested_blocksize (64 .. 4096; bitsandbytes uses 256). absmax_q: nb bytes; absmax2:
// ceil(nb / nested_blocksize) floats. Returns the offset (waits for the device).
float quantize_nested_absmax(const float* absmax, int64_t nb, const float* code, int64_t nested_blocksize,
                             uint8_t* absmax_q, float* absmax2);

// n elements of w (w.packed, w.blocksize, w.code and either w.absmax or the nested w.absmax_q / code2 /
// absmax2 / offset; N and K are not used) to out_dtype (float32, float16, bfloat16): out[k] =
// code[nibble k] * absmax[k / blocksize], rounded to out_dtype.
void dequantize_4bit(const Q4Weights& w, int64_t n, DType out_dtype, void* out);

// y[N] = W[N, K] x[K] for one token (decode): x and y are in the compute dtype (float32, or float16 /
// bfloat16 as uint16 bits). The weights are the bitsandbytes layout as stored (w as for dequantize_4bit, N
// and K set).
void gemv_4bit(const Q4Weights& w, const void* x, void* y, DType compute);
// Whether gemv_4bit takes the vectorised kernel (16-byte weight loads, a warp per row): K % 32 == 0 and the
// packed weights 16-byte aligned. Otherwise a scalar kernel (any K, rows starting mid-byte) runs.
bool gemv_vectorized(const Q4Weights& w);

}  // namespace nibble::kernels::cuda
