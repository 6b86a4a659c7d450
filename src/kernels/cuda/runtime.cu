// The CUDA runtime side of the backend: errors, device queries, DeviceBuffer, timing, and the read-bandwidth
// probe. Built only with NIBBLE_CUDA=ON (no_cuda.cpp stands in otherwise).
#include <algorithm>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/runtime.h"
#include "nibble/device.h"
#include "nibble/error.h"

namespace nibble {

bool cuda_built() {
  return true;
}

bool cuda_available() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // clear it: cudaGetDeviceCount's error is sticky for cudaGetLastError
    return false;
  }
  return n > 0;
}

std::vector<CudaDeviceInfo> cuda_devices() {
  int n = 0;
  kernels::cuda::check(cudaGetDeviceCount(&n), "CUDA device query");
  if (n == 0) throw DeviceError("CUDA device query: the driver reports no device");
  std::vector<CudaDeviceInfo> out;
  int current = 0;
  kernels::cuda::check(cudaGetDevice(&current), "cudaGetDevice");
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp p{};
    kernels::cuda::check(cudaGetDeviceProperties(&p, i), "cudaGetDeviceProperties");
    CudaDeviceInfo d;
    d.index = i;
    d.name = p.name;
    d.cc_major = p.major;
    d.cc_minor = p.minor;
    d.multiprocessors = p.multiProcessorCount;
    d.total_memory = p.totalGlobalMem;
    kernels::cuda::check(cudaSetDevice(i), "cudaSetDevice");
    size_t free_b = 0, total_b = 0;
    kernels::cuda::check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
    d.free_memory = free_b;
    out.push_back(std::move(d));
  }
  kernels::cuda::check(cudaSetDevice(current), "cudaSetDevice");
  return out;
}

namespace kernels::cuda {

void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();  // a non-sticky error must not be reported again by the next check_launch
  throw DeviceError(std::string(what) + ": " + cudaGetErrorString(e) + " (" + cudaGetErrorName(e) + ")");
}

dev::Q4View make_view(const Q4Weights& w, const char* what) {
  const int bs_shift = log2_exact(w.blocksize);
  if (bs_shift < 5 || bs_shift > 12)
    throw ValueError(std::string(what) + ": blocksize must be one of 32, 64, ..., 4096; got " +
                     std::to_string(w.blocksize));
  if (!w.packed || !w.code) throw ValueError(std::string(what) + ": packed weights and code are required");
  if (!w.absmax && !(w.absmax_q && w.code2 && w.absmax2 && w.nested_blocksize > 0))
    throw ValueError(std::string(what) + ": give absmax, or absmax_q, code2, absmax2 and nested_blocksize");
  return {.packed = w.packed,
          .code = w.code,
          .absmax = w.absmax,
          .absmax_q = w.absmax_q,
          .code2 = w.code2,
          .absmax2 = w.absmax2,
          .offset = w.offset,
          .bs_shift = bs_shift,
          .nested_shift = log2_exact(w.nested_blocksize),
          .nested_blocksize = w.nested_blocksize};
}

DeviceBuffer::DeviceBuffer(size_t bytes) : size_(bytes) {
  if (bytes == 0) return;
  const cudaError_t e = cudaMalloc(&ptr_, bytes);
  if (e != cudaSuccess) {
    ptr_ = nullptr;
    size_ = 0;
    check(e, ("cudaMalloc of " + std::to_string(bytes) + " bytes").c_str());
  }
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) (void)cudaFree(ptr_);  // errors here are a previous kernel's, already reported or unreportable
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_) (void)cudaFree(ptr_);
    ptr_ = o.ptr_;
    size_ = o.size_;
    o.ptr_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

namespace {
void check_range(size_t size, size_t bytes, size_t offset, const char* what) {
  if (offset > size || bytes > size - offset)
    throw ValueError(std::string(what) + ": " + std::to_string(bytes) + " bytes at offset " +
                     std::to_string(offset) + " do not fit a device buffer of " + std::to_string(size) +
                     " bytes");
}
}  // namespace

void DeviceBuffer::upload(const void* src, size_t bytes, size_t offset) {
  check_range(size_, bytes, offset, "DeviceBuffer::upload");
  if (bytes == 0) return;
  check(cudaMemcpy(static_cast<char*>(ptr_) + offset, src, bytes, cudaMemcpyHostToDevice),
        "cudaMemcpy to device");
}

void DeviceBuffer::download(void* dst, size_t bytes, size_t offset) const {
  check_range(size_, bytes, offset, "DeviceBuffer::download");
  if (bytes == 0) return;
  check(cudaMemcpy(dst, static_cast<const char*>(ptr_) + offset, bytes, cudaMemcpyDeviceToHost),
        "cudaMemcpy from device");
}

void DeviceBuffer::fill_zero() {
  if (size_) check(cudaMemset(ptr_, 0, size_), "cudaMemset");
}

void set_device(int index) {
  check(cudaSetDevice(index), "cudaSetDevice");
}

void synchronize() {
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

EventTimer::EventTimer() {
  cudaEvent_t a = nullptr, b = nullptr;
  check(cudaEventCreate(&a), "cudaEventCreate");
  const cudaError_t e = cudaEventCreate(&b);
  if (e != cudaSuccess) {
    (void)cudaEventDestroy(a);
    check(e, "cudaEventCreate");
  }
  start_ = a;
  stop_ = b;
}

EventTimer::~EventTimer() {
  (void)cudaEventDestroy(static_cast<cudaEvent_t>(start_));
  (void)cudaEventDestroy(static_cast<cudaEvent_t>(stop_));
}

void EventTimer::start() {
  check(cudaEventRecord(static_cast<cudaEvent_t>(start_)), "cudaEventRecord");
}

double EventTimer::stop_ms() {
  check(cudaEventRecord(static_cast<cudaEvent_t>(stop_)), "cudaEventRecord");
  check(cudaEventSynchronize(static_cast<cudaEvent_t>(stop_)), "cudaEventSynchronize");
  float ms = 0;
  check(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start_), static_cast<cudaEvent_t>(stop_)),
        "cudaEventElapsedTime");
  return ms;
}

namespace {

// Each thread XORs the 16-byte words it reads (grid-stride, 4 loads in flight per iteration); the result is
// written only if it equals a value it cannot be in practice, so the loads stay but nothing is stored.
__global__ void read_kernel(const uint4* __restrict__ p, int64_t n, uint32_t* sink) {
  uint32_t acc = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    const uint4 a = __ldcs(p + i), b = __ldcs(p + i + stride), c = __ldcs(p + i + 2 * stride),
                d = __ldcs(p + i + 3 * stride);
    acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
  }
  for (; i < n; i += stride) {
    const uint4 a = __ldcs(p + i);
    acc ^= a.x ^ a.y ^ a.z ^ a.w;
  }
  if (acc == 0x9e3779b9u) sink[0] = acc;
}

}  // namespace

double read_bandwidth(size_t bytes, int reps) {
  const int64_t n = static_cast<int64_t>(bytes / 16);
  if (n == 0 || reps < 1) throw ValueError("read_bandwidth: need at least 16 bytes and one rep");
  DeviceBuffer buf(static_cast<size_t>(n) * 16), sink(4);
  buf.fill_zero();
  int dev = 0, sms = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  const int threads = 512;
  const int blocks = sms * 4;  // 2048 threads per SM: every warp slot busy
  auto run = [&] {
    read_kernel<<<blocks, threads>>>(buf.as<const uint4>(), n, sink.as<uint32_t>());
    check_launch("read_kernel");
  };
  run();
  synchronize();
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    const double ms = time_ms(run, 0, 1);
    best = std::max(best, static_cast<double>(n) * 16 / (ms * 1e-3));
  }
  return best;
}

}  // namespace kernels::cuda
}  // namespace nibble
