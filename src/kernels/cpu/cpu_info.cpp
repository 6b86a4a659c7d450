// The public face of the CPU kernels' dispatch (nibble/cpu.h).
#include "kernels/cpu/gemm4.h"
#include "kernels/cpu/read_bandwidth.h"
#include "nibble/cpu.h"

namespace nibble {

std::string kernel_path(DType compute_dtype) {
  return kernels::gemm_path_name(kernels::GemmPath::Auto, compute_dtype);
}

double measure_read_bandwidth(size_t bytes, int reps) {
  return kernels::measure_read_bandwidth(bytes, reps);
}

}  // namespace nibble
