// The machine's DRAM read bandwidth, measured the way a GEMV reads its weights: all threads streaming
// distinct parts of a large buffer with wide loads. Benchmarks report kernels as a fraction of it.
#pragma once
#include <cstddef>

namespace nibble::kernels {

// Bytes per second reading `bytes` (a fresh buffer, touched once before timing), best of `reps`.
double measure_read_bandwidth(size_t bytes = size_t{1} << 30, int reps = 3);

}  // namespace nibble::kernels
