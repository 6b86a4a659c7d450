// Device strings and the CUDA backend's answers where it cannot run: pure CPU, run in every build.
#include "nibble/device.h"

#include <gtest/gtest.h>

#include <string>

#include "kernels/cuda/runtime.h"
#include "nibble/error.h"

namespace nibble {
namespace {

TEST(DeviceString, ParsesEveryForm) {
  EXPECT_EQ(parse_device("cpu"), (Device{DeviceKind::Cpu, 0}));
  EXPECT_EQ(parse_device("auto"), (Device{DeviceKind::Auto, 0}));
  EXPECT_EQ(parse_device("cuda"), (Device{DeviceKind::Cuda, 0}));
  EXPECT_EQ(parse_device("cuda:0"), (Device{DeviceKind::Cuda, 0}));
  EXPECT_EQ(parse_device("cuda:3"), (Device{DeviceKind::Cuda, 3}));
  EXPECT_EQ(parse_device("cuda:1023"), (Device{DeviceKind::Cuda, 1023}));
  EXPECT_EQ(parse_device("cuda:007"), (Device{DeviceKind::Cuda, 7}));
}

TEST(DeviceString, NameRoundTrips) {
  for (const char* s : {"cpu", "auto", "cuda:0", "cuda:12"}) EXPECT_EQ(device_name(parse_device(s)), s);
  EXPECT_EQ(device_name(parse_device("cuda")), "cuda:0");
}

TEST(DeviceString, RejectsWithTheStringAndTheForms) {
  const std::pair<const char*, const char*> bad[] = {
      {"", "unknown device"},         {"gpu", "unknown device"},     {"CUDA", "unknown device"},
      {"cpu:0", "unknown device"},    {" cuda", "unknown device"},   {"cuda:", "missing device ordinal"},
      {"cuda:-1", "decimal number"},  {"cuda:1a", "decimal number"}, {"cuda: 1", "decimal number"},
      {"cuda:0x1", "decimal number"}, {"cuda:1024", "out of range"}, {"cuda:99999999999", "out of range"},
  };
  for (const auto& [s, why] : bad) {
    try {
      parse_device(s);
      ADD_FAILURE() << "accepted '" << s << "'";
    } catch (const ValueError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("'" + std::string(s) + "'"), std::string::npos) << msg;
      EXPECT_NE(msg.find(why), std::string::npos) << msg;
      EXPECT_NE(msg.find("expected cpu, cuda, cuda:N or auto"), std::string::npos) << msg;
    }
  }
}

TEST(DeviceResolve, CpuStaysAndAutoFollowsAvailability) {
  EXPECT_EQ(resolve_device(parse_device("cpu")), (Device{DeviceKind::Cpu, 0}));
  const Device a = resolve_device(parse_device("auto"));
  const Device want = cuda_available() ? Device{DeviceKind::Cuda, 0} : Device{DeviceKind::Cpu, 0};
  EXPECT_EQ(a, want);
}

// What a user sees asking for CUDA where it cannot run: a build without CUDA names the preset; a CUDA build
// on a machine without a driver or GPU (CI's) reports DeviceError with the CUDA runtime's own error string.
TEST(DeviceResolve, CudaWithoutBackendOrDeviceIsAClearError) {
  if (cuda_available()) GTEST_SKIP() << "a CUDA device is present; this test is about machines without one";
  EXPECT_FALSE(cuda_available());
  if (!cuda_built()) {
    EXPECT_THROW(cuda_devices(), NotSupportedError);
    try {
      resolve_device(parse_device("cuda:0"));
      ADD_FAILURE() << "resolved cuda:0 without CUDA";
    } catch (const NotSupportedError& e) {
      EXPECT_STREQ(e.what(), "nibble was built without CUDA: configure with --preset cuda");
    }
    EXPECT_THROW(kernels::cuda::DeviceBuffer(16), NotSupportedError);
    EXPECT_EQ(cuda_summary(), "built without CUDA (configure with --preset cuda)");
    return;
  }
  try {
    resolve_device(parse_device("cuda"));
    ADD_FAILURE() << "resolved cuda without a device";
  } catch (const DeviceError& e) {
    const std::string msg = e.what();
    // "CUDA device query: <cudaGetErrorString> (<cudaGetErrorName>)", or the no-device message
    EXPECT_EQ(msg.rfind("CUDA device query: ", 0), 0u) << msg;
    EXPECT_GT(msg.size(), std::string("CUDA device query: ").size() + 8) << msg;
  }
  EXPECT_THROW(kernels::cuda::DeviceBuffer(16), DeviceError);
  EXPECT_EQ(cuda_summary().rfind("built with CUDA; no device: CUDA device query: ", 0), 0u) << cuda_summary();
}

TEST(DeviceResolve, OrdinalBeyondTheDevicesIsAValueError) {
  if (!cuda_available()) GTEST_SKIP() << "needs a CUDA device (" << cuda_summary() << ")";
  const auto devices = cuda_devices();
  ASSERT_FALSE(devices.empty());
  EXPECT_EQ(resolve_device(parse_device("cuda:0")), (Device{DeviceKind::Cuda, 0}));
  const std::string past = "cuda:" + std::to_string(devices.size());
  EXPECT_THROW(resolve_device(parse_device(past)), ValueError);
  for (const auto& d : devices) {
    EXPECT_FALSE(d.name.empty());
    EXPECT_GT(d.total_memory, 0u);
    EXPECT_LE(d.free_memory, d.total_memory);
    EXPECT_GE(d.cc_major, 8) << "nibble's CUDA kernels are compiled for sm_80 and newer";
  }
}

}  // namespace
}  // namespace nibble
