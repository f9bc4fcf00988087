// What the per-row ensemble ops (ensemble_drive, ensemble_readout_loss) share: the walk over
// (batch row, tile of instances, step) and its fixed number of row chunks, each with its own
// partial sums, so that results do not depend on the thread count.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "checks.h"

namespace rnnofrnns {
// Internal linkage, as if the code stood in the unit that includes it: these headers serve
// the ensemble units (and bench/micro) only.
namespace {

constexpr int64_t kRowChunks = 16;
constexpr int64_t kInstTile = 64;

inline int64_t num_chunks(const EnsDims& d) { return std::min<int64_t>(kRowChunks, d.B); }

// fn(chunk, t, b, i) for every (t, b, i): the batch rows are split into a fixed number of
// chunks (one accumulator each), and inside a chunk tiles of instances x all steps.
template <typename Fn>
void for_tiles(const EnsDims& d, const Fn& fn) {
  const int64_t chunks = num_chunks(d);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t b = d.B * c / chunks; b < d.B * (c + 1) / chunks; ++b)
        for (int64_t i0 = 0; i0 < d.I; i0 += kInstTile)
          for (int64_t t = 0; t < d.T; ++t)
            for (int64_t i = i0; i < std::min(d.I, i0 + kInstTile); ++i) fn(c, t, b, i);
  });
}

}  // namespace
}  // namespace rnnofrnns
