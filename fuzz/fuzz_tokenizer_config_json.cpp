// libFuzzer target: nibble::fuzz::tokenizer_config_json (see targets.h).
#include "targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nibble::fuzz::tokenizer_config_json(data, size);
  return 0;
}
