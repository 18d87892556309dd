// SPDX-License-Identifier: MIT
#include "latflow/flows/periodic_conv.hpp"

// The vector-extension helpers below pass AVX-sized values between inlined functions; only the ABI of such calls
// across translation units would change with the target, and there are none.
#pragma GCC diagnostic ignored "-Wpsabi"

#include <cmath>
#include <algorithm>
#include <cstring>
#include <type_traits>

namespace latflow::pconv {

std::vector<std::int32_t> neighbour_table(const std::vector<std::int64_t>& extents, int kernel) {
  const int d = static_cast<int>(extents.size());
  std::int64_t V = 1, taps = 1;
  for (auto L : extents) V *= L;
  for (int mu = 0; mu < d; ++mu) taps *= kernel;
  const int half = kernel / 2;
  std::vector<std::int32_t> nbr(static_cast<std::size_t>(V * taps));
  std::vector<std::int64_t> x(d), a(d);
  for (std::int64_t s = 0; s < V; ++s) {
    for (int mu = d - 1, r = static_cast<int>(s); mu >= 0; --mu) {
      x[mu] = r % extents[mu];
      r /= static_cast<int>(extents[mu]);
    }
    for (std::int64_t t = 0; t < taps; ++t) {
      for (int mu = d - 1, r = static_cast<int>(t); mu >= 0; --mu) {
        a[mu] = r % kernel;
        r /= kernel;
      }
      std::int64_t idx = 0;
      for (int mu = 0; mu < d; ++mu) {
        const auto L = extents[mu];
        idx = idx * L + (((x[mu] + a[mu] - half) % L) + L) % L;
      }
      nbr[s * taps + t] = static_cast<std::int32_t>(idx);
    }
  }
  return nbr;
}

// The kernels are compiled for AVX2+FMA and for the baseline; the loader picks the best the CPU has.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LATFLOW_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LATFLOW_CLONES
#endif

namespace {

// Channels are processed in blocks of W lanes held in one vector register: W = 8 (an AVX register of floats),
// or W = 4 when a conv has at most 4 output channels (the last layer of most nets), so that little work is done
// on padding lanes.
int lanes(int channels) { return channels <= 4 ? 4 : 8; }
std::int64_t round_up(std::int64_t c, int W) { return (c + W - 1) / W * W; }

// W lanes as one value (GCC/Clang vector extension): the compiler keeps it in a vector register, where a plain
// array of W accumulators was kept in W scalar registers. Loads and stores go through memcpy (unaligned).
template <class T, int W>
struct Block {
  typedef T type __attribute__((vector_size(sizeof(T) * W)));
};
template <class T, int W>
using vec_t = typename Block<T, W>::type;
template <int W, class T>
__attribute__((always_inline)) inline vec_t<T, W> load(const T* p) {
  vec_t<T, W> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <int W, class T>
__attribute__((always_inline)) inline void store(T* p, const vec_t<T, W>& v) {
  std::memcpy(p, &v, sizeof(v));
}

constexpr double kLeakySlope = 0.01;  // LibTorch's default negative slope, as in ConvNetImpl's torch path

template <class T>
__attribute__((always_inline)) inline T activation(T v, Act act) {
  switch (act) {
    case Act::leaky_relu: return v > 0 ? v : static_cast<T>(kLeakySlope) * v;
    case Act::tanh: return std::tanh(v);
    case Act::silu: return v / (1 + std::exp(-v));
  }
  return v;
}

template <class T>
__attribute__((always_inline)) inline T derivative(T pre, Act act) {
  switch (act) {
    case Act::leaky_relu: return pre > 0 ? T(1) : static_cast<T>(kLeakySlope);
    case Act::tanh: {
      const T th = std::tanh(pre);
      return 1 - th * th;
    }
    case Act::silu: {
      const T sg = 1 / (1 + std::exp(-pre));
      return sg * (1 + pre * (1 - sg));
    }
  }
  return T(1);
}

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

// out[b, s, :] = act(bias + sum_t sum_k in[b, nbr(s, t), k] M[t, k, :]) for b in [0, n), with M [taps, kin, koutP]
// (koutP = kout rounded up to W, padding zero) and nbr(s, t) = nbr[s * taps + t], or with mirrored = true
// nbr[s * taps + taps - 1 - t] (the site that sees s at tap t: the transpose of the periodic convolution); the
// value before the activation goes to pre when pre is not null. Rows (b, s) are done SB at a time: SB independent
// accumulators hide the FMA latency and share each load of M (one accumulator alone is latency-bound, ~4x slower).
template <class T, int W, int SB>
__attribute__((always_inline)) inline void gather_rows(const T* in, Row row, const Geo& g, bool mirrored, int kin,
                                                       const T* M, int kout, const T* bias, const Sink<T>& sink) {
  using V_t = vec_t<T, W>;
  const int taps = g.taps;
  const std::int64_t koutP = round_up(kout, W);
  const T* base[SB];
  const std::int32_t* ns[SB];
  row_starts<SB>(in, row, g, kin, base, ns);
  for (std::int64_t c0 = 0; c0 < koutP; c0 += W) {
    T init[W];
    for (int j = 0; j < W; ++j) init[j] = (bias && c0 + j < kout) ? bias[c0 + j] : T(0);
    V_t acc[SB];
    for (int q = 0; q < SB; ++q) acc[q] = load<W>(init);
    for (int t = 0; t < taps; ++t) {
      const int tt = mirrored ? taps - 1 - t : t;
      const T* src[SB];
      for (int q = 0; q < SB; ++q) src[q] = base[q] + static_cast<std::int64_t>(ns[q][tt]) * kin;
      const T* Mt = M + static_cast<std::int64_t>(t) * kin * koutP + c0;
      for (int k = 0; k < kin; ++k) {
        const V_t m = load<W>(Mt + k * koutP);
        for (int q = 0; q < SB; ++q) acc[q] += src[q][k] * m;
      }
    }
    const int valid = static_cast<int>(std::min<std::int64_t>(W, kout - c0));
    for (int q = 0; q < SB; ++q) sink.template put<W>((row.r + q) * kout + c0, c0, acc[q], valid);
  }
}

// The same gather for few outputs (kout <= 4) and kin a multiple of 8: lanes run over the input channels instead
// (a contiguous load of in[b, nbr(s, t), k : k + 8] against a row of Md [taps, KO, kin]) and each output is a
// horizontal sum at the end; this does kout instead of 8 multiply-adds per (tap, 8 inputs) -- the last conv of a
// net (2 outputs) and the input-gradient of the first (1 output) cost 4-8x less than in gather_conv.
template <class T, int KO, int SB>
__attribute__((always_inline)) inline void dot_rows(const T* in, Row row, const Geo& g, bool mirrored, int kin,
                                                    const T* Md, int kout, const T* bias, const Sink<T>& sink) {
  using V_t = vec_t<T, 8>;
  const int taps = g.taps;
  const T* src0[SB];
  const std::int32_t* ns[SB];
  row_starts<SB>(in, row, g, kin, src0, ns);
  V_t acc[SB][KO];
  for (int q = 0; q < SB; ++q)
    for (int c = 0; c < KO; ++c) acc[q][c] = V_t{};
  for (int t = 0; t < taps; ++t) {
    const int tt = mirrored ? taps - 1 - t : t;
    const T* src[SB];
    for (int q = 0; q < SB; ++q) src[q] = src0[q] + static_cast<std::int64_t>(ns[q][tt]) * kin;
    for (int k0 = 0; k0 < kin; k0 += 8) {
      V_t m[KO];
      for (int c = 0; c < KO; ++c) m[c] = load<8>(Md + (static_cast<std::int64_t>(t) * KO + c) * kin + k0);
      for (int q = 0; q < SB; ++q) {
        const V_t v = load<8>(src[q] + k0);
        for (int c = 0; c < KO; ++c) acc[q][c] += v * m[c];
      }
    }
  }
  for (int q = 0; q < SB; ++q) {
    T res[KO];
    for (int c = 0; c < KO; ++c) {
      T sum = bias && c < kout ? bias[c] : T(0);
      for (int j = 0; j < 8; ++j) sum += acc[q][c][j];
      res[c] = sum;
    }
    sink.put((row.r + q) * kout, 0, res, kout);
  }
}

// The two row kernels as policies of one driver: SB rows at a time, then the remainder one by one.
template <class T, int W>
struct ChannelLanes {
  static constexpr int SB = 8;  // 8 accumulators: 8 of the 16 AVX registers (16 for doubles at W = 8: some spill)
  template <int S>
  __attribute__((always_inline)) static void rows(const T* in, Row row, const Geo& g, bool mirrored, int kin,
                                                  const T* M, int kout, const T* bias, const Sink<T>& sink) {
    gather_rows<T, W, S>(in, row, g, mirrored, kin, M, kout, bias, sink);
  }
};
template <class T, int KO>
struct InputLanes {
  static constexpr int SB = 8 / KO;  // SB x KO = 8 accumulators
  template <int S>
  __attribute__((always_inline)) static void rows(const T* in, Row row, const Geo& g, bool mirrored, int kin,
                                                  const T* M, int kout, const T* bias, const Sink<T>& sink) {
    dot_rows<T, KO, S>(in, row, g, mirrored, kin, M, kout, bias, sink);
  }
};

template <class T, class Kernel>
LATFLOW_CLONES void gather_conv(const T* in, std::int64_t n, Geo g, bool mirrored, int kin, const T* M, int kout,
                                const T* bias, Sink<T> sink) {
  constexpr int SB = Kernel::SB;
  const std::int64_t rows = n * g.Vr;
  Row row{0, 0, 0};
  for (; row.r + SB <= rows; row.advance(SB, g.Vr))
    Kernel::template rows<SB>(in, row, g, mirrored, kin, M, kout, bias, sink);
  for (; row.r < rows; row.advance(1, g.Vr)) Kernel::template rows<1>(in, row, g, mirrored, kin, M, kout, bias, sink);
}

// gw[t, ci0 + c, c0 : c0 + W] += sum_{b, s} in[b, nbr(s, t), ci0 + c] gP[b, s, c0 : c0 + W] for c < CB, with gP the
// output gradient padded to coutP channels and gw [taps, cin, coutP]. CB x RB accumulators (RB = 8 / CB
// consecutive rows summed separately) stay in registers for the whole sweep over the rows and hide the FMA latency.
template <class T, int W, int CB>
__attribute__((always_inline)) inline void weight_grad_block(const T* in, const T* gP, std::int64_t n,
                                                             std::int64_t V, int taps, const std::int32_t* nbr,
                                                             int cin, int ci0, std::int64_t coutP, int t,
                                                             std::int64_t c0, T* gw) {
  using V_t = vec_t<T, W>;
  constexpr int RB = 8 / CB;
  V_t acc[CB][RB];
  for (int c = 0; c < CB; ++c)
    for (int q = 0; q < RB; ++q) acc[c][q] = V_t{};
  for (std::int64_t b = 0; b < n; ++b) {
    const T* inb = in + b * V * cin + ci0;
    const T* gb = gP + b * V * coutP + c0;
    std::int64_t s = 0;
    for (; s + RB <= V; s += RB) {
      for (int q = 0; q < RB; ++q) {
        const T* x = inb + static_cast<std::int64_t>(nbr[(s + q) * taps + t]) * cin;
        const V_t g = load<W>(gb + (s + q) * coutP);
        for (int c = 0; c < CB; ++c) acc[c][q] += x[c] * g;
      }
    }
    for (; s < V; ++s) {
      const T* x = inb + static_cast<std::int64_t>(nbr[s * taps + t]) * cin;
      const V_t g = load<W>(gb + s * coutP);
      for (int c = 0; c < CB; ++c) acc[c][0] += x[c] * g;
    }
  }
  for (int c = 0; c < CB; ++c) {
    V_t sum = acc[c][0];
    for (int q = 1; q < RB; ++q) sum += acc[c][q];
    T* row = gw + (static_cast<std::int64_t>(t) * cin + ci0 + c) * coutP + c0;
    store<W>(row, load<W>(row) + sum);
  }
}

template <class T, int W>
LATFLOW_CLONES void weight_grad(const T* in, const T* gP, std::int64_t n, std::int64_t V, int taps,
                                const std::int32_t* nbr, int cin, std::int64_t coutP, T* gw) {
  for (std::int64_t c0 = 0; c0 < coutP; c0 += W)
    for (int t = 0; t < taps; ++t) {
      int ci = 0;
      for (; ci + 8 <= cin; ci += 8) weight_grad_block<T, W, 8>(in, gP, n, V, taps, nbr, cin, ci, coutP, t, c0, gw);
      for (; ci + 4 <= cin; ci += 4) weight_grad_block<T, W, 4>(in, gP, n, V, taps, nbr, cin, ci, coutP, t, c0, gw);
      for (; ci + 2 <= cin; ci += 2) weight_grad_block<T, W, 2>(in, gP, n, V, taps, nbr, cin, ci, coutP, t, c0, gw);
      for (; ci < cin; ++ci) weight_grad_block<T, W, 1>(in, gP, n, V, taps, nbr, cin, ci, coutP, t, c0, gw);
    }
}

// The weight gradient for few outputs (KO >= cout, cin a multiple of 8), lanes over the input channels:
// gwd[t, c, k0 : k0 + 8] = sum_{b, s} in[b, nbr(s, t), k0 : k0 + 8] gP[b, s, c], gP [rows, KO] zero-padded,
// gwd [taps, KO, cin]; RB consecutive rows in separate accumulators.
template <class T, int KO>
LATFLOW_CLONES void weight_grad_dot(const T* in, const T* gP, std::int64_t n, std::int64_t V, int taps,
                                    const std::int32_t* nbr, int cin, T* gwd) {
  using V_t = vec_t<T, 8>;
  constexpr int RB = 8 / KO;
  for (int t = 0; t < taps; ++t)
    for (int k0 = 0; k0 < cin; k0 += 8) {
      V_t acc[RB][KO];
      for (int q = 0; q < RB; ++q)
        for (int c = 0; c < KO; ++c) acc[q][c] = V_t{};
      for (std::int64_t b = 0; b < n; ++b) {
        const T* inb = in + b * V * cin + k0;
        const T* gb = gP + b * V * KO;
        std::int64_t s = 0;
        for (; s + RB <= V; s += RB)
          for (int q = 0; q < RB; ++q) {
            const V_t v = load<8>(inb + static_cast<std::int64_t>(nbr[(s + q) * taps + t]) * cin);
            for (int c = 0; c < KO; ++c) acc[q][c] += v * gb[(s + q) * KO + c];
          }
        for (; s < V; ++s) {
          const V_t v = load<8>(inb + static_cast<std::int64_t>(nbr[s * taps + t]) * cin);
          for (int c = 0; c < KO; ++c) acc[0][c] += v * gb[s * KO + c];
        }
      }
      for (int c = 0; c < KO; ++c) {
        V_t sum = acc[0][c];
        for (int q = 1; q < RB; ++q) sum += acc[q][c];
        store<8>(gwd + (static_cast<std::int64_t>(t) * KO + c) * cin + k0, sum);
      }
    }
}

// Weights [cout, cin, taps] (LibTorch's layout, flattened) -> [taps, cin, coutP], zero-padded to W lanes; with
// transpose, -> [taps, cout, cinP] (the weights of the transposed convolution).
template <class T>
std::vector<T> arrange(const T* w, int taps, int cin, int cout, bool transpose, int W) {
  const int rows = transpose ? cout : cin, cols = transpose ? cin : cout;
  const std::int64_t colsP = round_up(cols, W);
  std::vector<T> m(static_cast<std::size_t>(taps * rows * colsP), T(0));
  for (int co = 0; co < cout; ++co)
    for (int ci = 0; ci < cin; ++ci)
      for (int t = 0; t < taps; ++t) {
        const T v = w[(static_cast<std::int64_t>(co) * cin + ci) * taps + t];
        const int r = transpose ? co : ci, c = transpose ? ci : co;
        m[static_cast<std::size_t>((static_cast<std::int64_t>(t) * rows + r) * colsP + c)] = v;
      }
  return m;
}

// Weights [cout, cin, taps] -> Md [taps, KO, kin] for dot_conv (rows c >= kout zero): the rows are the output
// channels (ci of the transposed convolution when transpose) and the columns the inputs.
template <class T>
std::vector<T> arrange_dot(const T* w, int taps, int cin, int cout, bool transpose, int KO) {
  const int kin = transpose ? cout : cin;
  std::vector<T> m(static_cast<std::size_t>(taps * KO * kin), T(0));
  for (int co = 0; co < cout; ++co)
    for (int ci = 0; ci < cin; ++ci)
      for (int t = 0; t < taps; ++t) {
        const int c = transpose ? ci : co, k = transpose ? co : ci;
        m[static_cast<std::size_t>((static_cast<std::int64_t>(t) * KO + c) * kin + k)] =
            w[(static_cast<std::int64_t>(co) * cin + ci) * taps + t];
      }
  return m;
}

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
Arranged<T> arrange_conv(const T* w, int taps, int cin, int cout, bool mirrored) {
  Arranged<T> a{mirrored, mirrored ? cout : cin, mirrored ? cin : cout, 0, 0, {}};
  if (a.kout <= 4 && a.kin % 8 == 0) {
    a.KO = a.kout <= 1 ? 1 : a.kout <= 2 ? 2 : 4;
    a.m = arrange_dot(w, taps, cin, cout, mirrored, a.KO);
  } else {
    a.W = lanes(a.kout);
    a.m = arrange(w, taps, cin, cout, mirrored, a.W);
  }
  return a;
}

// The convolution arranged in a, of n samples of in, into sink.
template <class T>
void gather(const T* in, std::int64_t n, const Geo& g, const Arranged<T>& a, const T* bias, const Sink<T>& sink) {
  const T* m = a.m.data();
  if (a.KO == 1) gather_conv<T, InputLanes<T, 1>>(in, n, g, a.mirrored, a.kin, m, a.kout, bias, sink);
  if (a.KO == 2) gather_conv<T, InputLanes<T, 2>>(in, n, g, a.mirrored, a.kin, m, a.kout, bias, sink);
  if (a.KO == 4) gather_conv<T, InputLanes<T, 4>>(in, n, g, a.mirrored, a.kin, m, a.kout, bias, sink);
  if (a.KO) return;
  if (a.W == 4)
    gather_conv<T, ChannelLanes<T, 4>>(in, n, g, a.mirrored, a.kin, m, a.kout, bias, sink);
  else
    gather_conv<T, ChannelLanes<T, 8>>(in, n, g, a.mirrored, a.kin, m, a.kout, bias, sink);
}

}  // namespace

template <class T>
void conv_forward(const T* in, std::int64_t n, std::int64_t V, int taps, const std::int32_t* nbr, int cin, int cout,
                  const T* w, const T* bias, const Act* act, T* pre, T* out) {
  gather(in, n, Geo{V, taps, nbr, nullptr, V}, arrange_conv(w, taps, cin, cout, false), bias,
         Sink<T>{act, pre, nullptr, out});
}

template <class T>
void conv_forward_at(const T* in, std::int64_t n, std::int64_t V, int taps, const std::int32_t* nbr,
                     const std::int32_t* sites, std::int64_t Vr, int cin, int cout, const T* w, const T* bias,
                     T* out) {
  gather(in, n, Geo{V, taps, nbr, sites, Vr}, arrange_conv(w, taps, cin, cout, false), bias,
         Sink<T>{nullptr, nullptr, nullptr, out});
}

template <class T>
void conv_backward(const T* in, const T* gpre, std::int64_t n, std::int64_t V, int taps, const std::int32_t* nbr,
                   int cin, int cout, const T* w, const T* in_pre, const Act* in_act, T* gin, T* gw, T* gb) {
  if (gin)
    gather(gpre, n, Geo{V, taps, nbr, nullptr, V}, arrange_conv(w, taps, cin, cout, true),
           static_cast<const T*>(nullptr), Sink<T>{in_pre ? in_act : nullptr, nullptr, in_pre, gin});
  if (!gw) return;  // the parameters are constants here (path-gradient training: log q at fixed weights)
  const bool dot = cout <= 4 && cin % 8 == 0;
  const int W = dot ? (cout <= 1 ? 1 : cout <= 2 ? 2 : 4) : lanes(cout);  // padded width of gP
  const std::int64_t coutP = round_up(cout, W), rows = n * V;
  std::vector<T> gP(static_cast<std::size_t>(rows * coutP), T(0));
  std::vector<double> bias_sum(static_cast<std::size_t>(cout), 0.0);  // (float sums of 10^3 terms lose digits)
  for (std::int64_t r = 0; r < rows; ++r)
    for (int c = 0; c < cout; ++c) {
      gP[static_cast<std::size_t>(r * coutP + c)] = gpre[r * cout + c];
      bias_sum[static_cast<std::size_t>(c)] += gpre[r * cout + c];
    }
  for (int c = 0; c < cout; ++c) gb[c] += static_cast<T>(bias_sum[static_cast<std::size_t>(c)]);
  std::vector<T> gwp(static_cast<std::size_t>(taps * cin * coutP), T(0));
  if (dot) {  // gwp [taps, coutP, cin]
    if (W == 1) weight_grad_dot<T, 1>(in, gP.data(), n, V, taps, nbr, cin, gwp.data());
    if (W == 2) weight_grad_dot<T, 2>(in, gP.data(), n, V, taps, nbr, cin, gwp.data());
    if (W == 4) weight_grad_dot<T, 4>(in, gP.data(), n, V, taps, nbr, cin, gwp.data());
    for (int co = 0; co < cout; ++co)
      for (int ci = 0; ci < cin; ++ci)
        for (int t = 0; t < taps; ++t)
          gw[(static_cast<std::int64_t>(co) * cin + ci) * taps + t] +=
              gwp[static_cast<std::size_t>((static_cast<std::int64_t>(t) * coutP + co) * cin + ci)];
    return;
  }
  if (W == 4)  // gwp [taps, cin, coutP]
    weight_grad<T, 4>(in, gP.data(), n, V, taps, nbr, cin, coutP, gwp.data());
  else
    weight_grad<T, 8>(in, gP.data(), n, V, taps, nbr, cin, coutP, gwp.data());
  for (int co = 0; co < cout; ++co)
    for (int ci = 0; ci < cin; ++ci)
      for (int t = 0; t < taps; ++t)
        gw[(static_cast<std::int64_t>(co) * cin + ci) * taps + t] +=
            gwp[static_cast<std::size_t>((static_cast<std::int64_t>(t) * cin + ci) * coutP + co)];
}

// ---------------------------------------------------------------------------------------------------------------
// Winograd's minimal filtering F(MxM, 3x3) (Lavin & Gray 2015, arXiv:1509.09308) for the hidden convs of 2D nets
// with 3x3 kernels, in inference: each MxM block of output sites is A^T [(G g G^T) . (B^T d B)] A over the
// (M+2)x(M+2) block d of input sites around it, (M+2)^2 multiply-adds per input and output channel instead of
// 9 M^2: 2.25x fewer for M = 2 (lattice extents even), 4x fewer for M = 4 (extents multiples of 4). The
// transforms' entries are small integers and fractions with short expansions; the results agree with the direct
// convolution to rounding (tests/test_flows.cpp, float64).
template <int M>
struct Winograd;
template <>
struct Winograd<2> {  // interpolation points 0, 1, -1, infinity
  static constexpr double BT[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
  static constexpr double G[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
  static constexpr double AT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
};
template <>
struct Winograd<4> {  // interpolation points 0, 1, -1, 2, -2, infinity
  static constexpr double BT[6][6] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
                                      {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
  static constexpr double G[6][3] = {{0.25, 0, 0},        {-1. / 6, -1. / 6, -1. / 6}, {-1. / 6, 1. / 6, -1. / 6},
                                     {1. / 24, 1. / 12, 1. / 6}, {1. / 24, -1. / 12, 1. / 6}, {0, 0, 1}};
  static constexpr double AT[4][6] = {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};
};

// Sites of the MxM output tiles of an L0 x L1 lattice (row-major) and of the (M+2)x(M+2) input blocks around them.
struct WinogradTiles {
  int M = 0;
  std::int64_t per_sample = 0;
  std::vector<std::int32_t> in, out;  // [tile][(M+2)^2], [tile][M^2]
};

WinogradTiles winograd_tiles(std::int64_t L0, std::int64_t L1, int M) {
  WinogradTiles w;
  w.M = M;
  w.per_sample = (L0 / M) * (L1 / M);
  for (std::int64_t I = 0; I < L0 / M; ++I)
    for (std::int64_t J = 0; J < L1 / M; ++J) {
      for (std::int64_t u = 0; u < M + 2; ++u)
        for (std::int64_t v = 0; v < M + 2; ++v)
          w.in.push_back(static_cast<std::int32_t>(((M * I - 1 + u + L0) % L0) * L1 + (M * J - 1 + v + L1) % L1));
      for (std::int64_t i = 0; i < M; ++i)
        for (std::int64_t j = 0; j < M; ++j) w.out.push_back(static_cast<std::int32_t>((M * I + i) * L1 + M * J + j));
    }
  return w;
}

// Lanes k0 ... k0 + W - 1 of a row of `cols` values, zero beyond cols.
template <int W, class T>
__attribute__((always_inline)) inline vec_t<T, W> load_lanes(const T* row, std::int64_t k0, std::int64_t cols) {
  if (k0 + W <= cols) return load<W>(row + k0);
  if (k0 + 1 == cols) {  // one channel (a first conv's input)
    vec_t<T, W> v{};
    v[0] = row[k0];
    return v;
  }
  T tmp[W] = {};
  for (std::int64_t k = k0; k < cols; ++k) tmp[k - k0] = row[k];
  return load<W>(tmp);
}

// sum_a c[a] x[a * stride] for a constant row c (inlined and unrolled, the zero and unit coefficients fold away).
template <int N, class V, class T>
__attribute__((always_inline)) inline V combine(const double (&c)[N], const V* x, int stride) {
  V acc{};
  bool first = true;
#pragma GCC unroll 8
  for (int a = 0; a < N; ++a) {
    if (c[a] == 0) continue;
    const V term = c[a] == 1 ? x[a * stride] : c[a] == -1 ? -x[a * stride] : static_cast<T>(c[a]) * x[a * stride];
    acc = first ? term : acc + term;
    first = false;
  }
  return acc;
}

// The 1D transforms y = B^T x and y = A^T x (x[a] = x[a * stride], y[i] = y[i * ostride]). For M = 4 written
// with the shared sums that the matrices' structure allows (14 instead of ~25 operations for B^T, 10 instead of
// ~21 for A^T; the compiler may not find them, as it may not reassociate floating-point sums); otherwise generic.
template <int M, class V, class T>
__attribute__((always_inline)) inline void transform_BT(const V* x, int stride, V* y, int ostride) {
  if constexpr (M == 4) {
    const V x0 = x[0], x1 = x[stride], x2 = x[2 * stride], x3 = x[3 * stride], x4 = x[4 * stride],
            x5 = x[5 * stride];
    const V s12 = x1 + x2, s34 = x3 + x4, d12 = x1 - x2, d43 = x4 - x3, d42 = x4 - x2, d31 = x3 - x1;
    y[0] = T(4) * x0 - T(5) * x2 + x4;
    y[ostride] = s34 - T(4) * s12;
    y[2 * ostride] = d43 + T(4) * d12;
    y[3 * ostride] = d42 + T(2) * d31;
    y[4 * ostride] = d42 - T(2) * d31;
    y[5 * ostride] = T(4) * x1 - T(5) * x3 + x5;
  } else {
#pragma GCC unroll 8
    for (int u = 0; u < M + 2; ++u) y[u * ostride] = combine<M + 2, V, T>(Winograd<M>::BT[u], x, stride);
  }
}

template <int M, class V, class T>
__attribute__((always_inline)) inline void transform_AT(const V* x, int stride, V* y, int ostride) {
  if constexpr (M == 4) {
    const V x0 = x[0], x1 = x[stride], x2 = x[2 * stride], x3 = x[3 * stride], x4 = x[4 * stride],
            x5 = x[5 * stride];
    const V s12 = x1 + x2, s34 = x3 + x4, d12 = x1 - x2, d34 = x3 - x4;
    y[0] = x0 + s12 + s34;
    y[ostride] = d12 + T(2) * d34;
    y[2 * ostride] = s12 + T(4) * s34;
    y[3 * ostride] = d12 + T(8) * d34 + x5;
  } else {
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) y[i * ostride] = combine<M + 2, V, T>(Winograd<M>::AT[i], x, stride);
  }
}

// Weights [cout, cin, 3, 3] -> U [(M+2)^2, cinP, coutP] = G g G^T per (cin, cout), zero-padded to whole blocks of
// 8; computed in double, rounded once.
template <class T, int M>
std::vector<T> winograd_weights(const T* w, int cin, int cout) {
  constexpr int A = M + 2;
  const auto& G = Winograd<M>::G;
  const std::int64_t cinP = round_up(cin, 8), coutP = round_up(cout, 8);
  std::vector<T> U(static_cast<std::size_t>(A * A * cinP * coutP), T(0));
  for (int co = 0; co < cout; ++co)
    for (int ci = 0; ci < cin; ++ci) {
      const T* g = w + (static_cast<std::int64_t>(co) * cin + ci) * 9;
      double Gg[A][3] = {};
      for (int u = 0; u < A; ++u)
        for (int b = 0; b < 3; ++b)
          for (int a = 0; a < 3; ++a) Gg[u][b] += G[u][a] * static_cast<double>(g[a * 3 + b]);
      for (int u = 0; u < A; ++u)
        for (int v = 0; v < A; ++v) {
          double x = 0;
          for (int b = 0; b < 3; ++b) x += Gg[u][b] * G[v][b];
          U[static_cast<std::size_t>(((u * A + v) * cinP + ci) * coutP + co)] = static_cast<T>(x);
        }
    }
  return U;
}

// out = sink(conv(in) + bias) at every site for n samples [n, V, cin], with U from winograd_weights<T, M>. Tiles
// are done kTB at a time: their transformed inputs [(M+2)^2][kTB][cinP] and products stay in the L1 cache, and
// each weight vector loaded serves kTB tiles (kTB accumulators hide the FMA latency).
template <class T, int M>
LATFLOW_CLONES void winograd_conv(const T* in, std::int64_t n, std::int64_t V, const WinogradTiles& tiles, int cin,
                                  int cout, const T* U, const T* bias, Sink<T> sink, T* scratch) {
  constexpr int W = 8, kTB = 8, A = M + 2;
  using V_t = vec_t<T, W>;
  const std::int64_t cinP = round_up(cin, W), coutP = round_up(cout, W);
  const std::int64_t total = n * tiles.per_sample;
  T* Vt = scratch;                       // [A * A][kTB][cinP]
  T* Mt = scratch + A * A * kTB * cinP;  // [A * A][kTB][coutP]
  for (std::int64_t t0 = 0; t0 < total; t0 += kTB) {
    const int nt = static_cast<int>(std::min<std::int64_t>(kTB, total - t0));
    // Input transform B^T d B of each tile, 8 channels at a time.
    for (int q = 0; q < nt; ++q) {
      const std::int64_t tile = t0 + q, b = tile / tiles.per_sample, tl = tile % tiles.per_sample;
      const T* sample = in + b * V * cin;
      const std::int32_t* sites = tiles.in.data() + tl * A * A;
      for (std::int64_t k0 = 0; k0 < cinP; k0 += W) {
        V_t d[A][A], e[A][A], f[A][A];
#pragma GCC unroll 8
        for (int u = 0; u < A; ++u)
#pragma GCC unroll 8
          for (int v = 0; v < A; ++v)
            d[u][v] = load_lanes<W>(sample + static_cast<std::int64_t>(sites[u * A + v]) * cin, k0, cin);
#pragma GCC unroll 8
        for (int v = 0; v < A; ++v) transform_BT<M, V_t, T>(&d[0][v], A, &e[0][v], A);  // B^T d
#pragma GCC unroll 8
        for (int u = 0; u < A; ++u) transform_BT<M, V_t, T>(&e[u][0], 1, &f[u][0], 1);  // (B^T d) B
        const std::int64_t step = kTB * cinP;
        T* o = Vt + q * cinP + k0;
#pragma GCC unroll 8
        for (int u = 0; u < A; ++u)
#pragma GCC unroll 8
          for (int v = 0; v < A; ++v) store<W>(o + (u * A + v) * step, f[u][v]);
      }
    }
    // Products: Mt[xi][q][co] = sum_ci Vt[xi][q][ci] U[xi][ci][co].
    for (int xi = 0; xi < A * A; ++xi)
      for (std::int64_t c0 = 0; c0 < coutP; c0 += W) {
        V_t acc[kTB];
        for (int q = 0; q < kTB; ++q) acc[q] = V_t{};
        const T* Vx = Vt + static_cast<std::int64_t>(xi) * kTB * cinP;
        const T* Ux = U + static_cast<std::int64_t>(xi) * cinP * coutP + c0;
        for (std::int64_t k = 0; k < cin; ++k) {
          const V_t u = load<W>(Ux + k * coutP);
          for (int q = 0; q < kTB; ++q) acc[q] += Vx[q * cinP + k] * u;
        }
#pragma GCC unroll 8
        for (int q = 0; q < kTB; ++q) store<W>(Mt + (static_cast<std::int64_t>(xi) * kTB + q) * coutP + c0, acc[q]);
      }
    // Output transform A^T M A + bias, into the sink.
    for (int q = 0; q < nt; ++q) {
      const std::int64_t tile = t0 + q, b = tile / tiles.per_sample, tl = tile % tiles.per_sample;
      const std::int32_t* sites = tiles.out.data() + tl * M * M;
      for (std::int64_t c0 = 0; c0 < coutP; c0 += W) {
        V_t m[A][A], r[M][A], y[M][M];
#pragma GCC unroll 8
        for (int u = 0; u < A; ++u)
#pragma GCC unroll 8
          for (int v = 0; v < A; ++v) m[u][v] = load<W>(Mt + (static_cast<std::int64_t>(u * A + v) * kTB + q) * coutP + c0);
#pragma GCC unroll 8
        for (int v = 0; v < A; ++v) transform_AT<M, V_t, T>(&m[0][v], A, &r[0][v], A);  // A^T m
#pragma GCC unroll 8
        for (int i = 0; i < M; ++i) transform_AT<M, V_t, T>(&r[i][0], 1, &y[i][0], 1);  // (A^T m) A
        const V_t bv = load_lanes<W>(bias, c0, cout);
        const int valid = static_cast<int>(std::min<std::int64_t>(W, cout - c0));
#pragma GCC unroll 8
        for (int i = 0; i < M; ++i)
#pragma GCC unroll 8
          for (int j = 0; j < M; ++j) sink.template put<W>((b * V + sites[i * M + j]) * cout + c0, c0, y[i][j] + bv, valid);
      }
    }
  }
}

// The last conv of a Z2 affine coupling at the rows of g: s[r] = bias_s + sum_{t,k} Ws[t][k] u(nbr, k) and
// t[r] = sum_{t,k} Wt[t][k] w(nbr, k), from in [n, V, 2C] holding (u, w) per site, C a multiple of 8, Ws and Wt
// [taps][C]. One pass over the neighbours serves both outputs (u and w of a site share a cache line for C = 8);
// SB rows at a time in separate accumulators.
template <class T, int SB>
__attribute__((always_inline)) inline void dual_dot_rows(const T* in, Row row, const Geo& g, int C, const T* Ws,
                                                         const T* Wt, T bias_s, T* s_out, T* t_out) {
  using V_t = vec_t<T, 8>;
  const T* base[SB];
  const std::int32_t* ns[SB];
  row_starts<SB>(in, row, g, 2 * C, base, ns);
  V_t as[SB], at[SB];
  for (int q = 0; q < SB; ++q) as[q] = at[q] = V_t{};
  for (int t = 0; t < g.taps; ++t)
    for (int k0 = 0; k0 < C; k0 += 8) {
      const V_t ms = load<8>(Ws + static_cast<std::int64_t>(t) * C + k0);
      const V_t mt = load<8>(Wt + static_cast<std::int64_t>(t) * C + k0);
      for (int q = 0; q < SB; ++q) {
        const T* p = base[q] + static_cast<std::int64_t>(ns[q][t]) * 2 * C + k0;
        as[q] += load<8>(p) * ms;
        at[q] += load<8>(p + C) * mt;
      }
    }
  for (int q = 0; q < SB; ++q) {
    T ss = bias_s, tt = 0;
    for (int j = 0; j < 8; ++j) {
      ss += as[q][j];
      tt += at[q][j];
    }
    s_out[row.r + q] = ss;
    t_out[row.r + q] = tt;
  }
}

template <class T>
LATFLOW_CLONES void dual_dot(const T* in, std::int64_t n, Geo g, int C, const T* Ws, const T* Wt, T bias_s,
                             T* s_out, T* t_out) {
  constexpr int SB = 4;
  const std::int64_t rows = n * g.Vr;
  Row row{0, 0, 0};
  for (; row.r + SB <= rows; row.advance(SB, g.Vr)) dual_dot_rows<T, SB>(in, row, g, C, Ws, Wt, bias_s, s_out, t_out);
  for (; row.r < rows; row.advance(1, g.Vr)) dual_dot_rows<T, 1>(in, row, g, C, Ws, Wt, bias_s, s_out, t_out);
}

// out[r] = ((a[r] + b[r]) / 2, (a[r] - b[r]) / 2) for rows of C values, C a multiple of 8: [rows, 2C].
template <class T>
LATFLOW_CLONES void half_sum_difference_pairs(const T* a, const T* b, std::int64_t rows, int C, T* out) {
  for (std::int64_t r = 0; r < rows; ++r)
    for (int c = 0; c < C; c += 8) {
      const auto u = load<8>(a + r * C + c), w = load<8>(b + r * C + c);
      store<8>(out + r * 2 * C + c, T(0.5) * (u + w));
      store<8>(out + r * 2 * C + C + c, T(0.5) * (u - w));
    }
}

// exp of float lanes, relative error within a few 1e-7 for x in [-87, 88] (x is clamped there, so the result is
// a finite normal number): x = n ln2 + r with |r| <= ln2 / 2, exp(r) by its Taylor polynomial of degree 7 (remainder
// below 6e-9), 2^n put into the exponent bits.
template <int W>
__attribute__((always_inline)) inline vec_t<float, W> exp_lanes(vec_t<float, W> x) {
  using F = vec_t<float, W>;
  using I = vec_t<std::int32_t, W>;
  x = x < -87.0f ? F{} - 87.0f : x;
  x = x > 88.0f ? F{} + 88.0f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const F n = (x * 1.44269504088896341f + magic) - magic;
  const F r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;  // ln 2 in two parts
  F p = F{} + 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const I bits = (__builtin_convertvector(n, I) + 127) << 23;
  F scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// s = tanh(a) = 1 - 2 / (1 + exp(2a)) (finite for every a) and e = exp(s), or exp(-s) for inverse, for n values;
// float lanes by exp_lanes (every value, also the last partial block, so a value does not depend on its position).
template <class T>
LATFLOW_CLONES void tanh_and_exp(const T* a, std::int64_t n, bool inverse, T* s, T* e) {
  if constexpr (std::is_same_v<T, float>) {
    using F = vec_t<float, 8>;
    for (std::int64_t i = 0; i < n; i += 8) {
      const std::int64_t k = std::min<std::int64_t>(8, n - i);
      float in[8] = {}, th[8], ex[8];
      std::copy(a + i, a + i + k, in);
      const F t = 1.0f - 2.0f / (1.0f + exp_lanes<8>(2.0f * load<8>(in)));
      store<8>(th, t);
      store<8>(ex, exp_lanes<8>(inverse ? -t : t));
      std::copy(th, th + k, s + i);
      std::copy(ex, ex + k, e + i);
    }
  } else {
    for (std::int64_t i = 0; i < n; ++i) {
      s[i] = 1 - 2 / (1 + std::exp(2 * a[i]));
      e[i] = std::exp(inverse ? -s[i] : s[i]);
    }
  }
}

// sum = (a + b) / 2, diff = (a - b) / 2 elementwise.
template <class T>
LATFLOW_CLONES void half_sum_difference(const T* a, const T* b, std::int64_t n, T* sum, T* diff) {
  for (std::int64_t i = 0; i < n; ++i) {
    const T u = a[i], w = b[i];
    sum[i] = T(0.5) * (u + w);
    diff[i] = T(0.5) * (u - w);
  }
}

// The backward of half_sum_difference followed by the activations that made a and b: from the gradients gs, gd of
// sum and diff, ga = (gs + gd) / 2 act'(pre_a) and gb = (gs - gd) / 2 act'(pre_b); no activation when act is null.
// Whole blocks of 8 in vector lanes for leaky_relu (the value's sign picks the slope, without a branch).
template <class T>
LATFLOW_CLONES void half_sum_difference_backward(const T* gs, const T* gd, std::int64_t n, const Act* act,
                                                 const T* pre_a, const T* pre_b, T* ga, T* gb) {
  std::int64_t k = 0;
  if (!act || *act == Act::leaky_relu) {
    using V_t = vec_t<T, 8>;
    const T slope = static_cast<T>(kLeakySlope);
    for (; k + 8 <= n; k += 8) {
      const V_t u = load<8>(gs + k), w = load<8>(gd + k);
      V_t a = T(0.5) * (u + w), b = T(0.5) * (u - w);
      if (act) {
        a = load<8>(pre_a + k) > 0 ? a : a * slope;
        b = load<8>(pre_b + k) > 0 ? b : b * slope;
      }
      store<8>(ga + k, a);
      store<8>(gb + k, b);
    }
  }
  for (; k < n; ++k) {
    T a = T(0.5) * (gs[k] + gd[k]), b = T(0.5) * (gs[k] - gd[k]);
    if (act) {
      a *= derivative(pre_a[k], *act);
      b *= derivative(pre_b[k], *act);
    }
    ga[k] = a;
    gb[k] = b;
  }
}

namespace {
bool g_winograd = true;

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
  bool winograd = false;              // the convs before the last by Winograd's F(MxM, 3x3)
  WinogradTiles tiles;
  std::vector<std::vector<T>> U, UT;  // their transformed weights; UT: of the transposed convs (backward)
  std::size_t wino_size = 0;
  std::vector<T> reflect, zeros;      // 2 bias of the first conv; zeros (a bias for the transposed convs)
  std::vector<std::int64_t> w_off;    // offset of conv l's weight in the parameter list (bias follows)

  Plan(const AffineLayer<T>& layer, bool backward) : ly(layer) {
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
    winograd = g_winograd && ext.size() == 2 && ly.taps == 9 && ext[0] % 2 == 0 && ext[1] % 2 == 0 && L > 1;
    if (winograd) {
      const int M = ext[0] % 4 == 0 && ext[1] % 4 == 0 ? 4 : 2;
      tiles = winograd_tiles(ext[0], ext[1], M);
      auto transform = [M](const T* w, int cin, int cout) {
        return M == 4 ? winograd_weights<T, 4>(w, cin, cout) : winograd_weights<T, 2>(w, cin, cout);
      };
      U.resize(static_cast<std::size_t>(L));
      UT.resize(U.size());
      for (int l = 0; l + 1 < L; ++l) {
        const auto& c = net[static_cast<std::size_t>(l)];
        U[static_cast<std::size_t>(l)] = transform(c.w, c.cin, c.cout);
        if (backward && l > 0) {
          // The input-gradient is the convolution with the transposed weights and the window reversed.
          std::vector<T> wt(static_cast<std::size_t>(c.cout * c.cin * 9));
          for (int co = 0; co < c.cout; ++co)
            for (int ci = 0; ci < c.cin; ++ci)
              for (int t = 0; t < 9; ++t)
                wt[static_cast<std::size_t>((ci * c.cout + co) * 9 + t)] = c.w[(co * c.cin + ci) * 9 + 8 - t];
          UT[static_cast<std::size_t>(l)] = transform(wt.data(), c.cout, c.cin);
        }
        wino_size = std::max(wino_size, static_cast<std::size_t>((M + 2) * (M + 2) * 8 *
                                                                 (round_up(c.cin, 8) + round_up(c.cout, 8))));
      }
    }
    reflect.assign(static_cast<std::size_t>(round_up(net.front().cout, 8)), T(0));
    for (int c = 0; c < net.front().cout; ++c) reflect[static_cast<std::size_t>(c)] = 2 * net.front().bias[c];
    zeros.assign(static_cast<std::size_t>(round_up(width, 8)), T(0));
  }
  Geo all() const { return Geo{V, ly.taps, ly.nbr, nullptr, V}; }
  Geo updated() const { return Geo{V, ly.taps, ly.nbr, ly.active, ly.Va}; }
  std::int64_t tape_per_sample() const { return affine_tape_size(ly, 1); }
  // conv l of n_in samples of `in` [n_in, V, cin] into sink, by Winograd or the direct kernels.
  void conv(int l, const T* in, std::int64_t n_in, const Sink<T>& sink, T* wino_scratch) const {
    const auto& c = ly.net[static_cast<std::size_t>(l)];
    const T* Ul = winograd ? U[static_cast<std::size_t>(l)].data() : nullptr;
    if (winograd && tiles.M == 4)
      winograd_conv<T, 4>(in, n_in, V, tiles, c.cin, c.cout, Ul, c.bias, sink, wino_scratch);
    else if (winograd)
      winograd_conv<T, 2>(in, n_in, V, tiles, c.cin, c.cout, Ul, c.bias, sink, wino_scratch);
    else
      gather(in, n_in, all(), arranged[static_cast<std::size_t>(l)], c.bias, sink);
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
    gather(h, nb, updated, P.arranged.back(), bias, Sink<T>{nullptr, nullptr, nullptr, pairs});
    for (std::int64_t r = 0; r < nb * Va; ++r) {
      s_raw[r] = pairs[2 * r];
      t[r] = pairs[2 * r + 1];
    }
  } else if (L > 1 && C % 8 == 0) {
    T* pairs = B.scratch;  // [nb, V, 2C]
    half_sum_difference_pairs(h, h + nb * V * C, nb * V, static_cast<int>(C), pairs);
    dual_dot(pairs, nb, updated, static_cast<int>(C), P.w_s.data(), P.w_t.data(), bias[0], s_raw, t);
  } else if (L > 1) {
    T *hs = B.scratch, *hd = B.scratch + nb * V * C;
    half_sum_difference(h, h + nb * V * C, nb * V * C, hs, hd);
    gather(hs, nb, updated, P.conv_s, bias, to_s);
    gather(hd, nb, updated, P.conv_t, static_cast<const T*>(nullptr), to_t);
  } else {  // the net is one conv of c: (h+ + h-) / 2 = 0, (h+ - h-) / 2 = c
    std::fill(s_raw, s_raw + nb * Va, bias[0]);
    gather(h, nb, updated, P.conv_t, static_cast<const T*>(nullptr), to_t);
  }
  // The affine update of the active sites: s = tanh(s_raw) (in place) and its exp.
  tanh_and_exp(s_raw, nb * Va, inverse, s_raw, B.e);
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

// gy, gld -> gx for the block whose forward pass is B, adding the parameter gradients to gparams (when not null).
// The buffers: gs [nb, V, 2] (the last conv's output gradient, zero off the active sites), ga and gb
// [copies, nb, V, width] (gradients of the hidden values), gc [copies, nb, V].
template <class T>
void backward_block(const Plan<T>& P, const T* gy, const double* gld, std::int64_t nb, bool inverse,
                    const Pass<T>& B, T* gx, T* gparams, T* gs, T* ga, T* gb, T* gc) {
  const auto& ly = P.ly;
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
  // The affine update: y_a = x_a e + t, log|det| = sum s (forward) or y_a = (x_a - t) e, -sum s (inverse), with
  // e = exp(+-s), s = tanh(s_raw); frozen sites pass through (their dependence through c is added at the end).
  std::copy(gy, gy + nv, gx);
  // gs: with z2 the s part [nb, V] and the t part after it, else [nb, V, 2]; zero off the active sites.
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
  // The last conv. Its input h [copies, nb, V, C] is the last hidden layer, or c when the net is one conv.
  const T* h = L > 1 ? B.h[static_cast<std::size_t>(L - 2)] : B.c;
  const T* h_pre = L > 1 ? B.pre[static_cast<std::size_t>(L - 2)] : nullptr;
  T* g_h = L > 1 ? ga : gc;  // dL/d(values before the activation) of h, [copies, nb, V, C]
  const auto& last = net.back();
  if (ly.z2) {
    // s_raw = conv_s((h+ + h-) / 2) + bias_s, t = conv_t((h+ - h-) / 2): the gradients of the two one-output convs,
    // then those of h+ and h-. The bias of t cancels: its gradient is zero.
    T *hs = B.scratch, *hd = B.scratch + nv * C;
    half_sum_difference(h, h + nv * C, nv * C, hs, hd);
    T* g_hs = gb;  // [nb, V, C] each, in the second gradient buffer
    T* g_hd = gb + nv * C;
    T t_bias = 0;
    conv_backward<T>(hs, gs, nb, V, taps, ly.nbr, static_cast<int>(C), 1, last.w, nullptr, nullptr, g_hs, gw(L - 1),
                     gbias(L - 1));
    conv_backward<T>(hd, gs + nv, nb, V, taps, ly.nbr, static_cast<int>(C), 1,
                     last.w + C * taps, nullptr, nullptr, g_hd, gparams ? gw(L - 1) + C * taps : nullptr, &t_bias);
    half_sum_difference_backward(g_hs, g_hd, nv * C, h_pre ? act : nullptr, h_pre, h_pre ? h_pre + nv * C : nullptr,
                                 g_h, g_h + nv * C);
  } else {
    conv_backward<T>(h, gs, nb, V, taps, ly.nbr, static_cast<int>(C), 2, last.w, h_pre, act, g_h, gw(L - 1),
                     gbias(L - 1));
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
      if (P.tiles.M == 4)
        winograd_conv<T, 4>(cur, n2, V, P.tiles, c.cout, c.cin, UT, P.zeros.data(), to_gin, B.wino);
      else
        winograd_conv<T, 2>(cur, n2, V, P.tiles, c.cout, c.cin, UT, P.zeros.data(), to_gin, B.wino);
      if (gparams)
        conv_backward<T>(in, cur, n2, V, taps, ly.nbr, c.cin, c.cout, c.w, nullptr, nullptr, nullptr, gw(l),
                         gbias(l));
    } else {
      conv_backward<T>(in, cur, n2, V, taps, ly.nbr, c.cin, c.cout, c.w, in_pre, act, next, gw(l), gbias(l));
    }
    std::swap(cur, next);
  }
  // The first conv, of c (and -c): the gradient with respect to c.
  if (L > 1) {
    const auto& c0 = net.front();
    conv_backward<T>(B.c, cur, n2, V, taps, ly.nbr, 1, c0.cout, c0.w, nullptr, nullptr, gc, gw(0), gbias(0));
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

void set_winograd(bool on) { g_winograd = on; }

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
void affine_coupling_forward(T* x, std::int64_t n, const AffineLayer<T>& layer, bool inverse, double* logdet,
                             T* tape) {
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
void affine_coupling_backward(const T* gy, const double* gld, std::int64_t n, const AffineLayer<T>& layer,
                              bool inverse, const T* tape, T* gx, T* gparams) {
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

#define LATFLOW_INSTANTIATE(T)                                                                                    \
  template void conv_forward<T>(const T*, std::int64_t, std::int64_t, int, const std::int32_t*, int, int,         \
                                const T*, const T*, const Act*, T*, T*);                                          \
  template void conv_forward_at<T>(const T*, std::int64_t, std::int64_t, int, const std::int32_t*,                \
                                   const std::int32_t*, std::int64_t, int, int, const T*, const T*, T*);          \
  template void conv_backward<T>(const T*, const T*, std::int64_t, std::int64_t, int, const std::int32_t*, int,   \
                                 int, const T*, const T*, const Act*, T*, T*, T*);                                \
  template void affine_coupling<T>(T*, std::int64_t, const AffineLayer<T>&, bool, double*);                      \
  template std::int64_t affine_tape_size<T>(const AffineLayer<T>&, std::int64_t);                                 \
  template std::int64_t affine_param_count<T>(const AffineLayer<T>&);                                             \
  template void affine_coupling_forward<T>(T*, std::int64_t, const AffineLayer<T>&, bool, double*, T*);           \
  template void affine_coupling_backward<T>(const T*, const double*, std::int64_t, const AffineLayer<T>&, bool,   \
                                            const T*, T*, T*);
LATFLOW_INSTANTIATE(float)
LATFLOW_INSTANTIATE(double)
#undef LATFLOW_INSTANTIATE

}  // namespace latflow::pconv
