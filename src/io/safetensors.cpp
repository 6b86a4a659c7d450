#include "nibble/safetensors.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "nibble/files.h"
#include "io/atomic_file.h"
#include "io/hf_config.h"
#include "io/json_field.h"
#include "nibble/error.h"
#include "core/python_json.h"

namespace nibble {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

[[noreturn]] void bad(const std::string& label, const std::string& what) {
  throw FormatError(label + ": invalid safetensors: " + what);
}

uint64_t read_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  return parse(Storage::map_file(path), path);
}

SafetensorsFile SafetensorsFile::parse(std::shared_ptr<Storage> bytes, const std::string& label) {
  SafetensorsFile f;
  f.path_ = label;
  f.storage_ = std::move(bytes);
  const size_t size = f.storage_->size();
  if (size < 8)
    bad(label, "file is " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  const uint64_t n = read_le64(f.storage_->data());
  if (n > kMaxSafetensorsHeader)
    bad(label, "header length " + std::to_string(n) + " exceeds the 100 MB limit");
  if (n > size - 8)
    bad(label, "header length " + std::to_string(n) + " exceeds the file size " + std::to_string(size) +
                   " (truncated file?)");
  f.data_start_ = 8 + static_cast<size_t>(n);
  const size_t data_size = size - f.data_start_;
  const char* hb = reinterpret_cast<const char*>(f.storage_->data() + 8);

  // Parse, rejecting duplicate keys at the top level (nlohmann would silently keep the last one).
  std::string dup;
  json::parser_callback_t cb = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::key && depth == 1) {
      const auto& k = parsed.get_ref<const std::string&>();
      if (!f.index_.emplace(k, 0).second && dup.empty()) dup = k;
    }
    return true;
  };
  // depth: {name: {"shape": [..]}} is 3 deep; parse_json turns every parse failure into a FormatError
  const json header = jsonf::parse_json({hb, static_cast<size_t>(n)}, label + ": invalid safetensors: header",
                                        {.max_bytes = kMaxSafetensorsHeader, .max_depth = 16}, cb);
  f.index_.clear();
  if (!dup.empty()) bad(label, "duplicate tensor name '" + dup + "' in header");
  if (!header.is_object()) bad(label, "header is not a JSON object");

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) bad(label, "__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) bad(label, "__metadata__ value for '" + m.key() + "' is not a string");
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    if (!v.is_object()) bad(label, where + ": entry is not an object");
    if (!v.contains("dtype") || !v["dtype"].is_string()) bad(label, where + ": missing string 'dtype'");
    if (!v.contains("shape") || !v["shape"].is_array()) bad(label, where + ": missing array 'shape'");
    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
      bad(label, where + ": 'data_offsets' must be [begin, end]");
    TensorInfo ti;
    ti.name = name;
    const auto code = v["dtype"].get<std::string>();
    auto dt = dtype_from_safetensors_code(code);
    if (!dt) bad(label, where + ": unknown dtype '" + code + "'");
    ti.dtype = *dt;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned()) bad(label, where + ": shape entries must be non-negative integers");
      const uint64_t dim = d.get<uint64_t>();
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        bad(label, where + ": shape dimension too large");
      ti.shape.push_back(static_cast<int64_t>(dim));
    }
    for (const auto& o : v["data_offsets"])
      if (!o.is_number_unsigned()) bad(label, where + ": data_offsets must be non-negative integers");
    const uint64_t b = v["data_offsets"][0].get<uint64_t>();
    const uint64_t e = v["data_offsets"][1].get<uint64_t>();
    if (b > e)
      bad(label, where + ": data_offsets begin " + std::to_string(b) + " > end " + std::to_string(e));
    if (e > data_size)
      bad(label, where + ": data_offsets end " + std::to_string(e) + " is past the data section (" +
                     std::to_string(data_size) + " bytes)");
    // numel * itemsize, guarding overflow
    uint64_t expect = dtype_size(ti.dtype);
    for (int64_t d : ti.shape) {
      if (d != 0 && expect > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d))
        bad(label, where + ": shape " + shape_str(ti.shape) + " overflows");
      expect *= static_cast<uint64_t>(d);
    }
    if (expect != e - b)
      bad(label, where + ": shape " + shape_str(ti.shape) + " of " + code + " needs " +
                     std::to_string(expect) + " bytes but data_offsets span " + std::to_string(e - b));
    ti.begin = static_cast<size_t>(b);
    ti.end = static_cast<size_t>(e);
    f.tensors_.push_back(std::move(ti));
  }
  std::sort(f.tensors_.begin(), f.tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  size_t pos = 0;
  for (const auto& t : f.tensors_) {
    if (t.begin < pos) bad(label, "tensor '" + t.name + "' overlaps the previous tensor's data");
    if (t.begin > pos)
      bad(label, "tensor '" + t.name + "' starts at " + std::to_string(t.begin) +
                     ", leaving a hole after byte " + std::to_string(pos) +
                     " (data_offsets must be contiguous)");
    pos = t.end;
  }
  if (pos != data_size)
    bad(label, "data section has " + std::to_string(data_size) + " bytes but the tensors cover " +
                   std::to_string(pos));
  for (size_t i = 0; i < f.tensors_.size(); ++i) f.index_[f.tensors_[i].name] = i;
  return f;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw FormatError(path_ + ": no tensor named '" + name + "'");
  return tensors_[it->second];
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const TensorInfo& ti = info(name);
  Tensor t(ti.dtype, ti.shape, storage_, data_start_ + ti.begin);
  // Files written elsewhere may leave a tensor misaligned for its element type; hand out an aligned copy
  // then.
  if (reinterpret_cast<uintptr_t>(t.raw()) % dtype_size(ti.dtype) != 0) return t.clone();
  return t;
}

namespace {

struct HeaderEntry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

// Header JSON as the Rust safetensors writer lays it out: __metadata__ first, then tensors, padded with
// spaces so the data section starts 8-byte aligned.
std::string make_header(const std::vector<HeaderEntry>& entries,
                        const std::map<std::string, std::string>& meta) {
  nlohmann::ordered_json h;
  if (!meta.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : meta) m[k] = v;
    h["__metadata__"] = m;
  }
  for (const auto& e : entries) {
    nlohmann::ordered_json t;
    t["dtype"] = std::string(safetensors_code(e.dtype));
    t["shape"] = e.shape;
    t["data_offsets"] = {e.begin, e.end};
    h[e.name] = t;
  }
  std::string s = h.dump();
  while ((8 + s.size()) % 8 != 0) s += ' ';
  return s;
}

// Data layout order of the Python safetensors writer: larger elements first (so every tensor is aligned for
// its dtype once the header is padded to 8 bytes), then by name.
bool layout_before(DType da, const std::string& na, DType db, const std::string& nb) {
  const size_t sa = dtype_size(da), sb = dtype_size(db);
  return sa != sb ? sa > sb : na < nb;
}

void write_all(std::FILE* f, const void* p, size_t n, const std::string& path) {
  if (n > 0 && std::fwrite(p, 1, n, f) != n) throw IoError(path + ": write failed: " + std::strerror(errno));
}

void write_header(std::FILE* f, const std::string& header, const std::string& path) {
  uint8_t len[8];
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
  write_all(f, len, 8, path);
  write_all(f, header.data(), header.size(), path);
}

}  // namespace

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<const std::pair<std::string, Tensor>*> order;
  std::set<std::string> names;
  for (const auto& nt : tensors) {
    if (!names.insert(nt.first).second) throw ValueError(path + ": duplicate tensor name '" + nt.first + "'");
    order.push_back(&nt);
  }
  std::stable_sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
    return layout_before(a->second.dtype(), a->first, b->second.dtype(), b->first);
  });
  std::vector<HeaderEntry> entries;
  uint64_t pos = 0;
  for (const auto* nt : order) {
    entries.push_back({nt->first, nt->second.dtype(), nt->second.shape(), pos, pos + nt->second.nbytes()});
    pos += nt->second.nbytes();
  }
  AtomicFile out(path);
  write_header(out.get(), make_header(entries, metadata), path);
  for (const auto* nt : order) write_all(out.get(), nt->second.raw(), nt->second.nbytes(), path);
  out.commit();
}

Checkpoint Checkpoint::open(const std::string& dir) {
  Checkpoint c;
  c.dir_ = dir;
  const fs::path d(dir);
  if (!fs::is_directory(d)) throw IoError(dir + ": not a directory");
  const fs::path index = d / "model.safetensors.index.json";
  std::vector<std::string> files;
  std::unordered_map<std::string, std::string> expected;  // tensor -> shard per the index
  if (fs::exists(index)) {
    const json j = read_json_file(index.string());
    const jsonf::JsonPath root(index.string());
    const json& weight_map = jsonf::get_object(j, "weight_map", root);
    std::set<std::string> seen;
    for (auto it = weight_map.begin(); it != weight_map.end(); ++it) {
      const jsonf::JsonPath at = root / "weight_map" / it.key();
      const std::string& shard = jsonf::as_string(it.value(), at);
      if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos ||
          shard.find('\0') != std::string::npos)
        at.fail("names shard '" + shard + "'; it must be a file in the same directory");
      expected[it.key()] = shard;
      if (seen.insert(shard).second) files.push_back(shard);
    }
  } else if (fs::exists(d / "model.safetensors")) {
    files.push_back("model.safetensors");
  } else {
    throw IoError(dir + ": no model.safetensors or model.safetensors.index.json");
  }
  for (const auto& name : files) {
    auto f = std::make_shared<SafetensorsFile>(SafetensorsFile::open((d / name).string()));
    for (const auto& t : f->tensors()) {
      if (c.where_.count(t.name))
        throw FormatError(f->path() + ": tensor '" + t.name + "' also appears in " +
                          c.files_[c.where_[t.name]]->path());
      c.where_[t.name] = c.files_.size();
      c.names_.push_back(t.name);
    }
    c.files_.push_back(std::move(f));
  }
  for (const auto& [tensor, shard] : expected) {
    auto it = c.where_.find(tensor);
    if (it == c.where_.end())
      throw FormatError(index.string() + ": tensor '" + tensor + "' is listed in " + shard +
                        " but not found there");
  }
  return c;
}

const TensorInfo& Checkpoint::info(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw FormatError(dir_ + ": checkpoint has no tensor '" + name + "'");
  return files_[it->second]->info(name);
}

Tensor Checkpoint::get(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw FormatError(dir_ + ": checkpoint has no tensor '" + name + "'");
  return files_[it->second]->get(name);
}

void SafetensorsFile::release(const std::string& name) const {
  const TensorInfo& ti = info(name);
  if (storage_->writable()) return;  // owned bytes (parse() of memory): nothing to drop
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto base = reinterpret_cast<uintptr_t>(storage_->data());
  uintptr_t a = base + data_start_ + ti.begin, e = base + data_start_ + ti.end;
  a = (a + page - 1) / page * page;  // whole pages inside the tensor only: neighbours stay resident
  e = e / page * page;
  if (e > a) ::madvise(reinterpret_cast<void*>(a), e - a, MADV_DONTNEED);
}

std::map<std::string, std::string> Checkpoint::metadata() const {
  return files_.empty() ? std::map<std::string, std::string>{} : files_.front()->metadata();
}

void Checkpoint::release(const std::string& name) const {
  auto it = where_.find(name);
  if (it != where_.end()) files_[it->second]->release(name);
}

const std::string& Checkpoint::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw FormatError(dir_ + ": checkpoint has no tensor '" + name + "'");
  return files_[it->second]->path();
}

CheckpointWriter::CheckpointWriter(std::string dir, uint64_t max_shard_bytes,
                                   std::map<std::string, std::string> metadata)
    : dir_(std::move(dir)), max_shard_bytes_(max_shard_bytes), metadata_(std::move(metadata)) {
  fs::create_directories(dir_);
}

CheckpointWriter::~CheckpointWriter() {
  if (spool_) std::fclose(spool_);
  if (!finished_)
    for (const auto& s : shards_) std::remove(s.spool.c_str());
}

void CheckpointWriter::open_shard() {
  if (spool_) {
    if (std::fclose(spool_) != 0) throw IoError(shards_.back().spool + ": close failed");
    spool_ = nullptr;
  }
  Shard s;
  s.spool = (fs::path(dir_) / (".shard-" + std::to_string(shards_.size()) + ".spool")).string();
  spool_ = std::fopen(s.spool.c_str(), "wb");
  if (!spool_) throw IoError(s.spool + ": cannot create: " + std::strerror(errno));
  shards_.push_back(std::move(s));
}

void CheckpointWriter::add(const std::string& name, const Tensor& t) {
  if (finished_) throw Error("internal: CheckpointWriter::add after finish");
  if (!seen_.emplace(name, 0).second) throw ValueError(dir_ + ": duplicate tensor name '" + name + "'");
  const uint64_t n = t.nbytes();
  if (shards_.empty() || (shards_.back().bytes > 0 && shards_.back().bytes + n > max_shard_bytes_))
    open_shard();
  Shard& s = shards_.back();
  s.tensors.push_back({name, t.dtype(), t.shape(), s.bytes, s.bytes + n});
  write_all(spool_, t.raw(), n, s.spool);
  s.bytes += n;
}

std::vector<std::string> CheckpointWriter::finish() {
  if (shards_.empty()) open_shard();
  if (std::fclose(spool_) != 0) throw IoError(shards_.back().spool + ": close failed");
  spool_ = nullptr;
  const size_t count = shards_.size();
  std::vector<std::string> names;
  nlohmann::json weight_map = nlohmann::json::object();
  uint64_t total = 0;
  for (size_t i = 0; i < count; ++i) {
    const Shard& s = shards_[i];
    char buf[64];
    std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i + 1, count);
    const std::string fname = count == 1 ? "model.safetensors" : buf;
    const std::string path = (fs::path(dir_) / fname).string();
    // the spool holds tensors in arrival order; the file gets the aligned layout
    std::vector<TensorInfo> order = s.tensors;
    std::stable_sort(order.begin(), order.end(), [](const TensorInfo& a, const TensorInfo& b) {
      return layout_before(a.dtype, a.name, b.dtype, b.name);
    });
    std::vector<HeaderEntry> entries;
    uint64_t pos = 0;
    for (const auto& t : order) {
      entries.push_back({t.name, t.dtype, t.shape, pos, pos + (t.end - t.begin)});
      pos += t.end - t.begin;
      weight_map[t.name] = fname;
      total += t.end - t.begin;
    }
    AtomicFile out(path);
    write_header(out.get(), make_header(entries, metadata_), path);
    {
      const auto spool = Storage::map_file(s.spool);
      for (const auto& t : order) write_all(out.get(), spool->data() + t.begin, t.end - t.begin, path);
    }
    out.commit();
    std::remove(s.spool.c_str());
    names.push_back(fname);
  }
  if (count > 1) {
    nlohmann::json index;
    index["metadata"] = {{"total_size", total}};
    index["weight_map"] = weight_map;
    const std::string p = (fs::path(dir_) / "model.safetensors.index.json").string();
    write_text_file(p, python_json_dumps(index, 2, true) + "\n");
    names.push_back("model.safetensors.index.json");
  }
  finished_ = true;
  return names;
}

uint64_t parse_size(const std::string& s) {
  size_t i = 0;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
  if (i == 0) throw ValueError("size '" + s + "': expected a number with an optional unit (e.g. 5GB, 500MB)");
  const uint64_t v = std::stoull(s.substr(0, i));
  std::string unit = s.substr(i);
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  static const std::map<std::string, uint64_t> units{{"", 1},
                                                     {"B", 1},
                                                     {"KB", 1000},
                                                     {"MB", 1000000},
                                                     {"GB", 1000000000},
                                                     {"KIB", 1ull << 10},
                                                     {"MIB", 1ull << 20},
                                                     {"GIB", 1ull << 30}};
  auto it = units.find(unit);
  if (it == units.end()) throw ValueError("size '" + s + "': unknown unit '" + s.substr(i) + "'");
  return v * it->second;
}

}  // namespace nibble
