// Fixture for the layering check: the CLI including a private header must be reported.
#include "kernels/cpu/gemm4.h"
