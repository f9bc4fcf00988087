// The forward kernel of the modular recurrence (see common.h): all T steps in one call, the
// batch split over threads in groups of kRows rows.
#include "common.h"

namespace rnnofrnns {
// Hidden: every CPU build (avx512, avx2, default) is its own module with these same names.
namespace __attribute__((visibility("hidden"))) modular_rnn_cpu {

template <typename T>
void forward_kernel(const T* drive, const T* W, const T* Lb, const int64_t* Lidx, const T* h0, const AreaRates<T> rates,
                    const T* S_inv, T* states, T* pre, T* zsave, T* rsave, const Shape s, const Nonlinearity nl,
                    const Form form, const Feedback& fb) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const int64_t np = padded_size<T>(s.n), HP = s.p * np, BH = s.B * s.H;
  const int64_t m = fb.stars(), mn = m * s.n, Bmn = s.B * mn;  // the stars' saved s and r: [T, B, m*n]
  const Layout lay{s.n, np, HP};
  const bool hopfield = form == Form::Hopfield;
  // Packed weights, transposed for the row-times-matrix microkernel. With one rate per area the
  // Euler step's rate is folded into its feedback blocks; rates per step are applied to L h.
  const std::vector<T> Wt = pack_areas<T>(W, s, np, /*transpose=*/true);
  const bool scaled_feedback = fb.step == Step::Euler && rates.per_step;
  std::vector<T> Lt, St;
  pack_feedback<T>(Lb, Lidx, s, np, fb, rates.per_step ? nullptr : rates.alpha, /*transpose=*/true, Lt);
  if (fb.step == Step::Star) pack_blocks<T>(S_inv, m, s.n, np, /*transpose=*/true, T(1), St);
  const int64_t groups = (s.B + kRows - 1) / kRows;
  // When n is a multiple of the vector width the padded layout is the tensors' own: the steps
  // then read h_{t-1} from h0 / the states written the step before, write h_t straight into
  // the states and (hopfield form) read the drive in place, with no copies.
  const bool direct = s.n == np;

  // Each thread owns a contiguous range of batch groups and advances all of them
  // one step at a time, so every step streams one contiguous slab of the drive
  // and of the states.
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    FlushDenormalGuard ftz;
    const int64_t ng = direct ? 0 : g1 - g0, gsz = kRows * HP;  // in place: no per-group states
    std::vector<T> buf(static_cast<size_t>((2 * ng + 3) * gsz + 2 * kRows * np), T(0));
    T* hp_all = buf.data();        // h_{t-1} of every group (copied layout only)
    T* hn_all = hp_all + ng * gsz; // h_t of every group (copied layout only)
    T* u = hn_all + ng * gsz;
    T* tmp = u + gsz;
    T* cz = tmp + gsz;             // dense Cayley: C z; Euler with rates per step: L h
    T* rb = cz + gsz;              // star q: r = z_hub + sum_j P_hj z_j
    T* sb = rb + kRows * np;       // star q: s_hub = S_q^{-1} r
    auto rows_of = [&](int64_t g) { return static_cast<int>(std::min<int64_t>(kRows, s.B - g * kRows)); };
    if (!direct)
      for (int64_t g = g0; g < g1; ++g)
        gather_rows(hp_all + (g - g0) * gsz, h0 + g * kRows * s.H, rows_of(g), s.p, s.n, np, s.H);
    for (int64_t t = 0; t < s.T; ++t) {
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t b0 = g * kRows;
        const int rows = rows_of(g);
        const T* drive_t = drive + t * BH + b0 * s.H;
        const T* hp = !direct ? hp_all + (g - g0) * gsz : t == 0 ? h0 + b0 * s.H : states + (t - 1) * BH + b0 * s.H;
        T* hn = direct ? states + t * BH + b0 * s.H : hn_all + (g - g0) * gsz;
        if (!(direct && hopfield)) gather_rows(u, drive_t, rows, s.p, s.n, np, s.H);
        // The drive streams from memory once; ask for this group's next slab a step ahead
        // (into L2), so that the update loop below does not wait on it.
        if (t + 1 < s.T)
          for (int64_t e = 0, len = rows * s.H; e < len; e += 64 / static_cast<int64_t>(sizeof(T)))
            __builtin_prefetch(drive_t + BH + e, 0, 2);
        const T* uin = direct && hopfield ? drive_t : u;
        if (hopfield) {
          // hn = (1-a) h + a u + W (a phi(h))  [+ (aL) h below for the Euler step]; W is block
          // diagonal, so a W phi(h) = W (a phi(h)) for a rate per row and area
          with_nonlinearity(nl, [&](auto tag) {
            constexpr Nonlinearity NL = decltype(tag)::value;
            for (int b = 0; b < rows; ++b)
              for (int64_t i = 0; i < s.p; ++i) {
                const T av = rates.at(t, b0 + b, i);
                const Vec a(av), oma(T(1) - av);
                for (int64_t j = b * HP + i * np, e = j + np; j < e; j += V) {
                  const Vec h = Vec::loadu(hp + j);
                  (a * phi<NL>(h)).store(tmp + j);
                  at::vec::fmadd(oma, h, a * Vec::loadu(uin + j)).store(hn + j);
                }
              }
          });
          for (int64_t i = 0; i < s.p; ++i) lay.block_step(rows, hn + i * np, tmp + i * np, Wt.data() + i * np * np);
        } else {
          // z = W h + u ; hn = (1-a) h + a phi(z)  [+ (aL) h below for the Euler step]
          for (int64_t i = 0; i < s.p; ++i) lay.block_step(rows, u + i * np, hp + i * np, Wt.data() + i * np * np);
          if (pre) scatter_rows(pre + t * BH + b0 * s.H, u, rows, s.p, s.n, np, s.H);
          with_nonlinearity(nl, [&](auto tag) {
            constexpr Nonlinearity NL = decltype(tag)::value;
            for (int b = 0; b < rows; ++b)
              for (int64_t i = 0; i < s.p; ++i) {
                const T av = rates.at(t, b0 + b, i);
                const Vec a(av), oma(T(1) - av);
                for (int64_t j = b * HP + i * np, e = j + np; j < e; j += V)
                  at::vec::fmadd(oma, Vec::loadu(hp + j), a * phi<NL>(Vec::loadu(u + j))).store(hn + j);
              }
          });
        }
        if (scaled_feedback && s.k > 0) {  // hn += a (L h), a per row and area
          std::fill(cz, cz + rows * HP, T(0));
          for (int64_t r = 0; r < s.k; ++r)
            lay.block_step(rows, cz + Lidx[2 * r] * np, hp + Lidx[2 * r + 1] * np, Lt.data() + r * np * np);
          for (int b = 0; b < rows; ++b)
            for (int64_t i = 0; i < s.p; ++i) {
              const Vec a(rates.at(t, b0 + b, i));
              for (int64_t j = b * HP + i * np, e = j + np; j < e; j += V)
                at::vec::fmadd(a, Vec::loadu(cz + j), Vec::loadu(hn + j)).store(hn + j);
            }
        } else if (fb.step == Step::Euler) {
          for (int64_t r = 0; r < s.k; ++r)
            lay.block_step(rows, hn + Lidx[2 * r] * np, hp + Lidx[2 * r + 1] * np, Lt.data() + r * np * np);
        } else {
          // hn holds z; the Cayley map h = C z follows
          if (zsave && fb.step == Step::Dense) scatter_rows(zsave + t * BH + b0 * s.H, hn, rows, s.p, s.n, np, s.H);
          if (fb.step == Step::Dense) {
            std::fill(cz, cz + rows * HP, T(0));
            for (int64_t r = 0; r < s.k; ++r)
              lay.block_step(rows, cz + Lidx[2 * r] * np, hn + Lidx[2 * r + 1] * np, Lt.data() + r * np * np);
            std::copy(cz, cz + rows * HP, hn);
          } else {  // each star in turn, in place: hn holds its input and then its output
            for (int64_t q = 0; q < m; ++q) {
              T* zh = hn + fb.hubs[q] * np;
              const int64_t saved = t * Bmn + b0 * mn + q * s.n;  // row b at saved + b * mn
              for (int b = 0; b < rows; ++b) std::copy(zh + b * HP, zh + b * HP + np, rb + b * np);
              for (int64_t r : fb.hub_rows[q])
                matmul_acc(rows, rb, np, hn + Lidx[2 * r + 1] * np, HP, 1, Lt.data() + r * np * np, np, s.n, np);
              if (rsave)
                for (int b = 0; b < rows; ++b) std::copy(rb + b * np, rb + b * np + s.n, rsave + saved + b * mn);
              std::fill(sb, sb + rows * np, T(0));
              matmul_acc(rows, sb, np, rb, np, 1, St.data() + q * np * np, np, s.n, np);
              if (zsave)
                for (int b = 0; b < rows; ++b) std::copy(sb + b * np, sb + b * np + s.n, zsave + saved + b * mn);
              for (int b = 0; b < rows; ++b)
                for (int64_t j = 0; j < np; j += V)
                  (Vec(T(2)) * Vec::loadu(sb + b * np + j) - Vec::loadu(zh + b * HP + j)).store(zh + b * HP + j);
              for (int64_t r : fb.leaf_rows[q])
                matmul_acc(rows, hn + Lidx[2 * r] * np, HP, sb, np, 1, Lt.data() + r * np * np, np, s.n, np);
            }
          }
        }
        if (!direct) scatter_rows(states + t * BH + b0 * s.H, hn, rows, s.p, s.n, np, s.H);
      }
      std::swap(hp_all, hn_all);
    }
  });
}

template void forward_kernel<float>(const float* drive, const float* W, const float* Lb, const int64_t* Lidx, const float* h0, const AreaRates<float> rates,
                    const float* S_inv, float* states, float* pre, float* zsave, float* rsave, const Shape s, const Nonlinearity nl,
                    const Form form, const Feedback& fb);
template void forward_kernel<double>(const double* drive, const double* W, const double* Lb, const int64_t* Lidx, const double* h0, const AreaRates<double> rates,
                    const double* S_inv, double* states, double* pre, double* zsave, double* rsave, const Shape s, const Nonlinearity nl,
                    const Form form, const Feedback& fb);

}  // namespace modular_rnn_cpu
}  // namespace rnnofrnns
