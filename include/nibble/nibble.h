// nibble: the public API in one include.
#pragma once
#include "nibble/bitsandbytes_config.h"  // IWYU pragma: export
#include "nibble/cpu.h"                  // IWYU pragma: export
#include "nibble/device.h"               // IWYU pragma: export
#include "nibble/dtype.h"                // IWYU pragma: export
#include "nibble/error.h"                // IWYU pragma: export
#include "nibble/files.h"                // IWYU pragma: export
#include "nibble/finetune.h"             // IWYU pragma: export
#include "nibble/hub.h"                  // IWYU pragma: export
#include "nibble/model.h"                // IWYU pragma: export
#include "nibble/quant_type.h"           // IWYU pragma: export
#include "nibble/quantize.h"             // IWYU pragma: export
#include "nibble/quantize_checkpoint.h"  // IWYU pragma: export
#include "nibble/safetensors.h"          // IWYU pragma: export
#include "nibble/sampling.h"             // IWYU pragma: export
#include "nibble/session.h"              // IWYU pragma: export
#include "nibble/tensor.h"               // IWYU pragma: export
#include "nibble/tokenizer.h"            // IWYU pragma: export
