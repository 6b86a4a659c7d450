// Dispatched (Highway, runtime CPU detection) 4-bit quantize/dequantize kernels, parallel over blocks with
// OpenMP. Bit-exact with kernels/cpu/reference.h, which tests/kernels checks on every target this CPU has.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "nibble/dtype.h"
#include "nibble/quant_type.h"

namespace nibble::kernels {

void quantize_4bit(const void* src, DType dtype, int64_t n, int64_t blocksize, QuantType qt, float* absmax,
                   uint8_t* packed);
void dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize,
                     const float* code, DType out_dtype, void* out);

// Testing hooks: the SIMD targets compiled in and available on this CPU, and forcing one of them
// (index into the list; -1 = best). Not thread-safe; tests only.
std::vector<std::string> available_targets();
void force_target(int index);

}  // namespace nibble::kernels
