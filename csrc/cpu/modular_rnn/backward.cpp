// The backward kernel of the modular recurrence (see common.h): backpropagation through time
// from the saved states, the weight gradients fused into the loop (staged rows applied as
// rank-kStage updates to per-chunk accumulators), summed over the chunks in a fixed order.
#include "common.h"

namespace rnnofrnns {
// Hidden: every CPU build (avx512, avx2, default) is its own module with these same names.
namespace __attribute__((visibility("hidden"))) modular_rnn_cpu {

// The layout of the backward's per-chunk accumulators: nW area blocks, nL feedback blocks,
// nS star blocks (the gradient of each star's S_inv), each np x np, then p alpha sums.
struct Accumulators {
  int64_t nchunks, size, nW, nL, nS, blk, np;
};

// The weight gradients from the chunks' accumulators, summed in chunk order (so that they do
// not depend on the thread count), the padding dropped.
template <typename T>
void reduce_gradients(const std::vector<T>& partial, const Accumulators& acc, const int64_t* Lidx,
                      const AreaRates<T>& rates, const Shape& s, const Feedback& fb, T* grad_W, T* grad_L, T* grad_alpha,
                      T* grad_S) {
  const int64_t nchunks = acc.nchunks, acc_size = acc.size, nW = acc.nW, nL = acc.nL, nS = acc.nS;
  const int64_t blk = acc.blk, np = acc.np;
  const bool star = fb.step == Step::Star;
  auto reduce = [&](T* out, int64_t count, int64_t offset, auto scale_of) {
    for (int64_t b = 0; b < count; ++b) {
      const T scale = scale_of(b);
      for (int64_t r = 0; r < s.n; ++r)
        for (int64_t c = 0; c < s.n; ++c) {
          T sum = T(0);
          for (int64_t ch = 0; ch < nchunks; ++ch) sum += partial[ch * acc_size + offset + b * blk + r * np + c];
          out[(b * s.n + r) * s.n + c] = scale * sum;
        }
    }
  };
  auto one = [](int64_t) { return T(1); };
  if (grad_W) reduce(grad_W, s.p, 0, one);
  if (grad_L) reduce(grad_L, s.k, nW * blk, [&](int64_t r) { return star && !fb.hub_row(Lidx, r) ? T(2) : T(1); });
  if (star) reduce(grad_S, nS, (nW + nL) * blk, one);
  if (grad_alpha && !rates.per_step) {  // (per step: written by the steps themselves)
    for (int64_t i = 0; i < s.p; ++i) {
      T sum = T(0);
      for (int64_t ch = 0; ch < nchunks; ++ch) sum += partial[ch * acc_size + (nW + nL + nS) * blk + i];
      grad_alpha[i] = sum / rates.alpha[i];  // dx/da_i = (x - h_{t-1}) / a_i
    }
  }
}

// One star of the Cayley product transposed, per group of rows in the padded layout (see
// common.h), walking the stars backward from h_t to z_t.
template <typename T>
struct StarBackward {
  const Shape& s;
  const Feedback& fb;
  const int64_t* Lidx;
  int64_t np;
  const T* Lp;  // the packed blocks, untransposed (hub-row blocks P_hj, leaf blocks 2 P_jh)
  const T* Sp;  // every star's S_inv, untransposed
  const T* Ln;  // the blocks transposed, times -1 (the leaves' -2 P_jh)

  // Star q, from g = dLoss/d(its output) and x = its output, with sh = its s_hub:
  // X (the target side of its blocks' outer products) gets g at the leaves and
  // gr = S^{-T} gs at the hub, gs = 2 g_hub + sum_j (2 P_jh)^T g_j (staged in gs);
  // g becomes dLoss/d(its input): gr - g_hub at the hub, g_j + P_hj^T gr at the leaves;
  // x becomes its input: z_hub = 2 s - x_hub, z_j = x_j - 2 P_jh s; and Y (the source side)
  // gets the input at the leaves and s at the hub.
  void transpose(int64_t q, int rows, T* g, T* x, const T* sh, T* X, T* Y, T* gs, T* gr) const {
    using Vec = Vectorized<T>;
    const int64_t HP = s.p * np, blk = np * np, hub = fb.hubs[q];
    T* gh = g + hub * np;
    T* xh = x + hub * np;
    auto copy_area = [&](T* dst, const T* src, int64_t area) {
      for (int b = 0; b < rows; ++b) std::copy(src + b * HP + area * np, src + b * HP + (area + 1) * np, dst + b * HP + area * np);
    };
    for (int64_t r : fb.leaf_rows[q]) copy_area(X, g, Lidx[2 * r]);
    for (int b = 0; b < rows; ++b)
      for (int64_t j = 0; j < np; j += Vec::size()) (Vec(T(2)) * Vec::loadu(gh + b * HP + j)).store(gs + b * np + j);
    for (int64_t r : fb.leaf_rows[q]) matmul_acc(rows, gs, np, g + Lidx[2 * r] * np, HP, 1, Lp + r * blk, np, s.n, np);
    std::fill(gr, gr + rows * np, T(0));
    matmul_acc(rows, gr, np, gs, np, 1, Sp + q * blk, np, s.n, np);
    for (int b = 0; b < rows; ++b)
      for (int64_t j = 0; j < np; j += Vec::size()) {
        const Vec grv = Vec::loadu(gr + b * np + j);
        (grv - Vec::loadu(gh + b * HP + j)).store(gh + b * HP + j);
        grv.store(X + hub * np + b * HP + j);
        (Vec(T(2)) * Vec::loadu(sh + b * np + j) - Vec::loadu(xh + b * HP + j)).store(xh + b * HP + j);
        Vec::loadu(sh + b * np + j).store(Y + hub * np + b * HP + j);
      }
    for (int64_t r : fb.hub_rows[q]) matmul_acc(rows, g + Lidx[2 * r + 1] * np, HP, gr, np, 1, Lp + r * blk, np, s.n, np);
    for (int64_t r : fb.leaf_rows[q]) matmul_acc(rows, x + Lidx[2 * r] * np, HP, sh, np, 1, Ln + r * blk, np, s.n, np);
    for (int64_t r : fb.hub_rows[q]) copy_area(Y, x, Lidx[2 * r + 1]);
  }
};

// The transpose of the areas' update x = (1-a) h + a F(h, u), per group of rows in the
// padded layout (see common.h).
template <typename T>
struct AreaStepBackward {
  const Layout& lay;
  const Shape& s;
  int64_t np;
  const AreaRates<T>& rates;
  Nonlinearity nl;
  bool hopfield;
  const T* Wp;  // the area blocks, packed untransposed

  // Step t of rows b0.. . From gz = dLoss/dx: ag = a gz; the drive's gradient d (rate form:
  // phi'(z) a gz; in the hopfield form d is ag); carry's (1-a) gz part (rate form; zero in the
  // hopfield form, see carry); phi(h) into f (hopfield form, when W's gradient is asked for);
  // and, when x is given, alpha's part gz . (x - h): summed per area into accA[i] (one rate per
  // area; divided by a_i at the end) or, with rates per step, divided by a and written to
  // grad_rates[t, b, i] (dx/da = (x - h) / a).
  void update_transpose(int rows, int64_t t, int64_t b0, const T* gz, const T* x, const T* h, const T* z, T* ag,
                        T* d, T* carry, T* f, T* accA, T* grad_rates) const {
    using Vec = Vectorized<T>;
    constexpr int64_t V = Vec::size();
    const int64_t HP = s.p * np;
    with_nonlinearity(nl, [&](auto tag) {
      constexpr Nonlinearity NL = decltype(tag)::value;
      for (int b = 0; b < rows; ++b)
        for (int64_t i = 0; i < s.p; ++i) {
          const T av = rates.at(t, b0 + b, i);
          const Vec a(av), oma(T(1) - av);
          Vec sa(T(0));
          for (int64_t j = b * HP + i * np, e = j + np; j < e; j += V) {
            const Vec gv = Vec::loadu(gz + j);
            if (x) sa = at::vec::fmadd(gv, Vec::loadu(x + j) - Vec::loadu(h + j), sa);
            (a * gv).store(ag + j);
            if (hopfield) {
              Vec(T(0)).store(carry + j);
              if (f) phi<NL>(Vec::loadu(h + j)).store(f + j);
            } else {
              dphi<NL>(Vec::loadu(z + j), a * gv).store(d + j);
              (oma * gv).store(carry + j);
            }
          }
          if (!x) continue;
          T lanes[V];
          sa.store(lanes);
          T sum = T(0);
          for (int64_t l = 0; l < V; ++l) sum += lanes[l];
          if (rates.per_step)
            grad_rates[((t * s.B) + b0 + b) * s.p + i] = sum / av;
          else
            accA[i] += sum;
        }
    });
  }

  // carry = dLoss/dh_{t-1} through the areas: (1-a) gz + phi'(h) * (W^T (a gz)) (hopfield, where
  // d is a gz), (1-a) gz + W^T d (rate; update_transpose left (1-a) gz in carry).
  void carry(int rows, int64_t t, int64_t b0, T* carry, const T* gz, const T* h, const T* d) const {
    using Vec = Vectorized<T>;
    constexpr int64_t V = Vec::size();
    const int64_t HP = s.p * np, blk = np * np;
    if (!hopfield) {
      for (int64_t i = 0; i < s.p; ++i) lay.block_step(rows, carry + i * np, d + i * np, Wp + i * blk);
      return;
    }
    for (int64_t i = 0; i < s.p; ++i) lay.block_step(rows, carry + i * np, d + i * np, Wp + i * blk);
    with_nonlinearity(nl, [&](auto tag) {
      constexpr Nonlinearity NL = decltype(tag)::value;
      for (int b = 0; b < rows; ++b)
        for (int64_t i = 0; i < s.p; ++i) {
          const Vec oma(T(1) - rates.at(t, b0 + b, i));
          for (int64_t j = b * HP + i * np, e = j + np; j < e; j += V)
            at::vec::fmadd(oma, Vec::loadu(gz + j), dphi<NL>(Vec::loadu(h + j), Vec::loadu(carry + j))).store(carry + j);
        }
    });
  }
};

template <typename T>
void backward_kernel(const T* grad_states, const T* W, const T* Lb, const int64_t* Lidx, const T* h0,
                     const AreaRates<T> rates, const T* S_inv, const T* states, const T* pre, const T* zsave, const T* rsave,
                     T* grad_drive, T* grad_h0, T* grad_W, T* grad_L, T* grad_alpha, T* grad_S, const Shape s,
                     const Nonlinearity nl, const Form form, const Feedback& fb) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const int64_t np = padded_size<T>(s.n), HP = s.p * np, BH = s.B * s.H, blk = np * np;
  const int64_t m = fb.stars(), mn = m * s.n, Bmn = s.B * mn;  // the stars' saved s and r: [T, B, m*n]
  const Layout lay{s.n, np, HP};
  const bool hopfield = form == Form::Hopfield, euler = fb.step == Step::Euler, star = fb.step == Step::Star;
  // Untransposed packed weights: the microkernel then computes x -> W^T x. The Euler step's
  // rates are applied to the gradient (carry += L^T (a g)), not folded into L.
  const std::vector<T> Wp = pack_areas<T>(W, s, np, /*transpose=*/false);
  std::vector<T> Lp, Sp;
  pack_feedback<T>(Lb, Lidx, s, np, fb, nullptr, /*transpose=*/false, Lp);
  if (star) pack_blocks<T>(S_inv, m, s.n, np, /*transpose=*/false, T(1), Sp);
  // The stars save s_hub [T, B, m*n] rather than their inputs [T, B, m*p*n]: the backward rebuilds
  // each star's input z_hub = 2 s - h_hub and z_j = h_j - 2 P_jh s (Ln: the leaf blocks
  // transposed, times -2).
  std::vector<T> Ln;
  if (star) {
    pack_feedback<T>(Lb, Lidx, s, np, fb, nullptr, /*transpose=*/true, Ln);
    for (auto& v : Ln) v = -v;
  }
  const StarBackward<T> stars{s, fb, Lidx, np, Lp.data(), Sp.data(), Ln.data()};
  const AreaStepBackward<T> areas{lay, s, np, rates, nl, hopfield, Wp.data()};
  const int64_t groups = (s.B + kRows - 1) / kRows;
  // The batch groups are split into chunks whose number depends on B only, never on the
  // thread count. Each chunk stages and accumulates its own weight gradients [p + k (+ m)
  // blocks of np x np, then p alpha sums], and the chunks are summed in a fixed order, so
  // the results are bitwise identical for any number of threads (a resumed run on another
  // machine matches).
  const int64_t nW = grad_W ? s.p : 0, nL = grad_L ? s.k : 0;
  const int64_t nS = star ? m : 0;  // the gradient of every star's S_inv
  const int64_t acc_size = (nW + nL + nS) * blk + s.p;
  const int64_t nchunks = std::min<int64_t>(groups, kChunks);
  std::vector<T> partial(static_cast<size_t>(nchunks * acc_size), T(0));

  auto run_chunk = [&](int64_t chunk) {
    const int64_t g0 = chunk * groups / nchunks, g1 = (chunk + 1) * groups / nchunks;
    T* accW = partial.data() + chunk * acc_size;
    T* accL = accW + nW * blk;
    T* accS = accL + nL * blk;
    T* accA = accS + nS * blk;  // per area: sum of dLoss/dx * (x - h_{t-1}), x = h_t (Euler) or z_t
    const int64_t ng = g1 - g0, gsz = kRows * HP, sst = kStage * HP;
    // the staged sides X, Y of the Cayley map's blocks: one pair for the dense map, one per
    // stage of the stars
    const int64_t nXY = euler ? 0 : star ? fb.stages : 1;
    std::vector<T> buf(static_cast<size_t>((ng + 4) * gsz + (4 + 2 * nXY) * sst + 2 * m * kStage * np +
                                           2 * kRows * np),
                       T(0));
    T* carry_all = buf.data();       // per group: dLoss/dh_t through the steps after t
    T* g = carry_all + ng * gsz;     // total gradient of h_t (Euler, stars; the dense map stages it)
    T* z = g + gsz;                  // pre-activation (rate form)
    T* gz = z + gsz;                 // dense Cayley map: gradient of z_t = C^T g
    T* x = gz + gsz;                 // h_t, for alpha's gradient (Euler; the stars rebuild z_t in it)
    // Staged rows for the weight gradients: a*gz, h_{t-1}, the drive's gradient d (rate
    // form), phi(h_{t-1}) (hopfield form), and for the Cayley feedback the two sides of
    // every block's outer product (X at the target, Y at the source; the leaf blocks' factor
    // 2 is applied in the final sum) and, per star, the hub's gs = dLoss/ds_hub and r.
    T* st_ag = x + gsz;
    T* st_h = st_ag + sst;
    T* st_d = st_h + sst;
    T* st_f = st_d + sst;
    T* st_X = euler ? st_ag : st_f + sst;     // stage c at st_X + c * sst
    T* st_Y = euler ? st_h : st_X + nXY * sst;
    T* st_gs = st_f + (1 + 2 * nXY) * sst;    // star q at st_gs + q * kStage * np
    T* st_r = st_gs + m * kStage * np;
    T* gr = st_r + m * kStage * np;  // star: S^{-T} gs
    T* sh = gr + kRows * np;         // star: s_hub of step t
    auto flush = [&](int64_t nred) {
      if (nred == 0) return;
      if (grad_L)
        for (int64_t r = 0; r < s.k; ++r) {
          const int64_t c = star ? fb.stage_of[fb.star_of[r]] * sst : 0;
          lay.block_outer(accL + r * blk, st_X + c + Lidx[2 * r] * np, st_Y + c + Lidx[2 * r + 1] * np, nred);
        }
      if (grad_W)
        for (int64_t i = 0; i < s.p; ++i)
          lay.block_outer(accW + i * blk, (hopfield ? st_ag : st_d) + i * np, (hopfield ? st_f : st_h) + i * np, nred);
      const Layout hub{s.n, np, np};
      for (int64_t q = 0; q < nS; ++q)
        hub.block_outer(accS + q * blk, st_gs + q * kStage * np, st_r + q * kStage * np, nred);
    };
    int64_t slot = 0;
    // As in the forward, all groups of the thread step together (contiguous slabs per step).
    for (int64_t t = s.T - 1; t >= 0; --t) {
      for (int64_t gi = g0; gi < g1; ++gi) {
        const int64_t b0 = gi * kRows;
        const int rows = static_cast<int>(std::min<int64_t>(kRows, s.B - b0));
        const int64_t len = rows * HP;
        T* carry = carry_all + (gi - g0) * gsz;
        T* ag = st_ag + slot * HP;
        T* h = st_h + slot * HP;
        T* d = hopfield ? ag : st_d + slot * HP;
        // g and x: the dense Cayley map stages them as they are (the two sides X, Y of its
        // blocks' outer products: g at the target, z at the source); the stars stage their own
        const bool dense = fb.step == Step::Dense;
        T* gp = dense ? st_X + slot * HP : g;
        T* xp = dense ? st_Y + slot * HP : x;
        gather_rows(gp, grad_states + t * BH + b0 * s.H, rows, s.p, s.n, np, s.H);
        gather_rows(h, (t > 0 ? states + (t - 1) * BH : h0) + b0 * s.H, rows, s.p, s.n, np, s.H);
        if (grad_alpha || !euler)
          gather_rows(xp, (dense ? zsave : states) + t * BH + b0 * s.H, rows, s.p, s.n, np, s.H);
        if (!hopfield) gather_rows(z, pre + t * BH + b0 * s.H, rows, s.p, s.n, np, s.H);
        for (int64_t j = 0; j < len; j += V) (Vec::loadu(gp + j) + Vec::loadu(carry + j)).store(gp + j);
        // gz: the gradient of the pre-feedback state (g itself for the Euler step and, after the
        // stars have turned it in place, for them)
        T* gzp = dense ? gz : gp;
        if (dense) {
          std::fill(gz, gz + len, T(0));
          for (int64_t r = 0; r < s.k; ++r)
            lay.block_step(rows, gz + Lidx[2 * r + 1] * np, gp + Lidx[2 * r] * np, Lp.data() + r * blk);
        } else if (star) {  // the stars backward, from h_t (in xp) to z_t
          for (int64_t q = m - 1; q >= 0; --q) {
            const int64_t saved = t * Bmn + b0 * mn + q * s.n;  // row b at saved + b * mn
            T* gs = st_gs + (q * kStage + slot) * np;
            for (int b = 0; b < rows; ++b) {
              std::copy(zsave + saved + b * mn, zsave + saved + b * mn + s.n, sh + b * np);
              std::copy(rsave + saved + b * mn, rsave + saved + b * mn + s.n, st_r + (q * kStage + slot + b) * np);
            }
            const int64_t c = fb.stage_of[q] * sst + slot * HP;
            stars.transpose(q, rows, gp, xp, sh, st_X + c, st_Y + c, gs, gr);
          }
        }
        // the step before the feedback: x = (1-a) h + a F(h, u)
        areas.update_transpose(rows, t, b0, gzp, grad_alpha ? xp : nullptr, h, z, ag, d, carry,
                               hopfield && grad_W ? st_f + slot * HP : nullptr, accA, grad_alpha);
        scatter_rows(grad_drive + t * BH + b0 * s.H, d, rows, s.p, s.n, np, s.H);
        areas.carry(rows, t, b0, carry, gzp, h, d);
        if (euler)  // carry += L^T (a g)
          for (int64_t r = 0; r < s.k; ++r)
            lay.block_step(rows, carry + Lidx[2 * r + 1] * np, ag + Lidx[2 * r] * np, Lp.data() + r * blk);
        slot += rows;
        if (slot + kRows > kStage) {
          flush(slot);
          slot = 0;
        }
      }
    }
    flush(slot);
    for (int64_t gi = g0; gi < g1; ++gi) {
      const int64_t b0 = gi * kRows;
      const int rows = static_cast<int>(std::min<int64_t>(kRows, s.B - b0));
      scatter_rows(grad_h0 + b0 * s.H, carry_all + (gi - g0) * gsz, rows, s.p, s.n, np, s.H);
    }
  };
  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    FlushDenormalGuard ftz;
    for (int64_t chunk = c0; chunk < c1; ++chunk) run_chunk(chunk);
  });

  // Sum the chunks' accumulators in order and drop the padding.
  const Accumulators acc{nchunks, acc_size, nW, nL, nS, blk, np};
  reduce_gradients<T>(partial, acc, Lidx, rates, s, fb, grad_W, grad_L, grad_alpha, grad_S);
}

template void backward_kernel<float>(const float* grad_states, const float* W, const float* Lb, const int64_t* Lidx, const float* h0,
                     const AreaRates<float> rates, const float* S_inv, const float* states, const float* pre, const float* zsave, const float* rsave,
                     float* grad_drive, float* grad_h0, float* grad_W, float* grad_L, float* grad_alpha, float* grad_S, const Shape s,
                     const Nonlinearity nl, const Form form, const Feedback& fb);
template void backward_kernel<double>(const double* grad_states, const double* W, const double* Lb, const int64_t* Lidx, const double* h0,
                     const AreaRates<double> rates, const double* S_inv, const double* states, const double* pre, const double* zsave, const double* rsave,
                     double* grad_drive, double* grad_h0, double* grad_W, double* grad_L, double* grad_alpha, double* grad_S, const Shape s,
                     const Nonlinearity nl, const Form form, const Feedback& fb);

}  // namespace modular_rnn_cpu
}  // namespace rnnofrnns
