// Tensor: a dtype, a shape and a view into Storage, which is either owned heap memory or a read-only
// memory-mapped file region shared by every tensor viewing it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "nibble/dtype.h"

namespace nibble {

class Storage {
 public:
  // Zero-initialized owned bytes.
  static std::shared_ptr<Storage> allocate(size_t nbytes);
  // Read-only mapping of a whole file; throws IoError.
  static std::shared_ptr<Storage> map_file(const std::string& path);

  virtual ~Storage() = default;
  const uint8_t* data() const { return data_; }
  uint8_t* mutable_data();  // throws for read-only (mapped) storage
  size_t size() const { return size_; }
  bool writable() const { return writable_; }

 protected:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool writable_ = false;
};

using Shape = std::vector<int64_t>;
int64_t shape_numel(const Shape& shape);
std::string shape_str(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;
  Tensor(DType dtype, Shape shape, std::shared_ptr<Storage> storage, size_t offset = 0);
  // A new zero-filled owned tensor.
  static Tensor empty(DType dtype, Shape shape);
  // A new owned tensor holding a copy of `bytes` (size must equal numel * itemsize).
  static Tensor from_bytes(DType dtype, Shape shape, std::span<const uint8_t> bytes);
  template <typename T>
  static Tensor from_vector(DType dtype, Shape shape, const std::vector<T>& v) {
    return from_bytes(dtype, std::move(shape),
                      {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(T)});
  }

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t dim(size_t i) const { return shape_.at(i); }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }

  const uint8_t* raw() const { return storage_->data() + offset_; }
  uint8_t* mutable_raw() { return storage_->mutable_data() + offset_; }
  std::span<const uint8_t> bytes() const { return {raw(), nbytes()}; }
  template <typename T>
  const T* data() const {
    return reinterpret_cast<const T*>(raw());
  }
  template <typename T>
  T* mutable_data() {
    return reinterpret_cast<T*>(mutable_raw());
  }

  // Same bytes, other dtype/shape (a torch .view(dtype)); the byte count must match.
  Tensor view(DType dtype, Shape shape) const;
  // Same dtype, other shape with the same numel.
  Tensor reshape(Shape shape) const;
  // Elementwise conversion to another floating dtype (always a new owned tensor).
  Tensor to(DType dtype) const;
  // Elements as float32 (float types only).
  std::vector<float> to_float_vector() const;
  // Owned copy (detaches from an mmapped file).
  Tensor clone() const;
  const std::shared_ptr<Storage>& storage() const { return storage_; }

 private:
  DType dtype_ = DType::Float32;
  Shape shape_;
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;
};

// Named tensors in order (a state dict, a checkpoint's contents).
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// Converts n elements between float dtypes (float32/float16/bfloat16/float64), round-to-nearest-even.
void convert_floats(DType from, const void* src, DType to, void* dst, size_t n);

}  // namespace nibble
