// Flush subnormals to zero (FTZ) and treat subnormal inputs as zero (DAZ) in the current
// thread for the lifetime of the object: a long recurrence that decays into the subnormal
// range otherwise runs many times slower on x86.
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define RNNOFRNNS_HAS_MXCSR 1
#endif

namespace rnnofrnns {

struct FlushDenormalGuard {
#ifdef RNNOFRNNS_HAS_MXCSR
  unsigned int saved;
  FlushDenormalGuard() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040u); }
  ~FlushDenormalGuard() { _mm_setcsr(saved); }
  FlushDenormalGuard(const FlushDenormalGuard&) = delete;
  FlushDenormalGuard& operator=(const FlushDenormalGuard&) = delete;
#endif
};

}  // namespace rnnofrnns
