// libFuzzer target: nibble::fuzz::index_json (see targets.h).
#include "targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nibble::fuzz::index_json(data, size);
  return 0;
}
