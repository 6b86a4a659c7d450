#include "nibble/tensor.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>

#include "nibble/error.h"

namespace nibble {
namespace {

class OwnedStorage final : public Storage {
 public:
  explicit OwnedStorage(size_t n) : buf_(new uint8_t[n == 0 ? 1 : n]()) {
    data_ = buf_.get();
    size_ = n;
    writable_ = true;
  }

 private:
  std::unique_ptr<uint8_t[]> buf_;
};

class MappedStorage final : public Storage {
 public:
  explicit MappedStorage(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw IoError(path + ": cannot open: " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int e = errno;
      ::close(fd);
      throw IoError(path + ": cannot stat: " + std::strerror(e));
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const int e = errno;
        ::close(fd);
        throw IoError(path + ": cannot mmap: " + std::strerror(e));
      }
      data_ = static_cast<uint8_t*>(p);
    }
    ::close(fd);
  }
  ~MappedStorage() override {
    if (data_ != nullptr && size_ > 0) ::munmap(data_, size_);
  }
};

}  // namespace

std::shared_ptr<Storage> Storage::allocate(size_t nbytes) {
  return std::make_shared<OwnedStorage>(nbytes);
}
std::shared_ptr<Storage> Storage::map_file(const std::string& path) {
  return std::make_shared<MappedStorage>(path);
}

uint8_t* Storage::mutable_data() {
  if (!writable_) throw Error("internal: write to read-only (memory-mapped) storage");
  return data_;
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw ValueError("negative dimension in shape " + shape_str(shape));
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d)
      throw ValueError("shape " + shape_str(shape) + " overflows");
    n *= d;
  }
  return n;
}

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

Tensor::Tensor(DType dtype, Shape shape, std::shared_ptr<Storage> storage, size_t offset)
    : dtype_(dtype), shape_(std::move(shape)), storage_(std::move(storage)), offset_(offset) {
  if (storage_ && offset_ + nbytes() > storage_->size())
    throw Error("internal: tensor view " + shape_str(shape_) + " exceeds its storage");
}

Tensor Tensor::empty(DType dtype, Shape shape) {
  const size_t n = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
  return Tensor(dtype, std::move(shape), Storage::allocate(n));
}

Tensor Tensor::from_bytes(DType dtype, Shape shape, std::span<const uint8_t> bytes) {
  Tensor t = empty(dtype, std::move(shape));
  if (bytes.size() != t.nbytes())
    throw ValueError("from_bytes: " + std::to_string(bytes.size()) + " bytes for a " + shape_str(t.shape()) +
                     " " + std::string(dtype_name(dtype)) + " tensor");
  if (!bytes.empty()) std::memcpy(t.mutable_raw(), bytes.data(), bytes.size());
  return t;
}

Tensor Tensor::view(DType dtype, Shape shape) const {
  Tensor t(dtype, std::move(shape), storage_, offset_);
  if (t.nbytes() != nbytes())
    throw ValueError("view: cannot view " + std::to_string(nbytes()) + " bytes as " + shape_str(t.shape_) +
                     " " + std::string(dtype_name(dtype)));
  return t;
}

Tensor Tensor::reshape(Shape shape) const {
  return view(dtype_, std::move(shape));
}

Tensor Tensor::clone() const {
  return from_bytes(dtype_, shape_, bytes());
}

Tensor Tensor::to(DType dtype) const {
  Tensor out = empty(dtype, shape_);
  convert_floats(dtype_, raw(), dtype, out.mutable_raw(), static_cast<size_t>(numel()));
  return out;
}

std::vector<float> Tensor::to_float_vector() const {
  std::vector<float> v(static_cast<size_t>(numel()));
  convert_floats(dtype_, raw(), DType::Float32, v.data(), v.size());
  return v;
}

namespace {
float load_float(DType t, const uint8_t* p, size_t i) {
  switch (t) {
    case DType::Float32: {
      float f;
      std::memcpy(&f, p + 4 * i, 4);
      return f;
    }
    case DType::Float16: {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      return fp16_to_float(h);
    }
    case DType::BFloat16: {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      return bf16_to_float(h);
    }
    default:
      throw ValueError("expected a float dtype, got " + std::string(dtype_name(t)));
  }
}
}  // namespace

void convert_floats(DType from, const void* src, DType to, void* dst, size_t n) {
  if (!dtype_is_float(from) || !dtype_is_float(to))
    throw ValueError("convert: " + std::string(dtype_name(from)) + " -> " + std::string(dtype_name(to)) +
                     " is not a float conversion");
  const auto* s = static_cast<const uint8_t*>(src);
  auto* d = static_cast<uint8_t*>(dst);
  if (from == to) {
    std::memcpy(d, s, n * dtype_size(from));
    return;
  }
  if (from == DType::Float64) {
    // double -> narrower: go through float (float64 -> float32 rounds once; -> 16-bit may double-round,
    // which torch also does for float64 -> bfloat16 on CPU).
    for (size_t i = 0; i < n; ++i) {
      double v;
      std::memcpy(&v, s + 8 * i, 8);
      const float f = static_cast<float>(v);
      convert_floats(DType::Float32, &f, to, d + i * dtype_size(to), 1);
    }
    return;
  }
  for (size_t i = 0; i < n; ++i) {
    const float f = load_float(from, s, i);
    switch (to) {
      case DType::Float32:
        std::memcpy(d + 4 * i, &f, 4);
        break;
      case DType::Float64: {
        const double v = f;
        std::memcpy(d + 8 * i, &v, 8);
        break;
      }
      case DType::Float16: {
        const uint16_t h = float_to_fp16(f);
        std::memcpy(d + 2 * i, &h, 2);
        break;
      }
      case DType::BFloat16: {
        const uint16_t h = float_to_bf16(f);
        std::memcpy(d + 2 * i, &h, 2);
        break;
      }
      default:
        break;
    }
  }
}

}  // namespace nibble
