// The CUDA runtime as the kernels use it: device memory owned by DeviceBuffer, the current device, waiting
// for the device. Host code only (compiled by the C++ compiler too); the definitions are runtime.cu's, or
// no_cuda.cpp's where nibble is built without CUDA (every function then throws NotSupportedError).
// Errors: DeviceError carrying the CUDA error string.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace nibble::kernels::cuda {

// Device memory (cudaMalloc: 256-byte aligned), move-only. Copies go through the default stream and wait for
// the work queued before them.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);  // uninitialised; 0 bytes allocates nothing
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), size_(o.size_) {
    o.ptr_ = nullptr;
    o.size_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return ptr_; }
  size_t size() const { return size_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

  // ValueError when [offset, offset + bytes) is not inside the buffer.
  void upload(const void* src, size_t bytes, size_t offset = 0);
  void download(void* dst, size_t bytes, size_t offset = 0) const;
  void fill_zero();

  template <class T>
  static DeviceBuffer from_host(const std::vector<T>& v) {
    DeviceBuffer b(v.size() * sizeof(T));
    b.upload(v.data(), b.size());
    return b;
  }
  template <class T>
  std::vector<T> to_host() const {
    std::vector<T> v(size_ / sizeof(T));
    download(v.data(), v.size() * sizeof(T));
    return v;
  }

 private:
  void* ptr_ = nullptr;
  size_t size_ = 0;
};

void set_device(int index);
// Waits for all queued work; throws DeviceError for an error a kernel raised asynchronously.
void synchronize();

// Device read bandwidth in bytes/s: a kernel reads `bytes` of device memory (16-byte loads, every SM), best
// of `reps` timed runs after one warm-up. The ceiling the GEMV is measured against.
double read_bandwidth(size_t bytes, int reps);

// Milliseconds per call of fn (which queues work on the default stream), timed with CUDA events over `iters`
// calls after `warmup` untimed ones.
template <class F>
double time_ms(F&& fn, int warmup, int iters);

// Event-timing primitives behind time_ms.
struct EventTimer {
  EventTimer();
  ~EventTimer();
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  void start();
  double stop_ms();  // waits for the device

 private:
  void* start_ = nullptr;
  void* stop_ = nullptr;
};

template <class F>
double time_ms(F&& fn, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) fn();
  EventTimer t;
  t.start();
  for (int i = 0; i < iters; ++i) fn();
  return t.stop_ms() / iters;
}

}  // namespace nibble::kernels::cuda
