// Per-pass TSC counters of ensemble_loss, for bench/micro/ensemble_pass_profile.sh. They are
// compiled only into a build with -DRNNOFRNNS_PROFILE_PASSES; in every other build each macro
// is empty.
//   RNNOFRNNS_PASS_CLOCK_START     at the start of a group of tiles
//   RNNOFRNNS_PASS_DONE(k)         adds the cycles since the last mark to counter k
//   RNNOFRNNS_PASS_REPORT()        at the end of a call: prints the counters (PROF=1) and resets them
#pragma once

#ifdef RNNOFRNNS_PROFILE_PASSES
#include <x86intrin.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace rnnofrnns {
inline std::atomic<uint64_t> g_pass_cycles[5];
}  // namespace rnnofrnns

#define RNNOFRNNS_PASS_CLOCK_START uint64_t rnnofrnns_pass_clock = __rdtsc();
#define RNNOFRNNS_PASS_DONE(k)                                      \
  {                                                                 \
    const uint64_t rnnofrnns_now = __rdtsc();                       \
    ::rnnofrnns::g_pass_cycles[k] += rnnofrnns_now - rnnofrnns_pass_clock; \
    rnnofrnns_pass_clock = rnnofrnns_now;                           \
  }
#define RNNOFRNNS_PASS_REPORT()                                                                                   \
  {                                                                                                               \
    auto& c = ::rnnofrnns::g_pass_cycles;                                                                         \
    if (std::getenv("PROF"))                                                                                      \
      std::fprintf(stderr, "PROF Mcyc transp %.1f fwd %.1f readout %.1f bwd %.1f gW %.1f\n", c[0] / 1e6, c[1] / 1e6, \
                   c[2] / 1e6, c[3] / 1e6, c[4] / 1e6);                                                           \
    for (auto& v : c) v = 0;                                                                                      \
  }
#else
#define RNNOFRNNS_PASS_CLOCK_START
#define RNNOFRNNS_PASS_DONE(k)
#define RNNOFRNNS_PASS_REPORT()
#endif
