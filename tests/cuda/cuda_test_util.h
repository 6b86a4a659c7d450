// Helpers for the CUDA kernel tests: the skip rule and a QuantState uploaded to the device.
#pragma once
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "kernels/cpu/gemm4.h"
#include "kernels/cuda/runtime.h"
#include "nibble/device.h"
#include "nibble/quantize.h"

// GPU tests report skipped - never passed - where the backend cannot run (no CUDA in the build, no driver, no
// device), with the reason.
#define NIBBLE_SKIP_WITHOUT_CUDA() \
  if (!::nibble::cuda_available()) GTEST_SKIP() << "needs a CUDA device: " << ::nibble::cuda_summary()

namespace nibble::testing {

inline kernels::cuda::DeviceBuffer upload(const Tensor& t) {
  kernels::cuda::DeviceBuffer b(t.nbytes());
  b.upload(t.raw(), t.nbytes());
  return b;
}

// A 4-bit weight (CPU quantize_4bit's output) in device memory, and its kernels::Q4Weights view of device
// pointers.
struct DeviceQ4 {
  kernels::cuda::DeviceBuffer packed, code, absmax, absmax_q, code2, absmax2;
  kernels::Q4Weights w;

  DeviceQ4(const Tensor& p, const QuantState& s) {
    packed = upload(p);
    code = upload(s.code);
    w.packed = packed.as<const uint8_t>();
    w.code = code.as<const float>();
    w.blocksize = s.blocksize;
    if (s.shape.size() == 2) {
      w.N = s.shape[0];
      w.K = s.shape[1];
    }
    if (s.nested) {
      absmax_q = upload(s.absmax);
      code2 = upload(s.nested_code);
      absmax2 = upload(s.nested_absmax);
      w.absmax_q = absmax_q.as<const uint8_t>();
      w.code2 = code2.as<const float>();
      w.absmax2 = absmax2.as<const float>();
      w.set_nested_blocksize(s.nested_blocksize);
      w.offset = s.offset;
    } else {
      absmax = upload(s.absmax);
      w.absmax = absmax.as<const float>();
    }
  }
};

// Whether two byte ranges are equal; on a mismatch, the first differing element index (of `elem` bytes).
inline ::testing::AssertionResult same_bytes(const void* a, const void* b, size_t bytes, size_t elem) {
  if (std::memcmp(a, b, bytes) == 0) return ::testing::AssertionSuccess();
  const auto* pa = static_cast<const unsigned char*>(a);
  const auto* pb = static_cast<const unsigned char*>(b);
  size_t i = 0;
  while (pa[i] == pb[i]) ++i;
  size_t count = 0;
  for (size_t e = 0; e < bytes / elem; ++e) count += std::memcmp(pa + e * elem, pb + e * elem, elem) != 0;
  return ::testing::AssertionFailure()
         << count << " of " << bytes / elem << " elements differ, first at " << i / elem;
}

}  // namespace nibble::testing
