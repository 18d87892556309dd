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
// reflect[c] = 2 bias[c] (padded to whole vector blocks). v holds output channels c0 ... of row o / kout.
template <class T>
struct Sink {
  const Act* act;
  T* pre;
  const T* dpre;
  T* out;
  T* mirror = nullptr;
  const T* reflect = nullptr;
  // Scalar path: any number of valid lanes, any activation.
  __attribute__((always_inline)) void put(std::int64_t o, std::int64_t c0, const T* res, int valid) const {
    if (pre)
      for (int j = 0; j < valid; ++j) pre[o + j] = res[j];
    if (mirror)
      for (int j = 0; j < valid; ++j) mirror[o + j] = apply(reflect[c0 + j] - res[j]);
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
  for (std::int64_t r = 0; r < rows; ++r)
    for (int c = 0; c < cout; ++c) {
      gP[static_cast<std::size_t>(r * coutP + c)] = gpre[r * cout + c];
      gb[c] += gpre[r * cout + c];
    }
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

// a, b -> (a + b) / 2, (a - b) / 2 elementwise, in place.
template <class T>
LATFLOW_CLONES void half_sum_difference(T* a, T* b, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    const T u = a[i], w = b[i];
    a[i] = T(0.5) * (u + w);
    b[i] = T(0.5) * (u - w);
  }
}

namespace {
bool g_winograd = true;
}
void set_winograd(bool on) { g_winograd = on; }

template <class T>
void affine_coupling(T* x, std::int64_t n, const std::vector<std::int64_t>& extents, int taps,
                     const std::int32_t* nbr, const std::vector<ConvWeights<T>>& net, Act act, bool z2,
                     const std::int32_t* active, std::int64_t Va, bool inverse, double* logdet) {
  const auto L = net.size();
  std::int64_t V = 1;
  for (auto e : extents) V *= e;
  const auto& last = net.back();  // 2 outputs: a_s, a_t
  std::vector<Arranged<T>> arranged;
  int width = 1;
  for (const auto& c : net) {
    arranged.push_back(arrange_conv(c.w, taps, c.cin, c.cout, false));
    width = std::max(width, c.cout);
  }
  // With z2 the last conv is linear, so (a(h+) + a(h-)) / 2 = a_s((h+ + h-) / 2) with a_s's bias, and
  // (a(h+) - a(h-)) / 2 = a_t((h+ - h-) / 2) without bias: two one-output convs instead of two two-output ones.
  const std::int64_t last_taps = static_cast<std::int64_t>(last.cin) * taps;
  const auto conv_s = arrange_conv(last.w, taps, last.cin, 1, false);
  const auto conv_t = arrange_conv(last.w + last_taps, taps, last.cin, 1, false);
  std::vector<T> w_s(static_cast<std::size_t>(last_taps)), w_t(w_s.size());  // [taps][cin] for dual_dot
  for (int k = 0; k < last.cin; ++k)
    for (int t = 0; t < taps; ++t) {
      w_s[static_cast<std::size_t>(t * last.cin + k)] = last.w[k * taps + t];
      w_t[static_cast<std::size_t>(t * last.cin + k)] = last.w[last_taps + k * taps + t];
    }
  const Geo all{V, taps, nbr, nullptr, V}, updated{V, taps, nbr, active, Va};
  const std::int64_t copies = z2 ? 2 : 1, C = net.back().cin;
  // The convs before the last by Winograd's F(MxM, 3x3) where it applies (2D, 3x3, even extents).
  const bool winograd = g_winograd && extents.size() == 2 && taps == 9 && extents[0] % 2 == 0 &&
                        extents[1] % 2 == 0 && L > 1;
  WinogradTiles tiles;
  std::vector<std::vector<T>> wino_U(L);
  std::size_t wino_size = 0;
  if (winograd) {
    const int M = extents[0] % 4 == 0 && extents[1] % 4 == 0 ? 4 : 2;
    tiles = winograd_tiles(extents[0], extents[1], M);
    for (std::size_t l = 0; l + 1 < L; ++l) {
      const auto& c = net[l];
      wino_U[l] = M == 4 ? winograd_weights<T, 4>(c.w, c.cin, c.cout) : winograd_weights<T, 2>(c.w, c.cin, c.cout);
      wino_size = std::max(wino_size, static_cast<std::size_t>((M + 2) * (M + 2) * 8 *
                                                               (round_up(c.cin, 8) + round_up(c.cout, 8))));
    }
  }
  // Samples are done kChunk at a time, so that a chunk's activations stay in the L2 cache (and each buffer stays
  // under glibc's mmap threshold: larger ones were mapped afresh, with page faults, on every call).
  constexpr std::int64_t kChunk = 16;
  const auto n_frozen = static_cast<std::size_t>(kChunk * V), n_out = static_cast<std::size_t>(kChunk * Va * 4),
             n_buf = static_cast<std::size_t>(copies * kChunk * V * width);
  std::vector<T> v_frozen(n_frozen), v_out(n_out), v_a(n_buf), v_b(n_buf), v_w(wino_size);
  T* const frozen = v_frozen.data();
  T* const out = v_out.data();
  T* const buf_a = v_a.data();
  T* const buf_b = v_b.data();
  T* const wino_scratch = v_w.data();
  std::vector<T> reflect(static_cast<std::size_t>(round_up(net.front().cout, 8)), T(0));
  for (int c = 0; c < net.front().cout; ++c) reflect[static_cast<std::size_t>(c)] = 2 * net.front().bias[c];
  for (std::int64_t b0 = 0; b0 < n; b0 += kChunk) {
    const std::int64_t nb = std::min(kChunk, n - b0);
    T* xb = x + b0 * V;
    std::copy(xb, xb + nb * V, frozen);
    for (std::int64_t b = 0; b < nb; ++b)
      for (std::int64_t i = 0; i < Va; ++i) frozen[b * V + active[i]] = T(0);
    // The hidden layers, on c and with z2 on -c: h [copies, nb, V, C]. The first conv's value on -c is
    // 2 bias - its value on c, so it is not recomputed.
    const T* h = frozen;
    if (L > 1) {
      Sink<T> first{&act, nullptr, nullptr, buf_a};
      if (z2) {
        first.mirror = buf_a + nb * V * net.front().cout;
        first.reflect = reflect.data();
      }
      // conv l of n samples of `in` into sink.
      auto conv = [&](std::size_t l, const T* in, std::int64_t n_in, const Sink<T>& sink) {
        const auto& c = net[l];
        if (winograd && tiles.M == 4)
          winograd_conv<T, 4>(in, n_in, V, tiles, c.cin, c.cout, wino_U[l].data(), c.bias, sink, wino_scratch);
        else if (winograd)
          winograd_conv<T, 2>(in, n_in, V, tiles, c.cin, c.cout, wino_U[l].data(), c.bias, sink, wino_scratch);
        else
          gather(in, n_in, all, arranged[l], c.bias, sink);
      };
      conv(0, frozen, nb, first);
      T *cur = buf_a, *next = buf_b;
      for (std::size_t l = 1; l + 1 < L; ++l) {
        conv(l, cur, copies * nb, Sink<T>{&act, nullptr, nullptr, next});
        std::swap(cur, next);
      }
      h = cur;
    }
    // The last conv at the active sites: s_raw = out[0, b, i], t = out[1, b, i].
    T* s_raw = out;
    T* t = out + nb * Va;
    if (!z2) {
      T* pairs = out + 2 * nb * Va;  // [nb, Va, 2]
      gather(h, nb, updated, arranged.back(), last.bias, Sink<T>{nullptr, nullptr, nullptr, pairs});
      for (std::int64_t r = 0; r < nb * Va; ++r) {
        s_raw[r] = pairs[2 * r];
        t[r] = pairs[2 * r + 1];
      }
    } else if (L > 1 && C % 8 == 0) {
      T* pairs = buf_a == h ? buf_b : buf_a;  // the buffer h is not in
      half_sum_difference_pairs(h, h + nb * V * C, nb * V, static_cast<int>(C), pairs);
      dual_dot(pairs, nb, updated, static_cast<int>(C), w_s.data(), w_t.data(), last.bias[0], s_raw, t);
    } else if (L > 1) {
      T* hp = buf_a == h ? buf_a : buf_b;  // h, writable
      half_sum_difference(hp, hp + nb * V * C, nb * V * C);
      gather(hp, nb, updated, conv_s, last.bias, Sink<T>{nullptr, nullptr, nullptr, s_raw});
      gather(hp + nb * V * C, nb, updated, conv_t, static_cast<const T*>(nullptr), Sink<T>{nullptr, nullptr, nullptr, t});
    } else {  // the net is one conv of c: (h+ + h-) / 2 = 0, (h+ - h-) / 2 = c
      std::fill(s_raw, s_raw + nb * Va, last.bias[0]);
      gather(h, nb, updated, conv_t, static_cast<const T*>(nullptr), Sink<T>{nullptr, nullptr, nullptr, t});
    }
    // The affine update of the active sites: s = tanh(s_raw) (in place) and its exp.
    T* e = out + 2 * nb * Va;
    tanh_and_exp(s_raw, nb * Va, inverse, s_raw, e);
    for (std::int64_t b = 0; b < nb; ++b) {
      double sum = 0;
      for (std::int64_t i = 0; i < Va; ++i) {
        const std::int64_t r = b * Va + i;
        T& v = xb[b * V + active[i]];
        v = inverse ? (v - t[r]) * e[r] : v * e[r] + t[r];
        sum += s_raw[r];
      }
      logdet[b0 + b] += inverse ? -sum : sum;
    }
  }
}

#define LATFLOW_INSTANTIATE(T)                                                                                    \
  template void conv_forward<T>(const T*, std::int64_t, std::int64_t, int, const std::int32_t*, int, int,         \
                                const T*, const T*, const Act*, T*, T*);                                          \
  template void conv_backward<T>(const T*, const T*, std::int64_t, std::int64_t, int, const std::int32_t*, int, \
                                 int, const T*, const T*, const Act*, T*, T*, T*);                         \
  template void affine_coupling<T>(T*, std::int64_t, const std::vector<std::int64_t>&, int, const std::int32_t*,  \
                                   const std::vector<ConvWeights<T>>&, Act, bool, const std::int32_t*,            \
                                   std::int64_t, bool, double*);
LATFLOW_INSTANTIATE(float)
LATFLOW_INSTANTIATE(double)
#undef LATFLOW_INSTANTIATE

}  // namespace latflow::pconv
