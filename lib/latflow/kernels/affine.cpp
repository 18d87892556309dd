// SPDX-License-Identifier: MIT
// The fused affine coupling layer (periodic_conv.hpp AffineLayer): inference in place, and the training forward
// with its tape and hand-written backward, over the direct and Winograd convolutions and the lane maths.
#include <algorithm>

#include "latflow/kernels/conv_detail.hpp"

namespace latflow::pconv {

namespace {

// (TAPS, CC: the taps and channels as constants, so that their loops unroll; 0: run-time values.)
template <class T, int SB, int TAPS, int CC>
__attribute__((always_inline)) inline void dual_dot_rows(const T* in, Row row, const Geo& g, int C_rt, const T* Ws,
                                                         const T* Wt, T bias_s, T* s_out, T* t_out) {
  using V_t = vec_t<T, 8>;
  const int C = CC ? CC : C_rt, taps = TAPS ? TAPS : g.taps;
  const T* base[SB];
  const std::int32_t* ns[SB];
  row_starts<SB>(in, row, g, 2 * C, base, ns);
  V_t as[SB], at[SB];
  for (int q = 0; q < SB; ++q) as[q] = at[q] = V_t{};
  for (int t = 0; t < taps; ++t)
    for (int k0 = 0; k0 < C; k0 += 8) {
      const V_t ms = load<8>(Ws + static_cast<std::int64_t>(t) * C + k0);
      const V_t mt = load<8>(Wt + static_cast<std::int64_t>(t) * C + k0);
      for (int q = 0; q < SB; ++q) {
        const T* p = base[q] + static_cast<std::int64_t>(ns[q][t]) * 2 * C + k0;
        as[q] += load<8>(p) * ms;
        at[q] += load<8>(p + C) * mt;
      }
    }
  // The lane sums in hsum8's order, then the bias.
  if constexpr (SB == 4) {
    const V_t a[8] = {as[0], as[1], as[2], as[3], at[0], at[1], at[2], at[3]};
    const V_t sums = transpose_sums<T>(a);
    for (int q = 0; q < SB; ++q) {
      s_out[row.r + q] = sums[q] + bias_s;
      t_out[row.r + q] = sums[4 + q];
    }
  } else {
    for (int q = 0; q < SB; ++q) {
      s_out[row.r + q] = hsum8<T>(as[q]) + bias_s;
      t_out[row.r + q] = hsum8<T>(at[q]);
    }
  }
}

template <class T, int TAPS, int CC>
__attribute__((always_inline)) inline void dual_dot_c(const T* in, std::int64_t n, const Geo& g, int C, const T* Ws,
                                                      const T* Wt, T bias_s, T* s_out, T* t_out) {
  constexpr int SB = 4;
  const std::int64_t rows = n * g.Vr;
  Row row{0, 0, 0};
  for (; row.r + SB <= rows; row.advance(SB, g.Vr))
    dual_dot_rows<T, SB, TAPS, CC>(in, row, g, C, Ws, Wt, bias_s, s_out, t_out);
  for (; row.r < rows; row.advance(1, g.Vr)) dual_dot_rows<T, 1, TAPS, CC>(in, row, g, C, Ws, Wt, bias_s, s_out, t_out);
}

template <class T>
void dual_dot(const T* in, std::int64_t n, const Geo& g, int C, const T* Ws, const T* Wt, T bias_s, T* s_out, T* t_out,
              Isa isa) {
  // (each variant in its own instruction-set wrapper, as in gather)
  if (g.taps == 9 && C == 8)  // 3x3 kernels of 8 channels
    with_isa(isa, [&]() LATFLOW_KERNEL { dual_dot_c<T, 9, 8>(in, n, g, C, Ws, Wt, bias_s, s_out, t_out); });
  else
    with_isa(isa, [&]() LATFLOW_KERNEL { dual_dot_c<T, 0, 0>(in, n, g, C, Ws, Wt, bias_s, s_out, t_out); });
}

// Samples are done kChunk at a time, so that a block's activations stay in the L2 cache (and each inference buffer
// stays under glibc's mmap threshold: larger ones were mapped afresh, with page faults, on every call).
constexpr std::int64_t kChunk = 16;

}  // namespace

// Sizes, without arranging any weights. The tape per sample: c (and -c), each conv's values before and after its
// activation (but the last's), s, exp(+-s), t and u (Pass below).
template <class T>
std::int64_t affine_tape_size(const AffineLayer<T>& layer, std::int64_t n) {
  std::int64_t V = 1;
  for (auto e : layer.extents) V *= e;
  const std::int64_t copies = layer.z2 ? 2 : 1;
  std::int64_t per = copies * V + 4 * layer.Va;
  for (std::size_t l = 0; l + 1 < layer.net.size(); ++l) per += 2 * copies * V * layer.net[l].cout;
  return n * per;
}

template <class T>
std::int64_t affine_param_count(const AffineLayer<T>& layer) {
  std::int64_t n = 0;
  for (const auto& c : layer.net) n += static_cast<std::int64_t>(c.cout) * c.cin * layer.taps + c.cout;
  return n;
}

namespace {

// A layer's weights arranged for the kernels once per call, and its sizes.
template <class T>
struct Plan {
  const AffineLayer<T>& ly;
  std::int64_t V = 1, C = 0;
  int L = 0, copies = 1, width = 1;
  std::vector<Arranged<T>> arranged;  // every conv, direct kernels
  Arranged<T> conv_s, conv_t;         // the last conv's two outputs as one-output convs
  std::vector<T> w_s, w_t;            // the same, [taps][C], for dual_dot
  bool winograd = false;              // 2D 3x3 nets: Winograd F(MxM, 3x3) for by_winograd(l)
  Isa isa;                            // the instruction set the kernels run (the layer's policy)
  WinogradTiles tiles;
  std::vector<std::vector<T>> U, UT;  // their transformed weights; UT: of the transposed convs (backward)
  std::size_t wino_size = 0;
  std::vector<T> reflect, zeros;    // 2 bias of the first conv; zeros (a bias for the transposed convs)
  std::vector<std::int64_t> w_off;  // offset of conv l's weight in the parameter list (bias follows)
  std::vector<TapGroup> first;      // the first conv's taps that see the frozen sites (c = 0 at the active ones)

  Plan(const AffineLayer<T>& layer, bool backward) : ly(layer), isa(layer.policy.isa) {
    for (auto e : ly.extents) V *= e;
    const auto& net = ly.net;
    L = static_cast<int>(net.size());
    copies = ly.z2 ? 2 : 1;
    C = net.back().cin;
    std::int64_t off = 0;
    for (const auto& c : net) {
      arranged.push_back(arrange_conv(c.w, ly.taps, c.cin, c.cout, false));
      width = std::max(width, std::max(c.cout, c.cin));
      w_off.push_back(off);
      off += static_cast<std::int64_t>(c.cout) * c.cin * ly.taps + c.cout;
    }
    w_off.push_back(off);
    if (L > 1) first = tap_groups(all(), ly.active, ly.Va);
    const auto& last = net.back();
    const std::int64_t last_taps = static_cast<std::int64_t>(last.cin) * ly.taps;
    conv_s = arrange_conv(last.w, ly.taps, last.cin, 1, false);
    conv_t = arrange_conv(last.w + last_taps, ly.taps, last.cin, 1, false);
    w_s.resize(static_cast<std::size_t>(last_taps));
    w_t.resize(w_s.size());
    for (int k = 0; k < last.cin; ++k)
      for (int t = 0; t < ly.taps; ++t) {
        w_s[static_cast<std::size_t>(t * last.cin + k)] = last.w[k * ly.taps + t];
        w_t[static_cast<std::size_t>(t * last.cin + k)] = last.w[last_taps + k * ly.taps + t];
      }
    const auto& ext = ly.extents;
    winograd = ly.policy.winograd && ext.size() == 2 && ly.taps == 9 && ext[0] % 2 == 0 && ext[1] % 2 == 0 && L > 1;
    if (winograd) {
      const int M = ext[0] % 4 == 0 && ext[1] % 4 == 0 ? 4 : 2;
      tiles = winograd_tiles(ext[0], ext[1], M);
      auto transform = [M](const T* w, int cin, int cout) { return winograd_weights(w, cin, cout, M); };
      U.resize(static_cast<std::size_t>(L));
      UT.resize(U.size());
      for (int l = 0; l + 1 < L; ++l) {
        const auto& c = net[static_cast<std::size_t>(l)];
        if (by_winograd(l)) U[static_cast<std::size_t>(l)] = transform(c.w, c.cin, c.cout);
        if (backward && l > 0) {
          // The input-gradient is the convolution with the transposed weights and the window reversed.
          std::vector<T> wt(static_cast<std::size_t>(c.cout * c.cin * 9));
          for (int co = 0; co < c.cout; ++co)
            for (int ci = 0; ci < c.cin; ++ci)
              for (int t = 0; t < 9; ++t)
                wt[static_cast<std::size_t>((ci * c.cout + co) * 9 + t)] = c.w[(co * c.cin + ci) * 9 + 8 - t];
          UT[static_cast<std::size_t>(l)] = transform(wt.data(), c.cout, c.cin);
        }
        wino_size = std::max(wino_size, winograd_scratch_size(M, c.cin, c.cout));
      }
    }
    reflect.assign(static_cast<std::size_t>(round_up(net.front().cout, 8)), T(0));
    for (int c = 0; c < net.front().cout; ++c) reflect[static_cast<std::size_t>(c)] = 2 * net.front().bias[c];
    zeros.assign(static_cast<std::size_t>(round_up(width, 8)), T(0));
  }
  Geo all() const { return Geo{V, ly.taps, ly.nbr, nullptr, V}; }
  Geo updated() const { return Geo{V, ly.taps, ly.nbr, ly.active, ly.Va}; }
  std::int64_t tape_per_sample() const { return affine_tape_size(ly, 1); }
  // Whether conv l (< L - 1) runs by Winograd: a conv of one input, the first, is direct (its Winograd transforms
  // would cost more than its 9 multiply-adds per output).
  bool by_winograd(int l) const { return winograd && ly.net[static_cast<std::size_t>(l)].cin > 1; }
  // conv l of n_in samples of `in` [n_in, V, cin] into sink, by Winograd or the direct kernels; the first conv's
  // input is c, zero at the active sites, and only its other products are computed where the kernels allow.
  void conv(int l, const T* in, std::int64_t n_in, const Sink<T>& sink, T* wino_scratch) const {
    const auto& c = ly.net[static_cast<std::size_t>(l)];
    if (l == 0 && one_input_conv_groups(in, n_in, V, first, arranged.front(), c.bias, sink, isa)) return;
    if (by_winograd(l))
      winograd_conv(in, n_in, V, tiles, c.cin, c.cout, U[static_cast<std::size_t>(l)].data(), c.bias, sink,
                    wino_scratch, isa);
    else
      gather(in, n_in, all(), arranged[static_cast<std::size_t>(l)], c.bias, sink, isa);
  }
};

// The buffers of one block of nb samples. Inference: c [nb, V] and the hidden convs' outputs alternating between
// two buffers; training: the tape's (c [copies, nb, V] with -c, every conv's values before and after the
// activation [copies, nb, V, cout], and u = x_a exp(s) (forward) or the output x_a (inverse)).
template <class T>
struct Pass {
  T* c;
  std::vector<T*> pre, h;  // conv l < L - 1; pre null in inference
  T *s, *e, *t, *u;        // [nb, Va]; u null in inference
  T* scratch;              // 2 nb V C values, not aliasing h[L - 2]
  T* wino;
};

template <class T>
Pass<T> tape_pass(const Plan<T>& P, T* tape, std::int64_t nb, T* scratch, T* wino) {
  Pass<T> B{};
  B.c = tape;
  tape += P.copies * nb * P.V;
  for (int l = 0; l + 1 < P.L; ++l) {
    const auto size = P.copies * nb * P.V * P.ly.net[static_cast<std::size_t>(l)].cout;
    B.pre.push_back(tape);
    B.h.push_back(tape + size);
    tape += 2 * size;
  }
  const auto Va = nb * P.ly.Va;
  B.s = tape;
  B.e = tape + Va;
  B.t = tape + 2 * Va;
  B.u = tape + 3 * Va;
  B.scratch = scratch;
  B.wino = wino;
  return B;
}

// The layer on the block xb [nb, V] in place; logdet[b] += its log|det|.
template <class T>
void forward_block(const Plan<T>& P, T* xb, std::int64_t nb, bool inverse, double* logdet, const Pass<T>& B) {
  const auto& ly = P.ly;
  const Isa isa = P.isa;
  const auto& net = ly.net;
  const std::int64_t V = P.V, Va = ly.Va, C = P.C, L = P.L;
  const bool training = B.u != nullptr;
  std::copy(xb, xb + nb * V, B.c);
  for (std::int64_t b = 0; b < nb; ++b)
    for (std::int64_t i = 0; i < Va; ++i) B.c[b * V + ly.active[i]] = T(0);
  if (training && ly.z2)  // the first conv's input on the mirrored copy, for its backward
    for (std::int64_t k = 0; k < nb * V; ++k) B.c[nb * V + k] = -B.c[k];
  // The hidden layers, on c and with z2 on -c: h [copies, nb, V, C]. The first conv's value on -c is
  // 2 bias - its value on c, so it is not recomputed.
  const T* h = B.c;
  if (L > 1) {
    const std::int64_t half = nb * V * net.front().cout;
    Sink<T> first{&ly.act, B.pre.empty() ? nullptr : B.pre[0], nullptr, B.h[0]};
    if (ly.z2) {
      first.mirror = B.h[0] + half;
      first.reflect = P.reflect.data();
      if (first.pre) first.mirror_pre = first.pre + half;
    }
    P.conv(0, B.c, nb, first, B.wino);
    for (int l = 1; l + 1 < L; ++l)
      P.conv(l, B.h[l - 1], P.copies * nb, Sink<T>{&ly.act, training ? B.pre[l] : nullptr, nullptr, B.h[l]}, B.wino);
    h = B.h[L - 2];
  }
  // The last conv at the active sites: s_raw, t [nb, Va].
  T* s_raw = B.s;
  T* t = B.t;
  const T* bias = net.back().bias;
  const Geo updated = P.updated();
  const Sink<T> to_s{nullptr, nullptr, nullptr, s_raw}, to_t{nullptr, nullptr, nullptr, t};
  if (!ly.z2) {
    T* pairs = B.scratch;  // [nb, Va, 2]
    gather(h, nb, updated, P.arranged.back(), bias, Sink<T>{nullptr, nullptr, nullptr, pairs}, isa);
    for (std::int64_t r = 0; r < nb * Va; ++r) {
      s_raw[r] = pairs[2 * r];
      t[r] = pairs[2 * r + 1];
    }
  } else if (L > 1 && C % 8 == 0) {
    T* pairs = B.scratch;  // [nb, V, 2C]
    half_sum_difference_pairs(h, h + nb * V * C, nb * V, static_cast<int>(C), pairs, isa);
    dual_dot(pairs, nb, updated, static_cast<int>(C), P.w_s.data(), P.w_t.data(), bias[0], s_raw, t, isa);
  } else if (L > 1) {
    T *hs = B.scratch, *hd = B.scratch + nb * V * C;
    half_sum_difference(h, h + nb * V * C, nb * V * C, hs, hd, isa);
    gather(hs, nb, updated, P.conv_s, bias, to_s, isa);
    gather(hd, nb, updated, P.conv_t, static_cast<const T*>(nullptr), to_t, isa);
  } else {  // the net is one conv of c: (h+ + h-) / 2 = 0, (h+ - h-) / 2 = c
    std::fill(s_raw, s_raw + nb * Va, bias[0]);
    gather(h, nb, updated, P.conv_t, static_cast<const T*>(nullptr), to_t, isa);
  }
  // The affine update of the active sites: s = tanh(s_raw) (in place) and its exp.
  tanh_and_exp(s_raw, nb * Va, inverse, s_raw, B.e, isa);
  const T* e = B.e;
  for (std::int64_t b = 0; b < nb; ++b) {
    double sum = 0;
    for (std::int64_t i = 0; i < Va; ++i) {
      const std::int64_t r = b * Va + i;
      T& v = xb[b * V + ly.active[i]];
      const T in = v;
      v = inverse ? (in - t[r]) * e[r] : in * e[r] + t[r];
      if (training) B.u[r] = inverse ? v : in * e[r];
      sum += s_raw[r];
    }
    logdet[b] += inverse ? -sum : sum;
  }
}

// The backward of the affine update of the block: gx = dL/dx through the update (frozen sites pass through; their
// dependence through c is added later) and gs = dL/d(the last conv's outputs): with z2 the s part [nb, V] and the
// t part after it, else [nb, V, 2]; zero off the active sites.
template <class T>
void affine_update_backward(const Plan<T>& P, const T* gy, const double* gld, std::int64_t nb, bool inverse,
                            const Pass<T>& B, T* gx, T* gs) {
  const auto& ly = P.ly;
  const std::int64_t V = P.V, Va = ly.Va, nv = nb * V;
  // The affine update: y_a = x_a e + t, log|det| = sum s (forward) or y_a = (x_a - t) e, -sum s (inverse), with
  // e = exp(+-s), s = tanh(s_raw); frozen sites pass through (their dependence through c is added at the end).
  std::copy(gy, gy + nv, gx);
  std::fill(gs, gs + 2 * nv, T(0));
  for (std::int64_t b = 0; b < nb; ++b) {
    const T gl = gld ? static_cast<T>(gld[b]) : T(0);
    for (std::int64_t i = 0; i < Va; ++i) {
      const std::int64_t r = b * Va + i, site = b * V + ly.active[i];
      const T g = gy[site], e = B.e[r], s = B.s[r];
      gx[site] = g * e;
      const T g_s = (inverse ? -(g * B.u[r] + gl) : g * B.u[r] + gl) * (1 - s * s);
      const T g_t = inverse ? -g * e : g;
      if (ly.z2) {
        gs[site] = g_s;
        gs[nv + site] = g_t;
      } else {
        gs[2 * site] = g_s;
        gs[2 * site + 1] = g_t;
      }
    }
  }
}

// gy, gld -> gx for the block whose forward pass is B, adding the parameter gradients to gparams (when not null).
// The buffers: gs [nb, V, 2] (the last conv's output gradient, zero off the active sites), ga and gb
// [copies, nb, V, width] (gradients of the hidden values), gc [copies, nb, V].
template <class T>
void backward_block(const Plan<T>& P, const T* gy, const double* gld, std::int64_t nb, bool inverse, const Pass<T>& B,
                    T* gx, T* gparams, T* gs, T* ga, T* gb, T* gc) {
  const auto& ly = P.ly;
  const Isa isa = P.isa;
  const auto& net = ly.net;
  const std::int64_t V = P.V, Va = ly.Va, C = P.C;
  const int L = P.L, taps = ly.taps;
  const std::int64_t nv = nb * V;
  const Act* act = &ly.act;
  auto gw = [&](int l) { return gparams ? gparams + P.w_off[static_cast<std::size_t>(l)] : nullptr; };
  auto gbias = [&](int l) {
    const auto& c = net[static_cast<std::size_t>(l)];
    return gparams ? gparams + P.w_off[static_cast<std::size_t>(l)] + c.cout * c.cin * taps : nullptr;
  };
  affine_update_backward(P, gy, gld, nb, inverse, B, gx, gs);
  // The last conv. Its input h [copies, nb, V, C] is the last hidden layer, or c when the net is one conv.
  const T* h = L > 1 ? B.h[static_cast<std::size_t>(L - 2)] : B.c;
  const T* h_pre = L > 1 ? B.pre[static_cast<std::size_t>(L - 2)] : nullptr;
  T* g_h = L > 1 ? ga : gc;  // dL/d(values before the activation) of h, [copies, nb, V, C]
  const auto& last = net.back();
  if (ly.z2) {
    // s_raw = conv_s((h+ + h-) / 2) + bias_s, t = conv_t((h+ - h-) / 2): the gradients of the two one-output convs,
    // then those of h+ and h-. The bias of t cancels: its gradient is zero.
    T *hs = B.scratch, *hd = B.scratch + nv * C;
    half_sum_difference(h, h + nv * C, nv * C, hs, hd, isa);
    T* g_hs = gb;  // [nb, V, C] each, in the second gradient buffer
    T* g_hd = gb + nv * C;
    T t_bias = 0;
    conv_backward<T>(hs, gs, nb, V, taps, ly.nbr, static_cast<int>(C), 1, last.w, nullptr, nullptr, g_hs, gw(L - 1),
                     gbias(L - 1), isa);
    conv_backward<T>(hd, gs + nv, nb, V, taps, ly.nbr, static_cast<int>(C), 1, last.w + C * taps, nullptr, nullptr,
                     g_hd, gparams ? gw(L - 1) + C * taps : nullptr, &t_bias, isa);
    half_sum_difference_backward(g_hs, g_hd, nv * C, h_pre ? act : nullptr, h_pre, h_pre ? h_pre + nv * C : nullptr,
                                 g_h, g_h + nv * C, isa);
  } else {
    conv_backward<T>(h, gs, nb, V, taps, ly.nbr, static_cast<int>(C), 2, last.w, h_pre, act, g_h, gw(L - 1),
                     gbias(L - 1), isa);
  }
  // The hidden convs, from the last to the second: g_h -> the gradient before the previous activation.
  T* cur = g_h;
  T* next = ga == cur ? gb : ga;
  const std::int64_t n2 = P.copies * nb;
  for (int l = L - 2; l >= 1; --l) {
    const auto& c = net[static_cast<std::size_t>(l)];
    const T* in = B.h[static_cast<std::size_t>(l - 1)];
    const T* in_pre = B.pre[static_cast<std::size_t>(l - 1)];
    if (P.winograd) {
      const Sink<T> to_gin{act, nullptr, in_pre, next};
      const T* UT = P.UT[static_cast<std::size_t>(l)].data();
      winograd_conv(cur, n2, V, P.tiles, c.cout, c.cin, UT, P.zeros.data(), to_gin, B.wino, isa);
      if (gparams)
        conv_backward<T>(in, cur, n2, V, taps, ly.nbr, c.cin, c.cout, c.w, nullptr, nullptr, nullptr, gw(l), gbias(l),
                         isa);
    } else {
      conv_backward<T>(in, cur, n2, V, taps, ly.nbr, c.cin, c.cout, c.w, in_pre, act, next, gw(l), gbias(l), isa);
    }
    std::swap(cur, next);
  }
  // The first conv, of c (and -c): the gradient with respect to c.
  if (L > 1) {
    const auto& c0 = net.front();
    conv_backward<T>(B.c, cur, n2, V, taps, ly.nbr, 1, c0.cout, c0.w, nullptr, nullptr, gc, gw(0), gbias(0), isa);
  }
  // c = x off the active sites (and -c = -x there): add dL/dc to the frozen sites' gradient.
  for (std::int64_t b = 0; b < nb; ++b)
    for (std::int64_t k = 0; k < V; ++k) {
      const std::int64_t site = b * V + k;
      gc[site] = ly.z2 ? gc[site] - gc[nv + site] : gc[site];
    }
  for (std::int64_t b = 0; b < nb; ++b) {
    for (std::int64_t i = 0; i < Va; ++i) gc[b * V + ly.active[i]] = T(0);
    for (std::int64_t k = 0; k < V; ++k) gx[b * V + k] += gc[b * V + k];
  }
}

}  // namespace

template <class T>
void affine_coupling(T* x, std::int64_t n, const AffineLayer<T>& layer, bool inverse, double* logdet) {
  const Plan<T> P(layer, false);
  const auto nc = static_cast<std::size_t>(kChunk * P.V),
             n_buf = static_cast<std::size_t>(P.copies * kChunk * P.V * P.width);
  std::vector<T> v_c(nc), v_out(static_cast<std::size_t>(4 * kChunk * layer.Va)), v_a(n_buf), v_b(n_buf),
      v_w(P.wino_size);
  Pass<T> B{};
  B.c = v_c.data();
  for (int l = 0; l + 1 < P.L; ++l) B.h.push_back(l % 2 ? v_b.data() : v_a.data());
  B.s = v_out.data();
  B.t = B.s + kChunk * layer.Va;
  B.e = B.t + kChunk * layer.Va;
  B.u = nullptr;
  B.scratch = P.L > 1 && (P.L - 2) % 2 == 0 ? v_b.data() : v_a.data();  // not the buffer of the last hidden layer
  B.wino = v_w.data();
  for (std::int64_t b0 = 0; b0 < n; b0 += kChunk)
    forward_block(P, x + b0 * P.V, std::min(kChunk, n - b0), inverse, logdet + b0, B);
}

// Training passes: blocks of kChunk samples, block k's tape at k kChunk tape_per_sample.
template <class T>
void affine_coupling_forward(T* x, std::int64_t n, const AffineLayer<T>& layer, bool inverse, double* logdet, T* tape) {
  const Plan<T> P(layer, false);
  std::vector<T> scratch(static_cast<std::size_t>(2 * kChunk * P.V * std::max<std::int64_t>(P.C, 1))),
      wino(P.wino_size);
  for (std::int64_t b0 = 0; b0 < n; b0 += kChunk) {
    const auto nb = std::min(kChunk, n - b0);
    forward_block(P, x + b0 * P.V, nb, inverse, logdet + b0,
                  tape_pass(P, tape + b0 * P.tape_per_sample(), nb, scratch.data(), wino.data()));
  }
}

template <class T>
void affine_coupling_backward(const T* gy, const double* gld, std::int64_t n, const AffineLayer<T>& layer, bool inverse,
                              const T* tape, T* gx, T* gparams) {
  const Plan<T> P(layer, true);
  const auto nv = static_cast<std::size_t>(kChunk * P.V);
  const auto n_g = static_cast<std::size_t>(P.copies) * nv * static_cast<std::size_t>(P.width);
  std::vector<T> scratch(2 * nv * static_cast<std::size_t>(std::max<std::int64_t>(P.C, 1))), wino(P.wino_size),
      gs(2 * nv), ga(std::max(n_g, 2 * nv * static_cast<std::size_t>(P.C))), gb(ga.size()), gc(2 * nv);
  for (std::int64_t b0 = 0; b0 < n; b0 += kChunk) {
    const auto nb = std::min(kChunk, n - b0);
    // The tape is only read: tape_pass hands out writable pointers for the forward pass's sake.
    const auto B = tape_pass(P, const_cast<T*>(tape) + b0 * P.tape_per_sample(), nb, scratch.data(), wino.data());
    backward_block(P, gy + b0 * P.V, gld ? gld + b0 : nullptr, nb, inverse, B, gx + b0 * P.V, gparams, gs.data(),
                   ga.data(), gb.data(), gc.data());
  }
}

#define LATFLOW_INSTANTIATE(T)                                                                                  \
  template void affine_coupling<T>(T*, std::int64_t, const AffineLayer<T>&, bool, double*);                     \
  template std::int64_t affine_tape_size<T>(const AffineLayer<T>&, std::int64_t);                               \
  template std::int64_t affine_param_count<T>(const AffineLayer<T>&);                                           \
  template void affine_coupling_forward<T>(T*, std::int64_t, const AffineLayer<T>&, bool, double*, T*);         \
  template void affine_coupling_backward<T>(const T*, const double*, std::int64_t, const AffineLayer<T>&, bool, \
                                            const T*, T*, T*);
LATFLOW_INSTANTIATE(float)
LATFLOW_INSTANTIATE(double)
#undef LATFLOW_INSTANTIATE

}  // namespace latflow::pconv
