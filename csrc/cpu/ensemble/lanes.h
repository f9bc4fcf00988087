// Included first by every ensemble unit, before any ATen header: in the AVX-512 build the
// ensemble kernels keep their AVX2 code (8 float32 lanes, at::vec's AVX2 types), because it
// measured faster there than the same source at 16 lanes (docs/performance.md, "CPU
// capabilities"): a tile of 16 batch rows has no 16 x 16 transpose and twice the lanes of
// padding for small batches. The unit still runs only in the AVX-512 build, on a CPU that has
// AVX2; at::vec's AVX2 types live in their own namespace (at::vec::AVX2), so nothing clashes
// with the 16-lane modular_rnn unit of the same library.
#pragma once

#if defined(CPU_CAPABILITY_AVX512)
#undef CPU_CAPABILITY_AVX512
#undef CPU_CAPABILITY
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define RNNOFRNNS_ENSEMBLE_AVX2_IN_AVX512_BUILD 1
#endif
