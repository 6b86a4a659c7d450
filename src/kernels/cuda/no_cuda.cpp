// The CUDA entry points of a build without the CUDA backend (NIBBLE_CUDA=OFF; CMakeLists.txt drops this file
// when it is ON): queries say no, everything else throws NotSupportedError naming the preset that has it.
#include "kernels/cuda/quant4.h"
#include "kernels/cuda/runtime.h"
#include "nibble/device.h"
#include "nibble/error.h"

namespace nibble {

namespace {
[[noreturn]] void not_built() {
  throw NotSupportedError("nibble was built without CUDA: configure with --preset cuda");
}
}  // namespace

bool cuda_built() {
  return false;
}
bool cuda_available() {
  return false;
}
std::vector<CudaDeviceInfo> cuda_devices() {
  not_built();
}

namespace kernels::cuda {

DeviceBuffer::DeviceBuffer(size_t) {
  not_built();
}
DeviceBuffer::~DeviceBuffer() = default;
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&&) noexcept {
  return *this;
}
void DeviceBuffer::upload(const void*, size_t, size_t) {
  not_built();
}
void DeviceBuffer::download(void*, size_t, size_t) const {
  not_built();
}
void DeviceBuffer::fill_zero() {
  not_built();
}
void set_device(int) {
  not_built();
}
void synchronize() {
  not_built();
}
double read_bandwidth(size_t, int) {
  not_built();
}
EventTimer::EventTimer() {
  not_built();
}
EventTimer::~EventTimer() = default;
void EventTimer::start() {
  not_built();
}
double EventTimer::stop_ms() {
  not_built();
}

void quantize_4bit(const void*, DType, int64_t, int64_t, QuantType, float*, uint8_t*) {
  not_built();
}
float quantize_nested_absmax(const float*, int64_t, const float*, int64_t, uint8_t*, float*) {
  not_built();
}
void dequantize_4bit(const Q4Weights&, int64_t, DType, void*) {
  not_built();
}
void gemv_4bit(const Q4Weights&, const void*, void*, DType) {
  not_built();
}
bool gemv_vectorized(const Q4Weights&) {
  not_built();
}

}  // namespace kernels::cuda
}  // namespace nibble
