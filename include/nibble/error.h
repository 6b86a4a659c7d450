// The nibble::Error family. Library code throws these; the CLI prints what() as one line and exits non-zero.
#pragma once
#include <stdexcept>
#include <string>

namespace nibble {

// Base of every error nibble throws.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A file could not be opened, read, written or renamed.
class IoError : public Error {
 public:
  using Error::Error;
};

// A file we read is malformed (safetensors header, JSON, tokenizer.json, checkpoint layout).
class FormatError : public Error {
 public:
  using Error::Error;
};

// An argument or configuration value is invalid (transformers raises ValueError for these).
class ValueError : public Error {
 public:
  using Error::Error;
};

// A configuration value has the wrong type (transformers raises TypeError for these).
class TypeError : public Error {
 public:
  using Error::Error;
};

// A valid request nibble does not support (model_type, quant_method, ...).
class NotSupportedError : public Error {
 public:
  using Error::Error;
};

// A device (GPU) is missing or failed: no driver, no device, out of device memory, a failed kernel launch. The
// message carries the CUDA error string.
class DeviceError : public Error {
 public:
  using Error::Error;
};

}  // namespace nibble
