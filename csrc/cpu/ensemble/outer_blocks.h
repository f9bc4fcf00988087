// The weight gradients of ensemble_loss: per-tile sums over steps of outer products, as small
// GEMMs in register blocks whose accumulators stay in registers.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <type_traits>

#include "ensemble/simd.h"

namespace rnnofrnns {
// Internal linkage, as if the code stood in the unit that includes it: these headers serve
// the ensemble units (and bench/micro) only.
namespace {

// C[r, c] += sum over steps t of a(A[t, r]) * b(B[t, c]) for rows r < RB and columns c < CB of
// a register block, lane by lane (a = relu when RELU_A, b likewise): A [steps, ., L] with step
// stride a_step, B likewise, element (r, c) of C at C + (r * c_row + c * c_col) * L. Kept out
// of line: inlined into ensemble_loss_chunk, it makes GCC compile the recurrences around it
// worse (docs/performance.md).
template <typename scalar_t, int64_t RB, int64_t CB, bool RELU_A, bool RELU_B>
__attribute__((noinline)) void outer_block(const scalar_t* A, int64_t a_step, const scalar_t* Bm, int64_t b_step,
                                           int64_t steps, scalar_t* C, int64_t c_row, int64_t c_col) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t L = Vec::size();
  const Vec zero(scalar_t(0));
  Vec acc[RB][CB];
  UNROLL for (int64_t r = 0; r < RB; ++r) UNROLL for (int64_t c = 0; c < CB; ++c) acc[r][c] = zero;
  for (int64_t t = 0; t < steps; ++t) {
    Vec bv[CB];
    UNROLL for (int64_t c = 0; c < CB; ++c) {
      bv[c] = Vec::loadu(Bm + t * b_step + c * L);
      if constexpr (RELU_B) bv[c] = relu_vec(bv[c]);
    }
    UNROLL for (int64_t r = 0; r < RB; ++r) {
      Vec a = Vec::loadu(A + t * a_step + r * L);
      if constexpr (RELU_A) a = relu_vec(a);
      UNROLL for (int64_t c = 0; c < CB; ++c) acc[r][c] = at::vec::fmadd(a, bv[c], acc[r][c]);
    }
  }
  UNROLL for (int64_t r = 0; r < RB; ++r) UNROLL for (int64_t c = 0; c < CB; ++c) {
    scalar_t* dst = C + (r * c_row + c * c_col) * L;
    (Vec::loadu(dst) + acc[r][c]).store(dst);
  }
}

// The whole na x nb product of outer_block, b = relu when RELU_B: the weight gradients of one
// tile as small GEMMs whose accumulators stay in registers (the lanes are summed once per
// chunk, not per tile). The block shape decides the rate more than the load count does, and
// 4 x 3 comes closest to the core's peak (bench/micro/outer_blocks.cpp measures the shapes).
// So: 4 x 3 blocks where they fit; a column or two left over as rows of blocks 1 x 8 / 2 x 4
// over the transposed product; the last na mod 4 rows one at a time, in blocks of up to 10
// columns.
template <typename scalar_t, bool RELU_B>
void outer_tiled(const scalar_t* A, int64_t a_step, int64_t na, const scalar_t* Bm, int64_t b_step, int64_t nb,
                 int64_t steps, scalar_t* C, int64_t c_row, int64_t c_col) {
  constexpr int64_t L = at::vec::Vectorized<scalar_t>::size();
  const int64_t R4 = na / 4 * 4, C3 = nb / 3 * 3, CR = nb - C3;
  for (int64_t r0 = 0; r0 < R4; r0 += 4)
    for (int64_t c0 = 0; c0 < C3; c0 += 3)
      outer_block<scalar_t, 4, 3, false, RELU_B>(A + r0 * L, a_step, Bm + c0 * L, b_step, steps,
                                                 C + (r0 * c_row + c0 * c_col) * L, c_row, c_col);
  // Columns C3.. against rows 0..R4: the transposed product, CR rows x 8 or 4 columns.
  for (int64_t r0 = 0; CR > 0 && r0 < R4;) {
    const scalar_t* a = Bm + C3 * L;
    scalar_t* c = C + (r0 * c_row + C3 * c_col) * L;
    if (CR == 2) {
      outer_block<scalar_t, 2, 4, RELU_B, false>(a, b_step, A + r0 * L, a_step, steps, c, c_col, c_row);
      r0 += 4;
    } else if (R4 % 8 == 0) {
      outer_block<scalar_t, 1, 8, RELU_B, false>(a, b_step, A + r0 * L, a_step, steps, c, c_col, c_row);
      r0 += 8;
    } else {
      outer_block<scalar_t, 1, 4, RELU_B, false>(a, b_step, A + r0 * L, a_step, steps, c, c_col, c_row);
      r0 += 4;
    }
  }
  // Rows R4..: 1 x 10 blocks, then one block of the columns left (a compile-time width each).
  auto row = [&](auto CB_tag, int64_t r, int64_t c0) {
    constexpr int64_t CB = decltype(CB_tag)::value;
    outer_block<scalar_t, 1, CB, false, RELU_B>(A + r * L, a_step, Bm + c0 * L, b_step, steps,
                                                C + (r * c_row + c0 * c_col) * L, c_row, c_col);
  };
  using std::integral_constant;
  for (int64_t r = R4; r < na; ++r) {
    int64_t c0 = 0;
    for (; c0 + 10 <= nb; c0 += 10) row(integral_constant<int64_t, 10>{}, r, c0);
    switch (nb - c0) {
      case 1: row(integral_constant<int64_t, 1>{}, r, c0); break;
      case 2: row(integral_constant<int64_t, 2>{}, r, c0); break;
      case 3: row(integral_constant<int64_t, 3>{}, r, c0); break;
      case 4: row(integral_constant<int64_t, 4>{}, r, c0); break;
      case 5: row(integral_constant<int64_t, 5>{}, r, c0); break;
      case 6: row(integral_constant<int64_t, 6>{}, r, c0); break;
      case 7: row(integral_constant<int64_t, 7>{}, r, c0); break;
      case 8: row(integral_constant<int64_t, 8>{}, r, c0); break;
      case 9: row(integral_constant<int64_t, 9>{}, r, c0); break;
      default: break;
    }
  }
}

}  // namespace
}  // namespace rnnofrnns
