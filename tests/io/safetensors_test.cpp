#include "nibble/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>

#include "nibble/error.h"
#include "test_util.h"

using namespace nibble;
using nibble::test::TempDir;

namespace {

// A safetensors file from a literal header and a data section.
std::string raw_file(const std::string& header, const std::string& data) {
  std::string s(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) s[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s + header + data;
}

// Expects FormatError whose message contains every fragment.
void expect_bad(const std::string& bytes, std::initializer_list<std::string> fragments) {
  TempDir d;
  const std::string p = d / "bad.safetensors";
  test::write_bytes(p, bytes);
  try {
    SafetensorsFile::open(p);
    FAIL() << "no error for " << bytes.substr(8, 80);
  } catch (const FormatError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(p), std::string::npos) << msg;  // names the file
    for (const auto& f : fragments) EXPECT_NE(msg.find(f), std::string::npos) << msg << " lacks " << f;
  }
}

}  // namespace

TEST(Safetensors, RoundTripAllDtypes) {
  TempDir d;
  NamedTensors ts;
  std::vector<float> f{1.5f, -2.0f, 3.25f, 0.0f, 5.0f, 6.0f};
  ts.emplace_back("w.f32", Tensor::from_vector(DType::Float32, {2, 3}, f));
  ts.emplace_back("b.u8", Tensor::from_vector(DType::UInt8, {3}, std::vector<uint8_t>{1, 2, 255}));
  ts.emplace_back("c.bf16", Tensor::from_vector(DType::BFloat16, {2}, std::vector<uint16_t>{0x3f80, 0xc000}));
  ts.emplace_back("d.i64", Tensor::from_vector(DType::Int64, {1}, std::vector<int64_t>{-7}));
  ts.emplace_back("e.empty", Tensor::empty(DType::Float16, {0, 4}));
  save_safetensors(d / "m.safetensors", ts);
  const auto file = SafetensorsFile::open(d / "m.safetensors");
  EXPECT_EQ(file.metadata().at("format"), "pt");
  ASSERT_EQ(file.tensors().size(), ts.size());
  for (const auto& [name, t] : ts) {
    const Tensor r = file.get(name);
    EXPECT_EQ(r.dtype(), t.dtype()) << name;
    EXPECT_EQ(r.shape(), t.shape()) << name;
    ASSERT_EQ(r.nbytes(), t.nbytes());
    EXPECT_EQ(0, std::memcmp(r.raw(), t.raw(), t.nbytes())) << name;
  }
  // header is padded so the data section starts 8-byte aligned, as the Rust writer does
  const std::string bytes = test::read_bytes(d / "m.safetensors");
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u);
  for (const auto& t : file.tensors())  // every tensor aligned for its dtype in the file
    EXPECT_EQ((8 + n + t.begin) % dtype_size(t.dtype), 0u) << t.name;
  EXPECT_FALSE(std::filesystem::exists(d / "m.safetensors.tmp." + std::to_string(::getpid())));
}

TEST(Safetensors, Malformed) {
  const std::string f32x2 = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  expect_bad(std::string(5, '\0'), {"shorter than the 8-byte header"});
  expect_bad(raw_file(f32x2, std::string(4, '\0')), {"tensor 'a'", "past the data section"});
  {
    std::string s = raw_file("{}", "");
    s[0] = static_cast<char>(0xff);
    s[1] = static_cast<char>(0xff);
    s[2] = static_cast<char>(0xff);
    s[3] = static_cast<char>(0x7f);  // ~2 GB header
    expect_bad(s, {"100 MB"});
  }
  {
    std::string s = raw_file(R"({"a": 1})", "");
    s[0] = 100;  // header length 100 but only 8 header bytes follow: truncated
    expect_bad(s, {"exceeds the file size"});
  }
  {
    std::string s = raw_file(R"({"a": {"dtype")", "");
    expect_bad(s, {"header: invalid JSON"});
  }
  expect_bad(raw_file(R"([1,2])", ""), {"not a JSON object"});
  expect_bad(raw_file(R"({"a":{"dtype":"F8","shape":[2],"data_offsets":[0,2]}})", "xx"),
             {"tensor 'a'", "unknown dtype 'F8'"});
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0')),
             {"tensor 'a'", "needs 12 bytes"});
  expect_bad(
      raw_file(
          R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
          std::string(12, '\0')),
      {"overlaps"});
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", std::string(8, '\0')),
             {"hole"});
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", std::string(8, '\0')),
             {"tensors cover 4"});
  expect_bad(
      raw_file(
          R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
          std::string(8, '\0')),
      {"duplicate tensor name 'a'"});
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", std::string(4, '\0')),
             {"tensor 'a'", "non-negative"});
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", std::string(8, '\0')),
             {"begin 8 > end 4"});
  expect_bad(raw_file(R"({"a":{"dtype":"U8","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}})", ""),
             {"overflows"});
  expect_bad(raw_file(R"({"__metadata__":{"format":1}})", ""), {"__metadata__"});
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[1]}})", ""), {"data_offsets"});
}

TEST(Safetensors, MissingFileIsIoError) {
  EXPECT_THROW(SafetensorsFile::open("/nonexistent/x.safetensors"), IoError);
}

TEST(Safetensors, ShardedWriteAndRead) {
  TempDir d;
  const std::string dir = d / "ckpt";
  std::vector<std::pair<std::string, Tensor>> ts;
  for (int i = 0; i < 7; ++i) {
    std::vector<float> v(100, static_cast<float>(i));
    ts.emplace_back("layer." + std::to_string(i) + ".weight",
                    Tensor::from_vector(DType::Float32, {10, 10}, v));
  }
  {
    CheckpointWriter w(dir, 1000);  // 400-byte tensors: two per shard
    for (const auto& [n, t] : ts) w.add(n, t);
    const auto files = w.finish();
    ASSERT_EQ(files.size(), 5u);  // 4 shards + index
    EXPECT_EQ(files[0], "model-00001-of-00004.safetensors");
    EXPECT_EQ(files.back(), "model.safetensors.index.json");
  }
  const Checkpoint c = Checkpoint::open(dir);
  ASSERT_EQ(c.names().size(), ts.size());
  for (const auto& [n, t] : ts) {
    const Tensor r = c.get(n);
    EXPECT_EQ(0, std::memcmp(r.raw(), t.raw(), t.nbytes()));
  }
  const std::string index = test::read_bytes(dir + "/model.safetensors.index.json");
  EXPECT_NE(index.find("\"total_size\": 2800"), std::string::npos) << index;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    EXPECT_EQ(e.path().string().find(".spool"), std::string::npos) << e.path();
}

TEST(Safetensors, IndexNamingMissingTensorIsError) {
  TempDir d;
  save_safetensors(d / "a.safetensors", {{"x", Tensor::empty(DType::Float32, {2})}});
  test::write_bytes(d / "model.safetensors.index.json",
                    R"({"weight_map": {"x": "a.safetensors", "y": "a.safetensors"}})");
  try {
    Checkpoint::open(d.str());
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("'y'"), std::string::npos) << e.what();
  }
}

TEST(Safetensors, ParseSize) {
  EXPECT_EQ(parse_size("5GB"), 5'000'000'000u);
  EXPECT_EQ(parse_size("2MiB"), 2u << 20);
  EXPECT_EQ(parse_size("123"), 123u);
  EXPECT_THROW(parse_size("GB"), ValueError);
  EXPECT_THROW(parse_size("5XB"), ValueError);
}
