// Model ids from the HuggingFace cache (offline: nibble never downloads).
#pragma once
#include <string>

namespace nibble {

// The model directory that from_pretrained / quantize_checkpoint read for `name_or_path`:
//  - a path that exists is returned unchanged (a directory wins over an id of the same spelling);
//  - otherwise "NAME", "ORG/NAME" or "ORG/NAME@REVISION" (a branch/tag under refs/, or a commit hash) is
//  looked
//    up as huggingface_hub lays out its cache: <cache>/models--ORG--NAME/refs/<REVISION, default main> holds
//    a commit hash naming <cache>/models--ORG--NAME/snapshots/<hash>/. <cache> is $HF_HUB_CACHE, else
//    $HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else
//    ~/.cache/huggingface/hub (empty variables count as unset).
// IoError if it is neither (saying where it looked and how to download it), ValueError for a malformed
// revision, FormatError for a refs file that does not hold a commit hash.
std::string resolve_model_path(const std::string& name_or_path);

// The cache directory resolve_model_path looks in (from the environment, as above).
std::string hf_hub_cache_dir();

}  // namespace nibble
