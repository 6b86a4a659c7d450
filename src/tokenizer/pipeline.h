// The tokenizer.json pipeline stages around the BPE model: normalizers, pre-tokenizers, post-processor and
// decoders, each built from its JSON description.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/json_field.h"

namespace nibble::tok {

using Normalizer = std::function<std::string(const std::string&)>;
// Splits a (normalized) string into words for the model. at_start: the words begin at offset 0 of the text
// being encoded (not after an added token), which Metaspace's prepend_scheme "first" asks.
using PreTokenizer = std::function<std::vector<std::string>(const std::vector<std::string>&, bool at_start)>;
// Transforms the list of token strings into text pieces (HF decode_chain).
using Decoder = std::function<std::vector<std::string>(std::vector<std::string>)>;

// Each returns an identity stage for JSON null; throws FormatError (naming the file, the key path `at` of `j`
// and the type) for unknown or malformed stages.
Normalizer make_normalizer(const nlohmann::json& j, const jsonf::JsonPath& at);
PreTokenizer make_pre_tokenizer(const nlohmann::json& j, const jsonf::JsonPath& at);
Decoder make_decoder(const nlohmann::json& j, const jsonf::JsonPath& at);

// GPT-2's byte <-> printable-unicode map used by ByteLevel pre-tokenizer and decoder.
const std::vector<std::string>& byte_to_unicode();

}  // namespace nibble::tok
