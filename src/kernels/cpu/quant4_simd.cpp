// Highway implementation of the 4-bit kernels. Compiled once per x86 target (SSSE3..AVX3) and dispatched
// at run time. Each function is bit-exact with its scalar twin in reference.cpp.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/quant4_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <cfloat>
#include <cmath>
#include <cstring>

#include "kernels/cpu/quant4.h"
#include "kernels/cpu/reference.h"

HWY_BEFORE_NAMESPACE();
namespace nibble::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;

template <class D>
HWY_INLINE hn::Vec<D> LoadF(D df, DType dt, const void* src, int64_t i) {
  if (dt == DType::Float32) return hn::LoadU(df, static_cast<const float*>(src) + i);
  if (dt == DType::BFloat16) {
    const hn::Rebind<hwy::bfloat16_t, D> dbf;
    return hn::PromoteTo(df, hn::LoadU(dbf, static_cast<const hwy::bfloat16_t*>(src) + i));
  }
#if HWY_TARGET >= HWY_SSE4  // no F16C: Highway's emulated PromoteTo mishandles inf/NaN; use the scalar one
  alignas(64) float tmp[hn::MaxLanes(df)];
  for (size_t k = 0; k < hn::Lanes(df); ++k)
    tmp[k] = fp16_to_float(static_cast<const uint16_t*>(src)[i + static_cast<int64_t>(k)]);
  return hn::Load(df, tmp);
#else
  const hn::Rebind<hwy::float16_t, D> dh;
  return hn::PromoteTo(df, hn::LoadU(dh, static_cast<const hwy::float16_t*>(src) + i));
#endif
}

// Code = number of thresholds below x (NF4) or the FP4 tree as a sum of per-threshold steps.
template <class D>
HWY_INLINE hn::Vec<hn::RebindToSigned<D>> Codes(D df, QuantType qt, hn::Vec<D> x) {
  const hn::RebindToSigned<D> di;
  if (qt == QuantType::NF4) {
    static constexpr float kT[15] = {-0.8480964004993439f,   -0.6106329262256622f,  -0.4599952697753906f,
                                     -0.33967943489551544f,  -0.23460740596055984f, -0.13791173323988914f,
                                     -0.045525018125772476f, 0.03979014977812767f,  0.1202552504837513f,
                                     0.2035212516784668f,    0.2920137718319893f,   0.3893125355243683f,
                                     0.5016634166240692f,    0.6427869200706482f,   0.8614784181118011f};
    auto c = hn::Zero(di);
    for (float t : kT) c = hn::Sub(c, hn::VecFromMask(di, hn::RebindMask(di, hn::Gt(x, hn::Set(df, t)))));
    return c;
  }
  // sorted FP4 thresholds on |x| and the code step each crossing adds: 0->1->6->7->4->5->2->3
  static constexpr float kT[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                                  0.4166667f,  0.583333f,  0.8333333f};
  static constexpr int32_t kStep[7] = {1, 5, 1, -3, 1, -3, 1};
  const auto a = hn::Abs(x);
  auto c = hn::Zero(di);
  for (int k = 0; k < 7; ++k)
    c = hn::Add(c,
                hn::IfThenElseZero(hn::RebindMask(di, hn::Gt(a, hn::Set(df, kT[k]))), hn::Set(di, kStep[k])));
  const auto neg = hn::RebindMask(di, hn::Lt(x, hn::Zero(df)));
  return hn::Add(c, hn::IfThenElseZero(neg, hn::Set(di, 8)));
}

void Quantize4bitBlocks(const void* src, DType dt, int64_t n, int64_t blocksize, QuantType qt, float* absmax,
                        uint8_t* packed, int64_t b0, int64_t b1) {
#if HWY_TARGET == HWY_SCALAR
  ref::quantize_4bit(src, dt, n, blocksize, qt, absmax, packed, b0, b1);
#else
  const DF df;
  const hn::RebindToSigned<DF> di;
  const hn::Rebind<uint8_t, DF> du8;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t i0 = b * blocksize;
    if (i0 + blocksize > n || blocksize % (2 * N) != 0) {  // partial last block: scalar path
      ref::quantize_4bit(src, dt, n, blocksize, qt, absmax, packed, b, b + 1);
      continue;
    }
    auto m = hn::Set(df, -FLT_MAX);
    for (int64_t i = 0; i < blocksize; i += N) m = hn::Max(m, hn::Abs(LoadF(df, dt, src, i0 + i)));
    const float amax = hn::GetLane(hn::MaxOfLanes(df, m));
    absmax[b] = amax;
    const auto inv = hn::Set(df, 1.0f / amax);
    for (int64_t i = 0; i < blocksize; i += 2 * N) {
      const auto c0 = Codes(df, qt, hn::Mul(LoadF(df, dt, src, i0 + i), inv));
      const auto c1 = Codes(df, qt, hn::Mul(LoadF(df, dt, src, i0 + i + N), inv));
      const auto hi = hn::ConcatEven(di, c1, c0);  // elements 0, 2, 4, ...
      const auto lo = hn::ConcatOdd(di, c1, c0);   // elements 1, 3, 5, ...
      const auto bytes = hn::Or(hn::ShiftLeft<4>(hi), lo);
      hn::StoreU(hn::DemoteTo(du8, bytes), du8, packed + (i0 + i) / 2);
    }
  }
#endif
}

void Dequantize4bitRange(const uint8_t* packed, const float* absmax, int64_t blocksize, const float* code,
                         DType out_dt, void* out, int64_t e0, int64_t e1) {
#if HWY_TARGET == HWY_SCALAR
  ref::dequantize_4bit(packed, absmax, blocksize, code, out_dt, out, e0, e1);
#else
  // pair[b] holds (code[b >> 4], code[b & 15]) as two floats in one 64-bit lane, so one 64-bit gather per
  // byte yields both elements in memory order.
  alignas(64) uint64_t pair[256];
  for (int b = 0; b < 256; ++b) {
    uint32_t hi, lo;
    std::memcpy(&hi, &code[b >> 4], 4);
    std::memcpy(&lo, &code[b & 15], 4);
    pair[b] = (static_cast<uint64_t>(lo) << 32) | hi;
  }
  const DF df;
  const hn::Repartition<uint64_t, DF> du64;
  const hn::Rebind<uint8_t, decltype(du64)> du8;
  const hn::Rebind<uint32_t, decltype(du64)> du32h;
  const hn::RebindToSigned<decltype(du64)> di64;
  const hn::RebindToUnsigned<DF> du32;
  const hn::Rebind<uint16_t, DF> du16;
  const hn::Rebind<hwy::float16_t, DF> df16;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  int64_t k = e0;
  for (; k + N <= e1 && (k % blocksize) + N <= blocksize;) {
    // N elements inside one block
    const auto idx =
        hn::BitCast(di64, hn::PromoteTo(du64, hn::PromoteTo(du32h, hn::LoadU(du8, packed + k / 2))));
    const auto v =
        hn::Mul(hn::BitCast(df, hn::GatherIndex(du64, pair, idx)), hn::Set(df, absmax[k / blocksize]));
    if (out_dt == DType::Float32) {
      hn::StoreU(v, df, static_cast<float*>(out) + k);
    } else if (out_dt == DType::BFloat16) {
      const auto u = hn::BitCast(du32, v);
      const auto rounded =
          hn::Add(u, hn::Add(hn::Set(du32, 0x7fffu), hn::And(hn::ShiftRight<16>(u), hn::Set(du32, 1u))));
      const auto nan = hn::Or(u, hn::Set(du32, 0x400000u));
      const auto r = hn::ShiftRight<16>(hn::IfThenElse(hn::RebindMask(du32, hn::IsNaN(v)), nan, rounded));
      hn::StoreU(hn::DemoteTo(du16, hn::BitCast(hn::RebindToSigned<DF>(), r)), du16,
                 static_cast<uint16_t*>(out) + k);
    } else {
#if HWY_TARGET >= HWY_SSE4  // no F16C: Highway's emulated DemoteTo does not round like the reference
      alignas(64) float tmp[hn::MaxLanes(df)];
      hn::Store(v, df, tmp);
      for (int64_t i = 0; i < N; ++i) static_cast<uint16_t*>(out)[k + i] = float_to_fp16(tmp[i]);
      (void)df16;
#else
      hn::StoreU(hn::DemoteTo(df16, v), df16, static_cast<hwy::float16_t*>(out) + k);
#endif
    }
    k += N;
    if ((k % blocksize) + N > blocksize && k < e1) {
      // finish the block (blocksize not a multiple of N cannot happen for N <= 16, blocksize >= 32)
      const int64_t end = std::min(e1, (k / blocksize + 1) * blocksize);
      ref::dequantize_4bit(packed, absmax, blocksize, code, out_dt, out, k, end);
      k = end;
    }
  }
  if (k < e1) ref::dequantize_4bit(packed, absmax, blocksize, code, out_dt, out, k, e1);
#endif
}

}  // namespace nibble::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <omp.h>

#include <algorithm>

namespace nibble::kernels {
HWY_EXPORT(Quantize4bitBlocks);
HWY_EXPORT(Dequantize4bitRange);

std::vector<std::string> available_targets() {
  std::vector<std::string> out;
  for (int64_t t : hwy::SupportedAndGeneratedTargets()) out.emplace_back(hwy::TargetName(t));
  return out;
}

void force_target(int index) {
  const auto targets = hwy::SupportedAndGeneratedTargets();
  hwy::SetSupportedTargetsForTest(index < 0 ? 0 : targets.at(static_cast<size_t>(index)));
  hwy::GetChosenTarget().Update(hwy::SupportedTargets());
}

void quantize_4bit(const void* src, DType dtype, int64_t n, int64_t blocksize, QuantType qt, float* absmax,
                   uint8_t* packed) {
  const int64_t nb = (n + blocksize - 1) / blocksize;
  if (!hwy::GetChosenTarget().IsInitialized()) hwy::GetChosenTarget().Update(hwy::SupportedTargets());
  auto* f = &HWY_DYNAMIC_DISPATCH(Quantize4bitBlocks);
  const int64_t chunk = std::max<int64_t>(1, (1 << 16) / blocksize);
#pragma omp parallel for schedule(static) if (nb > chunk)
  for (int64_t b = 0; b < nb; b += chunk)
    f(src, dtype, n, blocksize, qt, absmax, packed, b, std::min(nb, b + chunk));
}

void dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize,
                     const float* code, DType out_dtype, void* out) {
  if (!hwy::GetChosenTarget().IsInitialized()) hwy::GetChosenTarget().Update(hwy::SupportedTargets());
  auto* f = &HWY_DYNAMIC_DISPATCH(Dequantize4bitRange);
  const int64_t chunk = std::max<int64_t>(blocksize, ((1 << 16) / blocksize) * blocksize);
#pragma omp parallel for schedule(static) if (n > chunk)
  for (int64_t k = 0; k < n; k += chunk)
    f(packed, absmax, blocksize, code, out_dtype, out, k, std::min(n, k + chunk));
}

}  // namespace nibble::kernels
#endif
