// libFuzzer target: nibble::fuzz::safetensors (see targets.h).
#include "targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nibble::fuzz::safetensors(data, size);
  return 0;
}
