// libFuzzer target: nibble::fuzz::chat_template (see targets.h).
#include "targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nibble::fuzz::chat_template(data, size);
  return 0;
}
