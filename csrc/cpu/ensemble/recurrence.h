// The passes of ensemble_loss over one tile's steps: the recurrences (forward and backward,
// two tiles at a time, optionally in the Hessenberg basis), the readout with its error, and
// the input projections of the split relu backward.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "ensemble/prefetch.h"
#include "ensemble/simd.h"

namespace rnnofrnns {
// Internal linkage, as if the code stood in the unit that includes it: these headers serve
// the ensemble units (and bench/micro) only.
namespace {

// Largest hidden size / feature count of the fused ensemble_loss (its per-step vectors live
// in fixed-size local arrays); larger ensembles go through modular_rnn instead.
constexpr int64_t kMaxEnsembleDim = 64;

// Batch tiles that go through the recurrence together (see fused_steps).
constexpr int64_t kTilesPerGroup = 2;

// out[t, j] = sum_f W[j, f] in[t, f] for t in [t0, t1) (lane-major [T, nin, L] in, [T, n, L]
// out, each weight broadcast from its scalar): a register block of TB steps x CB outputs,
// so that one weight load feeds TB FMAs and each input load CB of them; the last T mod TB
// steps one at a time. Calls pf.step() once per step.
template <typename scalar_t, int64_t CB, int64_t TB>
void lane_matvec(const scalar_t* W, const scalar_t* in, scalar_t* out, int64_t n, int64_t nin, int64_t t0,
                 int64_t t1, TilePrefetch<scalar_t>& pf) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t L = Vec::size();
  int64_t t = t0;
  for (; t + TB <= t1; t += TB) {
    UNROLL for (int64_t u = 0; u < TB; ++u) pf.step();
    for (int64_t j0 = 0; j0 < n; j0 += CB) {
      const int64_t nb = std::min<int64_t>(CB, n - j0);
      Vec p[TB][CB];
      UNROLL for (int64_t u = 0; u < TB; ++u) UNROLL for (int64_t j = 0; j < nb; ++j) p[u][j] = Vec(scalar_t(0));
      UNROLL for (int64_t f = 0; f < nin; ++f) {
        Vec v[TB];
        UNROLL for (int64_t u = 0; u < TB; ++u) v[u] = Vec::loadu(in + ((t + u) * nin + f) * L);
        UNROLL for (int64_t j = 0; j < nb; ++j) {
          const Vec w(W[(j0 + j) * nin + f]);
          UNROLL for (int64_t u = 0; u < TB; ++u) p[u][j] = at::vec::fmadd(w, v[u], p[u][j]);
        }
      }
      UNROLL for (int64_t u = 0; u < TB; ++u)
        UNROLL for (int64_t j = 0; j < nb; ++j) p[u][j].store(out + ((t + u) * n + j0 + j) * L);
    }
  }
  if constexpr (TB > 1) lane_matvec<scalar_t, CB, 1>(W, in, out, n, nin, t, t1, pf);
}

// Register block of lane_matvec for a compile-time hidden size nn (0: given at run time):
// steps per block (enough independent accumulators for small n) and outputs per block.
constexpr int64_t matvec_steps(int64_t nn) { return nn <= 0 ? 1 : nn <= 2 ? 4 : 2; }
constexpr int64_t matvec_outputs(int64_t nn) { return nn <= 0 ? 8 : nn <= 5 ? nn : 5; }

// Readout, error and unscaled readout gradient of R consecutive steps t.. of a tile, FB
// features per register block: o = b + W_y^T h_t, e = r(o) - y_t, go_t = r'(o) e, and the
// squared errors summed into lossv. The gradients' constant factor 2 / (B T F) is applied
// once when the tile sums are flushed (all of them are linear in go). W0: column 0 of W_y is zero
// below its first entry (the Hessenberg basis), and those FMAs are skipped.
template <typename scalar_t, int64_t R, int64_t FB, bool W0 = false>
inline void readout_steps(const scalar_t* wy, const scalar_t* bias, const scalar_t* hs, const scalar_t* yt,
                          scalar_t* go, int64_t n, int64_t F, int64_t t, bool relu_out,
                          at::vec::Vectorized<scalar_t> (&lossv)[2]) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t L = Vec::size();
  UNROLL for (int64_t f0 = 0; f0 < F; f0 += FB) {
    const int64_t nb = std::min<int64_t>(FB, F - f0);
    Vec o[R][FB];
    UNROLL for (int64_t f = 0; f < nb; ++f) {
      const Vec bf(bias[f0 + f]);
      UNROLL for (int64_t u = 0; u < R; ++u) o[u][f] = bf;
    }
    UNROLL for (int64_t j = 0; j < n; ++j) {
      Vec h[R];
      UNROLL for (int64_t u = 0; u < R; ++u) h[u] = Vec::loadu(hs + ((t + u) * n + j) * L);
      UNROLL for (int64_t f = 0; f < nb; ++f) {
        if (W0 && f0 + f == 0 && j > 0) continue;  // a structural zero
        const Vec w(wy[j * F + f0 + f]);
        UNROLL for (int64_t u = 0; u < R; ++u) o[u][f] = at::vec::fmadd(w, h[u], o[u][f]);
      }
    }
    UNROLL for (int64_t u = 0; u < R; ++u) UNROLL for (int64_t f = 0; f < nb; ++f) {
      const int64_t q = ((t + u) * F + f0 + f) * L;
      if (relu_out) {
        const Vec live = live_mask(o[u][f]);
        const Vec e = (o[u][f] & live) - Vec::loadu(yt + q);
        lossv[f & 1] = at::vec::fmadd(e, e, lossv[f & 1]);
        (e & live).store(go + q);
      } else {
        const Vec e = o[u][f] - Vec::loadu(yt + q);
        lossv[f & 1] = at::vec::fmadd(e, e, lossv[f & 1]);
        e.store(go + q);
      }
    }
  }
}

// One pass of the recurrence over a tile's T steps, for G tiles at once:
//   forward  (BACKWARD false): out_t = A in_t + R s(out_{t-1}), t = 0 .. T-1, R[j, k] = r[j*n + k]
//   backward (BACKWARD true):  out_t = A in_t + R out_{t+1},    t = T-1 .. 0, R[j, k] = r[k*n + j]
// with A[j, f] = a[j*nin + f], s = relu when relu_prev, lane-major [T, nin, L] in and [T, n, L]
// out. Each output unit is one chain per step, the input terms first: they do not wait for
// the previous step, so the core can work on them while the previous step's chain is still
// in flight. Outputs go in blocks of JB (JB <= 5, or JB == n), the n mod JB left over in one
// block of its own width; the G tiles share every weight load and give the core G independent
// chains. With HN > 0 the recurrent matrix is upper Hessenberg of compile-time size HN (forward:
// R[j, k] = 0 for k < j - 1; backward, its transpose: R[j, k] = 0 for k > j + 1) and the
// structural zeros are skipped: 64 instead of 100 FMAs per unit block pair at n = 10. Calls
// pf.step() once per step.
template <typename scalar_t, int64_t G, int64_t JB, bool BACKWARD, int64_t HN = 0>
ALWAYS_INLINE void fused_steps(const scalar_t* a, const scalar_t* r, scalar_t* const* in_tiles,
                               scalar_t* const* out_tiles, int64_t n, int64_t nin, int64_t T, bool relu_prev,
                               TilePrefetch<scalar_t>& pf) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t L = Vec::size();
  const Vec zero(scalar_t(0));
  // Local copies of the buffer pointers: vector stores may alias anything, so pointers read
  // through in_tiles / out_tiles would be reloaded after every store.
  const scalar_t* in[G];
  scalar_t* out[G];
  for (int64_t g = 0; g < G; ++g) {
    in[g] = in_tiles[g];
    out[g] = out_tiles[g];
  }
  // Units j0 .. j0 + NB of step t, NB a compile-time width (the accumulators stay in registers).
  // j0_tag: the first unit, an int64_t or (with HN > 0) a compile-time integral_constant.
  auto block = [&](auto NB_tag, int64_t s, int64_t t, int64_t tp, auto j0_tag) __attribute__((always_inline)) {
    constexpr int64_t NB = decltype(NB_tag)::value;
    const int64_t j0 = j0_tag;
    Vec p[G][NB];
    UNROLL for (int64_t g = 0; g < G; ++g) UNROLL for (int64_t j = 0; j < NB; ++j) p[g][j] = zero;
    UNROLL for (int64_t f = 0; f < nin; ++f) {
      Vec v[G];
      UNROLL for (int64_t g = 0; g < G; ++g) v[g] = Vec::loadu(in[g] + (t * nin + f) * L);
      UNROLL for (int64_t j = 0; j < NB; ++j) {
        if constexpr (HN > 0 && BACKWARD) {  // a = W_y in the Hessenberg basis: column 0 is c e_0
          constexpr int64_t J0 = decltype(j0_tag)::value;
          if (f == 0 && J0 + j > 0) continue;
        }
        const Vec w(a[(j0 + j) * nin + f]);
        UNROLL for (int64_t g = 0; g < G; ++g) p[g][j] = at::vec::fmadd(w, v[g], p[g][j]);
      }
    }
    if (s > 0) {
      UNROLL for (int64_t k = 0; k < n; ++k) {
        Vec v[G];
        UNROLL for (int64_t g = 0; g < G; ++g) {
          v[g] = Vec::loadu(out[g] + (tp * n + k) * L);
          if (relu_prev) v[g] = relu_vec(v[g]);
        }
        UNROLL for (int64_t j = 0; j < NB; ++j) {
          if constexpr (HN > 0) {
            constexpr int64_t J0 = decltype(j0_tag)::value;
            if (BACKWARD ? k > J0 + j + 1 : k + 1 < J0 + j) continue;  // a structural zero
          }
          const Vec w(BACKWARD ? r[k * n + j0 + j] : r[(j0 + j) * n + k]);
          UNROLL for (int64_t g = 0; g < G; ++g) p[g][j] = at::vec::fmadd(w, v[g], p[g][j]);
        }
      }
    }
    UNROLL for (int64_t g = 0; g < G; ++g)
      UNROLL for (int64_t j = 0; j < NB; ++j) p[g][j].store(out[g] + (t * n + j0 + j) * L);
  };
  using std::integral_constant;
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = BACKWARD ? T - 1 - s : s, tp = BACKWARD ? t + 1 : t - 1;
    pf.step();
    if constexpr (HN > 0) {
      // Compile-time unit blocks, so that the structural zeros are known to the compiler.
      static_assert(HN % JB == 0 && HN <= 2 * JB, "Hessenberg unit blocks: one or two, tiling the hidden size");
      block(integral_constant<int64_t, JB>{}, s, t, tp, integral_constant<int64_t, 0>{});
      if constexpr (HN > JB) block(integral_constant<int64_t, JB>{}, s, t, tp, integral_constant<int64_t, JB>{});
    } else {
      int64_t j0 = 0;
      for (; j0 + JB <= n; j0 += JB) block(integral_constant<int64_t, JB>{}, s, t, tp, j0);
      if constexpr (JB <= 5) switch (n - j0) {  // wider blocks are only used when JB == n
        case 1: block(integral_constant<int64_t, 1>{}, s, t, tp, j0); break;
        case 2: block(integral_constant<int64_t, 2>{}, s, t, tp, j0); break;
        case 3: block(integral_constant<int64_t, 3>{}, s, t, tp, j0); break;
        case 4: block(integral_constant<int64_t, 4>{}, s, t, tp, j0); break;
        default: break;
      }
    }
  }
}

}  // namespace
}  // namespace rnnofrnns
