// float16/bfloat16 <-> float32 conversion, exhaustively over all 65,536 bit patterns, against the hardware
// (F16C via _Float16 casts where the compiler has them) and against exact arithmetic.
#include "nibble/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "nibble/error.h"

using namespace nibble;

namespace {
// Independent fp16 decode: sign * 2^(e-15) * (1 + m/1024), or subnormal sign * 2^-14 * m/1024.
double fp16_exact(uint16_t h) {
  const int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  double v;
  if (e == 0)
    v = std::ldexp(m, -24);
  else if (e == 31)
    v = m ? NAN : INFINITY;
  else
    v = std::ldexp(1024 + m, e - 25);
  return s ? -v : v;
}
}  // namespace

TEST(DType, NamesRoundTrip) {
  for (DType t : {DType::Float32, DType::Float16, DType::BFloat16, DType::Float64, DType::UInt8, DType::Int8,
                  DType::Int32, DType::Int64}) {
    EXPECT_EQ(dtype_from_name(dtype_name(t)), t);
    EXPECT_EQ(dtype_from_safetensors_code(safetensors_code(t)), t);
  }
  EXPECT_EQ(dtype_name(DType::BFloat16), "bfloat16");
  EXPECT_EQ(dtype_from_name("torch.float16"), DType::Float16);
  EXPECT_FALSE(dtype_from_name("float8"));
  EXPECT_THROW(parse_dtype("float8", "--dtype"), ValueError);
}

TEST(DType, Fp16ToFloatExhaustive) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = fp16_to_float(static_cast<uint16_t>(h));
    const double want = fp16_exact(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(f)) << h;
    } else {
      EXPECT_EQ(static_cast<double>(f), want) << h;
      EXPECT_EQ(std::signbit(f), static_cast<bool>(h & 0x8000)) << h;
    }
  }
}

TEST(DType, Fp16RoundTripExhaustive) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = fp16_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(fp16_to_float(float_to_fp16(f))));
      continue;
    }
    EXPECT_EQ(float_to_fp16(f), h) << h;
  }
}

TEST(DType, FloatToFp16NearestEven) {
  // Every midpoint between consecutive finite halves must round to the even one; just above/below it to the
  // nearer one. Midpoints are exact in float32 (11+1 significant bits).
  for (uint32_t h = 0; h < 0x7bff; ++h) {
    const double a = fp16_exact(static_cast<uint16_t>(h)), b = fp16_exact(static_cast<uint16_t>(h + 1));
    const float mid = static_cast<float>((a + b) / 2);
    const uint16_t even = (h & 1) ? static_cast<uint16_t>(h + 1) : static_cast<uint16_t>(h);
    EXPECT_EQ(float_to_fp16(mid), even) << h;
    EXPECT_EQ(float_to_fp16(std::nextafter(mid, 0.0f)), h) << h;
    EXPECT_EQ(float_to_fp16(std::nextafter(mid, 1e9f)), h + 1) << h;
    EXPECT_EQ(float_to_fp16(-mid), even | 0x8000) << h;
  }
  EXPECT_EQ(float_to_fp16(65519.99f), 0x7bff);
  EXPECT_EQ(float_to_fp16(65520.0f), 0x7c00);
  EXPECT_EQ(float_to_fp16(INFINITY), 0x7c00);
  EXPECT_EQ(float_to_fp16(-INFINITY), 0xfc00);
  EXPECT_EQ(float_to_fp16(1e-9f), 0);  // below half the smallest subnormal
  EXPECT_EQ(float_to_fp16(-0.0f), 0x8000);
}

#if defined(__FLT16_MAX__)
TEST(DType, Fp16MatchesCompilerRandom) {
  std::mt19937 rng(1);
  for (int i = 0; i < 2000000; ++i) {
    uint32_t u = rng();
    float f;
    std::memcpy(&f, &u, 4);
    if (std::isnan(f)) continue;
    const _Float16 h = static_cast<_Float16>(f);
    uint16_t bits;
    std::memcpy(&bits, &h, 2);
    ASSERT_EQ(float_to_fp16(f), bits) << f;
  }
}
#endif

TEST(DType, Bf16Exhaustive) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = bf16_to_float(static_cast<uint16_t>(h));
    uint32_t u;
    std::memcpy(&u, &f, 4);
    EXPECT_EQ(u, h << 16);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(f))));
      continue;
    }
    EXPECT_EQ(float_to_bf16(f), h);
    // the midpoint to the next pattern rounds to even
    if ((h & 0x7fff) < 0x7f7f) {
      uint32_t mid = (h << 16) | 0x8000u;
      float m;
      std::memcpy(&m, &mid, 4);
      const uint16_t even = (h & 1) ? static_cast<uint16_t>(h + 1) : static_cast<uint16_t>(h);
      EXPECT_EQ(float_to_bf16(m), even) << h;
      mid += 1;
      std::memcpy(&m, &mid, 4);
      EXPECT_EQ(float_to_bf16(m), h + 1) << h;
    }
  }
  EXPECT_EQ(float_to_bf16(3.4028235e38f), 0x7f80);  // rounds up to inf
}
