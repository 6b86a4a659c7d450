// What nibble's CPU kernels do on this machine: the fused 4-bit kernel path chosen for a compute dtype, and
// the DRAM read bandwidth that decode speed is measured against.
#pragma once
#include <cstddef>
#include <string>

#include "nibble/dtype.h"

namespace nibble {

// The path the fused 4-bit kernels take here for `compute_dtype`: "avx512-bf16+amx", "avx512-bf16",
// "avx512", "avx2" or "reference".
std::string kernel_path(DType compute_dtype);

// Bytes per second reading `bytes` with all threads (a fresh buffer, touched once before timing), best of
// `reps`.
double measure_read_bandwidth(size_t bytes = size_t{1} << 30, int reps = 3);

}  // namespace nibble
