// CUDA decode GEMV benchmark (issue 11): the device's read bandwidth (a streaming-read kernel over 2 GiB),
// then gemv_4bit (NF4, blocksize 64, double quant: bitsandbytes' usual checkpoint) on Llama-7B/8B linear
// shapes for each compute dtype, as GB/s of weight bytes read and the fraction of that bandwidth. Weights are
// quantized on the device and replicated past 1 GiB, and successive calls cycle through the replicas, so each
// call reads from DRAM rather than the 50+ MB L2. Also the device quantize_4bit's input rate. Usage:
// nibble_cuda_bench [--json FILE] [--quick]
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/quant4.h"
#include "kernels/cuda/runtime.h"
#include "nibble/device.h"
#include "nibble/dtype.h"
#include "nibble/error.h"
#include "nibble/quantize.h"

using namespace nibble;
using kernels::cuda::DeviceBuffer;

namespace {

struct Weights {  // one replica in device memory
  DeviceBuffer packed, absmax_q, absmax2;
  kernels::Q4Weights w;
};

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc)
      json_path = argv[++i];
    else if (!std::strcmp(argv[i], "--quick"))
      quick = true;
    else {
      std::fprintf(stderr, "usage: %s [--json FILE] [--quick]\n", argv[0]);
      return 2;
    }
  }
  try {
    std::printf("cuda: %s\n", cuda_summary().c_str());
    if (!cuda_available()) {
      std::fprintf(stderr, "no CUDA device: nothing to measure\n");
      return 77;
    }
    kernels::cuda::set_device(0);
    const double bw = kernels::cuda::read_bandwidth(size_t{2} << 30, quick ? 3 : 10);
    std::printf("device read bandwidth: %.1f GB/s (2 GiB streaming read, best of %d)\n", bw / 1e9,
                quick ? 3 : 10);
    std::string json = "{\"device\": \"" + cuda_devices().at(0).name +
                       "\", \"read_bandwidth_gbs\": " + std::to_string(bw / 1e9) + ", \"gemv\": [";

    const std::vector<float> dyn = create_dynamic_map();
    const std::vector<float> nf4(nf4_code().begin(), nf4_code().end());
    DeviceBuffer code = DeviceBuffer::from_host(nf4), code2 = DeviceBuffer::from_host(dyn);
    const int64_t bs = 64;
    const std::pair<int64_t, int64_t> shapes[] = {{4096, 4096}, {4096, 11008}, {11008, 4096}, {14336, 4096}};
    bool first = true;
    for (const auto& [N, K] : shapes) {
      const int64_t n = N * K, nb = n / bs, nb2 = (nb + 255) / 256;
      // bfloat16 weights (Student-t), quantized on the device
      std::vector<uint16_t> host(static_cast<size_t>(n));
      std::mt19937 rng(static_cast<unsigned>(N + K));
      std::student_t_distribution<float> sd(4.0f);
      for (auto& h : host) h = float_to_bf16(0.02f * sd(rng));
      DeviceBuffer src = DeviceBuffer::from_host(host), absmax(static_cast<size_t>(nb) * 4);
      Weights base;
      base.packed = DeviceBuffer(static_cast<size_t>(n / 2));
      base.absmax_q = DeviceBuffer(static_cast<size_t>(nb));
      base.absmax2 = DeviceBuffer(static_cast<size_t>(nb2) * 4);
      const double qms = kernels::cuda::time_ms(
          [&] {
            kernels::cuda::quantize_4bit(src.data(), DType::BFloat16, n, bs, QuantType::NF4,
                                         absmax.as<float>(), base.packed.as<uint8_t>());
          },
          1, quick ? 2 : 5);
      const float offset =
          kernels::cuda::quantize_nested_absmax(absmax.as<float>(), nb, code2.as<float>(), 256,
                                                base.absmax_q.as<uint8_t>(), base.absmax2.as<float>());
      std::printf("quantize_4bit %lldx%lld bf16 -> nf4: %.3f ms (%.1f GB/s of input)\n",
                  static_cast<long long>(N), static_cast<long long>(K), qms,
                  static_cast<double>(n) * 2 / (qms * 1e-3) / 1e9);
      const auto packed_h = base.packed.to_host<uint8_t>();
      const auto q_h = base.absmax_q.to_host<uint8_t>();
      const auto a2_h = base.absmax2.to_host<float>();
      const size_t bytes = packed_h.size() + q_h.size() + a2_h.size() * 4;
      const int replicas = static_cast<int>(std::clamp<size_t>((size_t{1} << 30) / bytes + 1, 2, 256));
      std::vector<Weights> reps(static_cast<size_t>(replicas));
      for (auto& r : reps) {
        r.packed = DeviceBuffer::from_host(packed_h);
        r.absmax_q = DeviceBuffer::from_host(q_h);
        r.absmax2 = DeviceBuffer::from_host(a2_h);
        r.w.packed = r.packed.as<uint8_t>();
        r.w.N = N;
        r.w.K = K;
        r.w.blocksize = bs;
        r.w.code = code.as<float>();
        r.w.absmax_q = r.absmax_q.as<uint8_t>();
        r.w.code2 = code2.as<float>();
        r.w.absmax2 = r.absmax2.as<float>();
        r.w.set_nested_blocksize(256);
        r.w.offset = offset;
      }
      for (DType cd : {DType::Float32, DType::BFloat16, DType::Float16}) {
        std::vector<float> xf(static_cast<size_t>(K));
        std::normal_distribution<float> nd;
        for (auto& e : xf) e = nd(rng);
        const Tensor xt = Tensor::from_vector(DType::Float32, {K}, xf).to(cd);
        DeviceBuffer x(xt.nbytes()), y(static_cast<size_t>(N) * dtype_size(cd));
        x.upload(xt.raw(), xt.nbytes());
        int next = 0;
        const int iters = quick ? 50 : 400;
        const double ms = kernels::cuda::time_ms(
            [&] {
              kernels::cuda::gemv_4bit(reps[static_cast<size_t>(next)].w, x.data(), y.data(), cd);
              next = (next + 1) % replicas;
            },
            replicas, iters);
        const double total = static_cast<double>(bytes + xt.nbytes() + y.size());
        const double gbs = total / (ms * 1e-3) / 1e9;
        std::printf(
            "gemv_4bit %5lldx%-5lld nf4+dq bs64 %-8s: %8.2f us  %7.1f GB/s  %5.1f%% of read bandwidth%s\n",
            static_cast<long long>(N), static_cast<long long>(K), std::string(dtype_name(cd)).c_str(),
            ms * 1e3, gbs, 100 * gbs * 1e9 / bw,
            kernels::cuda::gemv_vectorized(reps[0].w) ? "" : " (scalar)");
        char row[256];
        std::snprintf(row, sizeof row,
                      "%s{\"N\": %lld, \"K\": %lld, \"compute\": \"%s\", \"us\": %.3f, \"gbs\": %.2f, "
                      "\"fraction\": %.4f}",
                      first ? "" : ", ", static_cast<long long>(N), static_cast<long long>(K),
                      std::string(dtype_name(cd)).c_str(), ms * 1e3, gbs, gbs * 1e9 / bw);
        json += row;
        first = false;
      }
    }
    json += "]}\n";
    if (!json_path.empty()) {
      FILE* f = std::fopen(json_path.c_str(), "w");
      if (!f) throw IoError("cannot write " + json_path);
      std::fputs(json.c_str(), f);
      std::fclose(f);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "nibble_cuda_bench: %s\n", e.what());
    return 1;
  }
}
