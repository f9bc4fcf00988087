// Software prefetch of the x and y rows of the tiles that ensemble_loss runs next.
#pragma once

#include <algorithm>
#include <cstdint>

namespace rnnofrnns {
// Internal linkage, as if the code stood in the unit that includes it: these headers serve
// the ensemble units (and bench/micro) only.
namespace {

// Software prefetch of the x and y rows of later tiles (one contiguous block each, possibly the
// first tiles of the piece of work that the thread runs next), spread in small bites over the
// passes of the current group of tiles: the hardware prefetcher alone leaves each group's first
// reads waiting on memory, and issuing a whole block at once stalls on the miss buffers. Two
// streams: the group after next into L2 (prefetcht2: it does not hold the L1 miss buffers that the passes' own L2 reads
// need while memory answers) and the next group from L2 into L1 (prefetcht0). A block starts
// `offset` elements after xs / ys (none where xs / ys is null) and is clipped to x_end / y_end
// (one past the data).
template <typename scalar_t, int LOCALITY>
struct BlockPrefetch {
  const char* x = nullptr;
  const char* y = nullptr;
  int64_t x_lines = 0, lines = 0, per_call = 0, next = 0;
  BlockPrefetch(const scalar_t* xs, const scalar_t* x_end, const scalar_t* ys, const scalar_t* y_end, int64_t offset,
                int64_t elems, int64_t calls) {
    const int64_t ex = xs ? std::max<int64_t>(0, std::min<int64_t>(elems, (x_end - xs) - offset)) : 0;
    const int64_t ey = ys ? std::max<int64_t>(0, std::min<int64_t>(elems, (y_end - ys) - offset)) : 0;
    if (ex > 0) x = reinterpret_cast<const char*>(xs + offset);
    if (ey > 0) y = reinterpret_cast<const char*>(ys + offset);
    constexpr int64_t per_line = 64 / static_cast<int64_t>(sizeof(scalar_t));
    x_lines = (ex + per_line - 1) / per_line;
    lines = x_lines + (ey + per_line - 1) / per_line;
    per_call = (lines + calls - 1) / calls;
  }
  void step() {
    for (const int64_t end = std::min(next + per_call, lines); next < end; ++next)
      __builtin_prefetch(next < x_lines ? x + next * 64 : y + (next - x_lines) * 64, 0, LOCALITY);
  }
};

template <typename scalar_t>
struct TilePrefetch {
  BlockPrefetch<scalar_t, 1> far;
  BlockPrefetch<scalar_t, 3> near;
  bool far_phase;
  // Prefetch of the next group of `group` tiles (near_x / near_y: its first rows, L per tile)
  // and of the one after (far_x / far_y); null where there is none. With
  // two_level, the far stream runs in the fwd_calls calls of the forward steps and the near
  // one in the bwd_calls calls of the backward steps, when the far data has had time to reach
  // L2 (without a backward pass both run during the forward steps). Without it, only the near
  // stream runs, straight from memory, over all calls: with much work per tile (hidden sizes
  // from kTwoLevelBelow on) it has the time, and the extra stream costs more than it saves.
  TilePrefetch(const scalar_t* near_x, const scalar_t* near_y, const scalar_t* far_x, const scalar_t* far_y,
               const scalar_t* x_end, const scalar_t* y_end, int64_t group, int64_t tile_elems, int64_t fwd_calls,
               int64_t bwd_calls, bool two_level)
      : far(far_x, x_end, far_y, y_end, 0, two_level ? group * tile_elems : 0, fwd_calls),
        near(near_x, x_end, near_y, y_end, 0, group * tile_elems,
             two_level ? (bwd_calls > 0 ? bwd_calls : fwd_calls) : fwd_calls + bwd_calls),
        far_phase(two_level && bwd_calls > 0) {}
  // From here on the calls belong to the near stream.
  void start_near() { far_phase = false; }
  void step() {
    far.step();  // no-op once the far stream is done
    if (!far_phase) near.step();
  }
};

// Hidden sizes below this use both prefetch streams (see TilePrefetch): small tiles finish
// too soon for one stream from memory, while at hidden 10 the second stream costs more than it
// saves (bench/ops/ensemble_op_threads.py, docs/performance.md).
constexpr int64_t kTwoLevelBelow = 8;

}  // namespace
}  // namespace rnnofrnns
