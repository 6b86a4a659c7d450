// Device strings and resolution: pure CPU code, built in every configuration (the CUDA queries it calls are
// runtime.cu's, or no_cuda.cpp's NotSupportedError stubs).
#include "nibble/device.h"

#include <cstdio>

#include "nibble/error.h"

namespace nibble {

namespace {

[[noreturn]] void bad_device(std::string_view s, std::string_view why) {
  throw ValueError("invalid device '" + std::string(s) + "': " + std::string(why) +
                   " (expected cpu, cuda, cuda:N or auto)");
}

}  // namespace

Device parse_device(std::string_view s) {
  if (s == "cpu") return {DeviceKind::Cpu, 0};
  if (s == "auto") return {DeviceKind::Auto, 0};
  if (s == "cuda") return {DeviceKind::Cuda, 0};
  if (!s.starts_with("cuda:")) bad_device(s, "unknown device");
  const std::string_view num = s.substr(5);
  if (num.empty()) bad_device(s, "missing device ordinal after 'cuda:'");
  if (num.size() > 4) bad_device(s, "device ordinal out of range");
  int index = 0;
  for (const char c : num) {
    if (c < '0' || c > '9') bad_device(s, "device ordinal must be a decimal number");
    index = index * 10 + (c - '0');
  }
  if (index >= 1024) bad_device(s, "device ordinal out of range");
  return {DeviceKind::Cuda, index};
}

std::string device_name(const Device& d) {
  switch (d.kind) {
    case DeviceKind::Cpu:
      return "cpu";
    case DeviceKind::Auto:
      return "auto";
    case DeviceKind::Cuda:
      break;
  }
  return "cuda:" + std::to_string(d.index);
}

Device resolve_device(const Device& d) {
  switch (d.kind) {
    case DeviceKind::Cpu:
      return d;
    case DeviceKind::Auto:
      return cuda_available() ? Device{DeviceKind::Cuda, 0} : Device{DeviceKind::Cpu, 0};
    case DeviceKind::Cuda:
      break;
  }
  const auto devices = cuda_devices();  // throws without CUDA, a driver or a device
  if (d.index < 0 || static_cast<size_t>(d.index) >= devices.size())
    throw ValueError("device " + device_name(d) + " does not exist: " + std::to_string(devices.size()) +
                     " CUDA device(s) found (cuda:0 .. cuda:" + std::to_string(devices.size() - 1) + ")");
  return d;
}

std::string cuda_summary() {
  if (!cuda_built()) return "built without CUDA (configure with --preset cuda)";
  try {
    std::string out;
    for (const CudaDeviceInfo& i : cuda_devices()) {
      char line[256];
      std::snprintf(line, sizeof line, "%scuda:%d %s (sm_%d%d, %d SMs, %.1f GiB, %.1f GiB free)",
                    out.empty() ? "" : "; ", i.index, i.name.c_str(), i.cc_major, i.cc_minor,
                    i.multiprocessors, static_cast<double>(i.total_memory) / (1 << 30),
                    static_cast<double>(i.free_memory) / (1 << 30));
      out += line;
    }
    return out;
  } catch (const DeviceError& e) {
    return std::string("built with CUDA; no device: ") + e.what();
  }
}

}  // namespace nibble
