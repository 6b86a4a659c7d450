// libFuzzer target: nibble::fuzz::quant_state_json (see targets.h).
#include "targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nibble::fuzz::quant_state_json(data, size);
  return 0;
}
