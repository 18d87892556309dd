// SPDX-License-Identifier: MIT
// What the direct, Winograd and affine kernels share (internal to lib/latflow/kernels): the lattice a gather sees,
// where its results go (Sink), weights arranged for a kernel, and the entry points of direct.cpp and winograd.cpp
// that the fused affine coupling (affine.cpp) calls.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "latflow/kernels/lane_math.hpp"
#include "latflow/kernels/periodic_conv.hpp"
#include "latflow/kernels/simd.hpp"

namespace latflow::pconv {

// The lattice seen by a gather: V sites per sample, taps neighbours per site (nbr, see neighbour_table), and the
// sites whose outputs are computed: all V in order (sites null, Vr = V), or the Vr sites listed in `sites` (the
// outputs of sample b then form rows b Vr ... b Vr + Vr - 1, in the order of the list).
struct Geo {
  std::int64_t V;
  int taps;
  const std::int32_t* nbr;
  const std::int32_t* sites;
  std::int64_t Vr;
  std::int64_t site(std::int64_t i) const { return sites ? sites[i] : i; }
};

// Output row r = b Vr + i (sample b, i-th computed site), advanced without divisions (steps of at most Vr).
struct Row {
  std::int64_t r, b, i;
  void advance(std::int64_t k, std::int64_t Vr) {
    r += k;
    i += k;
    while (i >= Vr) {
      i -= Vr;
      ++b;
    }
  }
};

// For SB consecutive rows from row: the start of each row's sample in `in` and its neighbour-table row. SB may
// exceed Vr, so the rows may belong to several samples.
template <int SB, class T>
__attribute__((always_inline)) inline void row_starts(const T* in, Row row, const Geo& g, int kin,
                                                      const T* (&sample)[SB], const std::int32_t* (&ns)[SB]) {
  for (std::int64_t q = 0, b = row.b, i = row.i; q < SB; ++q) {
    sample[q] = in + b * g.V * kin;
    ns[q] = g.nbr + g.site(i) * g.taps;
    if (++i == g.Vr) {
      i = 0;
      ++b;
    }
  }
}

// Where a gather's results go: out = act(v) (act null: out = v), pre = v when pre is not null, or, for the
// input-gradient of a backward pass, out = v * act'(dpre) when dpre is not null (the derivative of the activation
// that produced the conv's input, so the result is the gradient with respect to the values before it). With
// mirror (the Z2 coupling's first conv, whose value on -c is 2 bias - v), also mirror = act(reflect - v) with
// reflect[c] = 2 bias[c] (padded to whole vector blocks), and mirror_pre = reflect - v when not null. v holds
// output channels c0 ... of row o / kout.
template <class T>
struct Sink {
  const Act* act;
  T* pre;
  const T* dpre;
  T* out;
  T* mirror = nullptr;
  const T* reflect = nullptr;
  T* mirror_pre = nullptr;
  // Scalar path: any number of valid lanes, any activation.
  __attribute__((always_inline)) void put(std::int64_t o, std::int64_t c0, const T* res, int valid) const {
    if (pre)
      for (int j = 0; j < valid; ++j) pre[o + j] = res[j];
    if (mirror)
      for (int j = 0; j < valid; ++j) mirror[o + j] = apply(reflect[c0 + j] - res[j]);
    if (mirror_pre)
      for (int j = 0; j < valid; ++j) mirror_pre[o + j] = reflect[c0 + j] - res[j];
    if (dpre)
      for (int j = 0; j < valid; ++j) out[o + j] = res[j] * derivative(dpre[o + j], *act);
    else
      for (int j = 0; j < valid; ++j) out[o + j] = apply(res[j]);
  }
  __attribute__((always_inline)) T apply(T v) const { return act ? activation(v, *act) : v; }
  // Whether it only writes out (no pre, dpre, mirror): what OutSink can stand in for.
  bool only_out() const { return !pre && !dpre && !mirror && !mirror_pre; }
  // A block of W lanes; whole blocks without activation or with leaky_relu stay in vector registers (the per-lane
  // path costs more than the 9 multiply-adds per row of a first conv layer).
  template <int W>
  __attribute__((always_inline)) void put(std::int64_t o, std::int64_t c0, const vec_t<T, W>& v, int valid) const {
    const bool simple = !act || *act == Act::leaky_relu;
    if (valid == W && simple) {
      const auto apply_vec = [&](const vec_t<T, W>& u) {
        return act ? (u > 0 ? u : u * static_cast<T>(kLeakySlope)) : u;
      };
      if (pre) store<W>(pre + o, v);
      if (mirror) store<W>(mirror + o, apply_vec(load<W>(reflect + c0) - v));
      if (mirror_pre) store<W>(mirror_pre + o, load<W>(reflect + c0) - v);
      if (dpre)
        store<W>(out + o, load<W>(dpre + o) > 0 ? v : v * static_cast<T>(kLeakySlope));
      else
        store<W>(out + o, apply_vec(v));
      return;
    }
    T res[W];
    store<W>(res, v);
    put(o, c0, res, valid);
  }
};

// The two sinks most convs write into, with their branches resolved at compile time: out = v, or (Leaky)
// out = leaky_relu(v), by the same operations as Sink's. with_sink passes a Sink in that form when it has nothing
// else to write (a Sink's run-time tests cost as much as the nine multiply-adds per row of a one-input conv).
template <class T, bool Leaky>
struct OutSink {
  T* out;
  __attribute__((always_inline)) T apply(T v) const {
    return Leaky ? (v > 0 ? v : static_cast<T>(kLeakySlope) * v) : v;
  }
  __attribute__((always_inline)) void put(std::int64_t o, std::int64_t, const T* res, int valid) const {
    for (int j = 0; j < valid; ++j) out[o + j] = apply(res[j]);
  }
  template <int W>
  __attribute__((always_inline)) void put(std::int64_t o, std::int64_t c0, const vec_t<T, W>& v, int valid) const {
    if (valid == W) {
      store<W>(out + o, Leaky ? (v > 0 ? v : v * static_cast<T>(kLeakySlope)) : v);
      return;
    }
    T res[W];
    store<W>(res, v);
    put(o, c0, res, std::min(valid, W));  // (valid <= W: the bound quiets a false -Wmaybe-uninitialized)
  }
};
template <class T, class F>
__attribute__((always_inline)) inline void with_sink(const Sink<T>& s, const F& f) {
  if (s.only_out() && !s.act)
    f(OutSink<T, false>{s.out});
  else if (s.only_out() && *s.act == Act::leaky_relu)
    f(OutSink<T, true>{s.out});
  else
    f(s);
}

// out[b, s, :] = act(bias + sum_t sum_k in[b, nbr(s, t), k] M[t, k, :]) for b in [0, n), with M [taps, kin, koutP]
// (koutP = kout rounded up to W, padding zero) and nbr(s, t) = nbr[s * taps + t], or with mirrored = true
// nbr[s * taps + taps - 1 - t] (the site that sees s at tap t: the transpose of the periodic convolution); the
// value before the activation goes to pre when pre is not null. Rows (b, s) are done SB at a time: SB independent

// A conv's weights (or, mirrored, those of its transpose) arranged for the kernel that will run it: lanes over the
// output channels (W = 4 or 8, gather_rows), or for at most 4 outputs and inputs a multiple of 8 lanes over the
// inputs (KO = 1, 2 or 4 outputs, dot_rows).
template <class T>
struct Arranged {
  bool mirrored;
  int kin, kout, W, KO;  // KO = 0: channel lanes
  std::vector<T> m;
};
template <class T>
Arranged<T> arrange_conv(const T* w, int taps, int cin, int cout, bool mirrored);
// The convolution arranged in a, of n samples of in, into sink (direct.cpp).
template <class T>
void gather(const T* in, std::int64_t n, const Geo& g, const Arranged<T>& a, const T* bias, const Sink<T>& sink,
            Isa isa);

// A one-input conv whose input is zero at known sites (an affine layer's first conv: c = 0 where the layer
// updates), as groups of output sites whose windows see nonzero inputs at the same taps. Skipping the products of
// an exact zero input leaves every sum unchanged (x + 0 w = x for finite w; only the sign of an all-zero sum can
// differ): without FMA the dense gather's results bit for bit, with it up to where the compiler contracts the
// multiply-adds (tests/test_kernels.cpp); on a checkerboard a 3x3 window sees 5 or 4 nonzero inputs instead of 9.
struct TapGroup {
  std::vector<int> taps;            // ascending window indices
  std::vector<std::int32_t> sites;  // the output sites
  std::vector<std::int32_t> nbr;    // [sites][taps]: the input site of each product
};
// The groups of g (every site, g.sites null) when the input is zero at the n_zero sites `zero`.
std::vector<TapGroup> tap_groups(const Geo& g, const std::int32_t* zero, std::int64_t n_zero);
// gather(in, n, g, a, bias, sink) for a of one input (kin 1, W 8, not mirrored, at most kOneInputTaps taps) and an
// input that is zero off the groups' taps (direct.cpp). Returns false (and does nothing) for any other a.
template <class T>
bool one_input_conv_groups(const T* in, std::int64_t n, std::int64_t V, const std::vector<TapGroup>& groups,
                           const Arranged<T>& a, const T* bias, const Sink<T>& sink, Isa isa);

// Sites of the MxM output tiles of an L0 x L1 lattice (row-major) and of the (M+2)x(M+2) input blocks around them
// (winograd.cpp).
struct WinogradTiles {
  int M = 0;
  std::int64_t per_sample = 0;
  std::vector<std::int32_t> in, out;  // [tile][(M+2)^2], [tile][M^2]
};
WinogradTiles winograd_tiles(std::int64_t L0, std::int64_t L1, int M);
// Weights [cout, cin, 3, 3] -> U [(M+2)^2, cinP, coutP] = G g G^T per (cin, cout), zero-padded to whole blocks of
// 8; computed in double, rounded once.
template <class T>
std::vector<T> winograd_weights(const T* w, int cin, int cout, int M);
// out = sink(conv(in) + bias) at every site for n samples [n, V, cin], with U from winograd_weights; scratch holds
// winograd_scratch_size(M, cin, cout) values.
template <class T>
void winograd_conv(const T* in, std::int64_t n, std::int64_t V, const WinogradTiles& tiles, int cin, int cout,
                   const T* U, const T* bias, const Sink<T>& sink, T* scratch, Isa isa);
std::size_t winograd_scratch_size(int M, int cin, int cout);

}  // namespace latflow::pconv
