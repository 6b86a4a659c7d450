// libFuzzer target: nibble::fuzz::openai_request (see targets.h).
#include "targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nibble::fuzz::openai_request(data, size);
  return 0;
}
