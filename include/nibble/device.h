// Where nibble runs: the device strings of `--device` ("cpu", "cuda", "cuda:N", "auto") and what the CUDA
// backend finds on this machine. The CUDA backend is experimental (issue 11): it is compiled only with
// `cmake --preset cuda` (NIBBLE_CUDA=ON); in other builds every CUDA query says so with NotSupportedError.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace nibble {

enum class DeviceKind { Cpu, Cuda, Auto };

struct Device {
  DeviceKind kind = DeviceKind::Cpu;
  int index = 0;  // the CUDA device ordinal ("cuda" is "cuda:0"); 0 for cpu and auto

  bool operator==(const Device&) const = default;
};

// "cpu", "cuda", "cuda:N" (N a decimal ordinal, 0 <= N < 1024) or "auto". Pure parsing: it does not look at
// the machine. Throws ValueError naming the string and the accepted forms.
Device parse_device(std::string_view s);
// The canonical spelling: "cpu", "cuda:N", "auto".
std::string device_name(const Device& d);

// Whether this build has the CUDA backend (NIBBLE_CUDA=ON).
bool cuda_built();
// Whether the CUDA backend can run here: built with CUDA, a driver and at least one device. Never throws.
bool cuda_available();

struct CudaDeviceInfo {
  int index = 0;
  std::string name;  // "NVIDIA H200"
  int cc_major = 0, cc_minor = 0;
  int multiprocessors = 0;
  size_t total_memory = 0, free_memory = 0;  // bytes
};
// The devices the driver reports. Throws NotSupportedError in a build without CUDA ("nibble was built
// without CUDA: configure with --preset cuda") and DeviceError, with the CUDA error string, when there is no
// driver or no device.
std::vector<CudaDeviceInfo> cuda_devices();

// "auto" becomes cuda:0 where cuda_available(), else cpu; "cuda:N" is checked against the devices present
// (the errors of cuda_devices(), or ValueError when N is out of range); "cpu" is returned as is.
Device resolve_device(const Device& d);

// One line for `nibble info`: "built without CUDA", "no device (<CUDA error>)" or the devices found.
std::string cuda_summary();

}  // namespace nibble
