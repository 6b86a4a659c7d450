// Fixture for the layering check: a core file including a models header (upward) must be reported.
#include "models/llama.h"
