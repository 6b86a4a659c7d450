// safetensors: reader (memory-mapped, zero-copy, fully bounds-checked), writer (temporary file + rename),
// and sharded checkpoints (model.safetensors.index.json).
#pragma once
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "nibble/tensor.h"

namespace nibble {

struct TensorInfo {
  std::string name;
  DType dtype;
  Shape shape;
  size_t begin = 0;  // offsets relative to the data section
  size_t end = 0;
};

// Largest header we accept: the safetensors reference implementation uses the same 100 MB limit.
inline constexpr uint64_t kMaxSafetensorsHeader = 100'000'000;

class SafetensorsFile {
 public:
  // Maps and validates `path`. Throws IoError / FormatError naming the file (and tensor).
  static SafetensorsFile open(const std::string& path);
  // Validates bytes already in memory; `label` names them in errors (used by the fuzzer and tests).
  static SafetensorsFile parse(std::shared_ptr<Storage> bytes, const std::string& label);

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in data order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;
  // A view into the mapping (no copy). Throws FormatError if the tensor is absent.
  Tensor get(const std::string& name) const;
  // Drops the tensor's pages from this process's resident memory (the file stays mapped; a later get()
  // reads them again). Lets a streaming load keep one full-precision tensor resident at a time.
  void release(const std::string& name) const;

 private:
  std::string path_;
  std::shared_ptr<Storage> storage_;
  size_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// Writes one safetensors file atomically (path + ".tmp", then rename). Data is laid out as the Python writer
// does (larger dtypes first, then by name) so every tensor is aligned for its element type.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// The tensors of a checkpoint directory: model.safetensors, or the shards of model.safetensors.index.json.
class Checkpoint {
 public:
  static Checkpoint open(const std::string& dir);
  const std::vector<std::string>& names() const { return names_; }  // file order, shard by shard
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;
  Tensor get(const std::string& name) const;
  const std::string& file_of(const std::string& name) const;
  void release(const std::string& name) const;
  // __metadata__ of the first file (shards carry the same).
  std::map<std::string, std::string> metadata() const;
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::unordered_map<std::string, size_t> where_;
  std::vector<std::string> names_;
};

// Streams tensors into a checkpoint directory, starting a new shard when the next tensor would take the
// current one past max_shard_bytes; at finish() the shards become model-0000i-of-0000n.safetensors plus
// model.safetensors.index.json (or one model.safetensors). Only one tensor is held at a time: data goes to
// a temporary spool file per shard and is copied behind the header at the end.
class CheckpointWriter {
 public:
  CheckpointWriter(std::string dir, uint64_t max_shard_bytes,
                   std::map<std::string, std::string> metadata = {{"format", "pt"}});
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;
  void add(const std::string& name, const Tensor& t);
  // Writes the final files; returns their names (relative to dir).
  std::vector<std::string> finish();

 private:
  struct Shard {
    std::string spool;
    std::vector<TensorInfo> tensors;
    uint64_t bytes = 0;
  };
  void open_shard();
  std::string dir_;
  uint64_t max_shard_bytes_;
  std::map<std::string, std::string> metadata_;
  std::vector<Shard> shards_;
  std::FILE* spool_ = nullptr;
  std::unordered_map<std::string, int> seen_;
  bool finished_ = false;
};

// "5GB" / "500MB" / "2GiB" / "1000000" -> bytes (transformers' convert_file_size_to_int). Throws ValueError.
uint64_t parse_size(const std::string& s);

}  // namespace nibble
