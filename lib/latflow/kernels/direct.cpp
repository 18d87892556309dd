// SPDX-License-Identifier: MIT
// Direct periodic convolutions: the gather kernels (lanes over output channels, or over input channels for few
// outputs), their weight gradients, and the public conv_forward / conv_forward_at / conv_backward.
#include <algorithm>
#include <type_traits>

#include "latflow/kernels/conv_detail.hpp"

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

namespace {

// The pair (p[0], p[1]) in every pair of lanes.
template <class T>
__attribute__((always_inline)) inline vec_t<T, 16> pair_broadcast(const T* p) {
  if constexpr (sizeof(T) == 4) {
    double d;  // (a 64-bit broadcast: one load)
    std::memcpy(&d, p, sizeof(d));
    const vec_t<double, 8> v{d, d, d, d, d, d, d, d};
    return __builtin_bit_cast(vec_t<T, 16>, v);
  } else {
    const vec_t<T, 2> v = load<2>(p);
    return __builtin_shufflevector(v, v, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1);
  }
}

template <class T, int W, int SB, int TAPS, int KIN, class S>
__attribute__((always_inline)) inline void gather_rows(const T* in, Row row, const Geo& g, bool mirrored, int kin_rt,
                                                       const T* M, int kout, const T* bias, const S& sink) {
  using V_t = vec_t<T, W>;
  const int taps = TAPS ? TAPS : g.taps, kin = KIN ? KIN : kin_rt;
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
template <class T, int KO, int SB, int TAPS, int KIN, class S>
__attribute__((always_inline)) inline void dot_rows(const T* in, Row row, const Geo& g, bool mirrored, int kin_rt,
                                                    const T* Md, int kout, const T* bias, const S& sink) {
  using V_t = vec_t<T, 8>;
  const int taps = TAPS ? TAPS : g.taps, kin = KIN ? KIN : kin_rt;
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
  // Each output: the lane sum (hsum8's order), then the bias.
  T res[SB][KO];
  if constexpr (SB * KO == 8) {
    V_t a[8], bv{};
    for (int q = 0; q < SB; ++q)
      for (int c = 0; c < KO; ++c) {
        a[q * KO + c] = acc[q][c];
        bv[q * KO + c] = bias && c < kout ? bias[c] : T(0);
      }
    store<8>(&res[0][0], transpose_sums<T>(a) + bv);
  } else {
    for (int q = 0; q < SB; ++q)
      for (int c = 0; c < KO; ++c) res[q][c] = hsum8<T>(acc[q][c]) + (bias && c < kout ? bias[c] : T(0));
  }
  for (int q = 0; q < SB; ++q) sink.put((row.r + q) * kout, 0, res[q], std::min(kout, KO));  // (kout <= KO)
}

// The two row kernels as policies of one driver: SB rows at a time, then the remainder one by one. (TAPS, KIN:
// the taps and inputs as constants, so that their loops unroll; 0: run-time values.)
template <class T, int W, int TAPS = 0, int KIN = 0>
struct ChannelLanes {
  static constexpr int SB = 8;  // 8 accumulators: 8 of the 16 AVX registers (16 for doubles at W = 8: some spill)
  template <int R, class S>
  __attribute__((always_inline)) static void rows(const T* in, Row row, const Geo& g, bool mirrored, int kin,
                                                  const T* M, int kout, const T* bias, const S& sink) {
    gather_rows<T, W, R, TAPS, KIN>(in, row, g, mirrored, kin, M, kout, bias, sink);
  }
};
template <class T, int KO, int TAPS = 0, int KIN = 0>
struct InputLanes {
  static constexpr int SB = 8 / KO;  // SB x KO = 8 accumulators
  template <int R, class S>
  __attribute__((always_inline)) static void rows(const T* in, Row row, const Geo& g, bool mirrored, int kin,
                                                  const T* M, int kout, const T* bias, const S& sink) {
    dot_rows<T, KO, R, TAPS, KIN>(in, row, g, mirrored, kin, M, kout, bias, sink);
  }
};

template <class T, class Kernel, class S>
__attribute__((always_inline)) inline void gather_conv(const T* in, std::int64_t n, const Geo& g, bool mirrored,
                                                       int kin, const T* M, int kout, const T* bias, const S& sink) {
  constexpr int SB = Kernel::SB;
  const std::int64_t rows = n * g.Vr;
  Row row{0, 0, 0};
  for (; row.r + SB <= rows; row.advance(SB, g.Vr))
    Kernel::template rows<SB>(in, row, g, mirrored, kin, M, kout, bias, sink);
  for (; row.r < rows; row.advance(1, g.Vr)) Kernel::template rows<1>(in, row, g, mirrored, kin, M, kout, bias, sink);
}

// The gather of one input channel (a net's first conv) with 8 output lanes and at most kOneInputTaps taps: row by
// row, each row one chain of multiply-adds from the bias over the taps (the rows' chains overlap in the core), with
// the weights in registers: the operations of gather_rows in the same order, 3x faster for a 3x3 kernel.
constexpr int kOneInputTaps = 27;
template <class T, int TAPS, class S>
__attribute__((always_inline)) inline void one_input_conv(const T* in, std::int64_t n, const Geo& g, bool mirrored,
                                                          const T* M, int kout, const T* bias, const S& sink) {
  using V_t = vec_t<T, 8>;
  const int taps = TAPS ? TAPS : g.taps;
  const std::int64_t koutP = round_up(kout, 8);
  for (std::int64_t c0 = 0; c0 < koutP; c0 += 8) {
    T init[8];
    for (int j = 0; j < 8; ++j) init[j] = (bias && c0 + j < kout) ? bias[c0 + j] : T(0);
    const V_t b = load<8>(init);
    V_t w[kOneInputTaps];  // a local array: the compiler knows that the sink's stores do not change it
    for (int t = 0; t < taps; ++t)
      w[t] = load<8>(M + static_cast<std::int64_t>(mirrored ? taps - 1 - t : t) * koutP + c0);
    const int valid = static_cast<int>(std::min<std::int64_t>(8, kout - c0));
    for (std::int64_t s = 0; s < n; ++s) {
      const T* x = in + s * g.V;
      for (std::int64_t i = 0; i < g.Vr; ++i) {
        const std::int32_t* ns = g.nbr + g.site(i) * taps;
        V_t acc = b;
        if (mirrored)
          for (int t = taps - 1; t >= 0; --t) acc += x[ns[t]] * w[t];
        else
          for (int t = 0; t < taps; ++t) acc += x[ns[t]] * w[t];
        sink.template put<8>((s * g.Vr + i) * kout + c0, c0, acc, valid);
      }
    }
  }
}

// one_input_conv on the samples [s0, s1) at the sites of one TapGroup: each row's chain of multiply-adds runs
// over the group's taps only (K of them: a constant, or 0 for the run-time count), in ascending order.
template <class T, int K, class S>
__attribute__((always_inline)) inline void one_input_group(const T* in, std::int64_t s0, std::int64_t s1,
                                                           std::int64_t V, const TapGroup& grp, const T* M, int kout,
                                                           const T* bias, const S& sink) {
  using V_t = vec_t<T, 8>;
  const int k = K ? K : static_cast<int>(grp.taps.size());
  const std::int64_t koutP = round_up(kout, 8), nsites = static_cast<std::int64_t>(grp.sites.size());
  for (std::int64_t c0 = 0; c0 < koutP; c0 += 8) {
    T init[8];
    for (int j = 0; j < 8; ++j) init[j] = (bias && c0 + j < kout) ? bias[c0 + j] : T(0);
    const V_t b = load<8>(init);
    V_t w[K ? K : kOneInputTaps];
    for (int j = 0; j < k; ++j) w[j] = load<8>(M + static_cast<std::int64_t>(grp.taps[j]) * koutP + c0);
    const int valid = static_cast<int>(std::min<std::int64_t>(8, kout - c0));
    for (std::int64_t s = s0; s < s1; ++s) {
      const T* x = in + s * V;
      for (std::int64_t i = 0; i < nsites; ++i) {
        const std::int32_t* ns = grp.nbr.data() + i * k;
        V_t acc = b;
        for (int j = 0; j < k; ++j) acc += x[ns[j]] * w[j];
        sink.template put<8>((s * V + grp.sites[i]) * kout + c0, c0, acc, valid);
      }
    }
  }
}

// gw[t, ci0 + c, c0 : c0 + W] += sum_{b, s} in[b, nbr(s, t), ci0 + c] gP[b, s, c0 : c0 + W] for c < CB, with gP the
// output gradient padded to coutP channels and gw [taps, cin, coutP]. CB x RB accumulators (RB = 8 / CB
// consecutive rows summed separately) stay in registers for the whole sweep over the rows and hide the FMA latency.
template <class T, int W, int CB>
__attribute__((always_inline)) inline void weight_grad_block(const T* in, const T* gP, std::int64_t n, std::int64_t V,
                                                             int taps, const std::int32_t* nbr, int cin, int ci0,
                                                             std::int64_t coutP, int t, std::int64_t c0, T* gw) {
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
__attribute__((always_inline)) inline void weight_grad(const T* in, const T* gP, std::int64_t n, std::int64_t V,
                                                       int taps, const std::int32_t* nbr, int cin, std::int64_t coutP,
                                                       T* gw) {
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
__attribute__((always_inline)) inline void weight_grad_dot(const T* in, const T* gP, std::int64_t n, std::int64_t V,
                                                           int taps, const std::int32_t* nbr, int cin, T* gwd) {
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
}  // namespace

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
void gather(const T* in, std::int64_t n, const Geo& g, const Arranged<T>& a, const T* bias, const Sink<T>& sink,
            Isa isa) {
  // Each kernel runs in its own instruction-set wrapper: one function holding every variant was optimised worse
  // (up to 40% slower) than each alone.
  with_sink(sink, [&](const auto& sk) {
    using S = std::decay_t<decltype(sk)>;
    auto rows = [&](auto kernel) {
      using K = decltype(kernel);
      with_isa(isa, [&]() LATFLOW_KERNEL {
        gather_conv<T, K, S>(in, n, g, a.mirrored, a.kin, a.m.data(), a.kout, bias, sk);
      });
    };
    auto one_input = [&](auto taps) {
      with_isa(isa, [&]() LATFLOW_KERNEL {
        one_input_conv<T, decltype(taps)::value>(in, n, g, a.mirrored, a.m.data(), a.kout, bias, sk);
      });
    };
    const bool k9x8 = g.taps == 9 && a.kin == 8;  // 3x3 kernels of 8 inputs: the taps and inputs unrolled
    // More than 8 float outputs on AVX-512: 16 lanes (one 512-bit register) where the padding to 16 is the padding
    // to 8, so the arranged weights serve both; each lane's sum is the same chain, so the same bits.
    const bool wide = std::is_same_v<T, float> && a.W == 8 && a.kout > 8 &&
                      round_up(a.kout, 16) == round_up(a.kout, 8) && resolve(isa) == Isa::x86_64_v4;
    if (a.KO == 1)
      k9x8 ? rows(InputLanes<T, 1, 9, 8>{}) : rows(InputLanes<T, 1>{});
    else if (a.KO == 2)
      k9x8 ? rows(InputLanes<T, 2, 9, 8>{}) : rows(InputLanes<T, 2>{});
    else if (a.KO == 4)
      rows(InputLanes<T, 4>{});
    else if (a.W == 8 && a.kin == 1 && g.taps == 9)
      one_input(std::integral_constant<int, 9>{});
    else if (a.W == 8 && a.kin == 1 && g.taps <= kOneInputTaps)
      one_input(std::integral_constant<int, 0>{});
    else if (a.W == 8 && a.kin == 2 && g.taps == 9)  // the input-gradient of a 3x3 conv with 2 outputs
      rows(ChannelLanes<T, 8, 9, 2>{});
    else if (a.W == 4)
      rows(ChannelLanes<T, 4>{});
    else if (wide)
      rows(ChannelLanes<T, 16>{});
    else
      rows(ChannelLanes<T, 8>{});
  });
}

std::vector<TapGroup> tap_groups(const Geo& g, const std::int32_t* zero, std::int64_t n_zero) {
  std::vector<char> is_zero(static_cast<std::size_t>(g.V), 0);
  for (std::int64_t i = 0; i < n_zero; ++i) is_zero[static_cast<std::size_t>(zero[i])] = 1;
  std::vector<TapGroup> groups;
  std::vector<int> taps;
  for (std::int64_t s = 0; s < g.V; ++s) {
    const std::int32_t* ns = g.nbr + s * g.taps;
    taps.clear();
    for (int t = 0; t < g.taps; ++t)
      if (!is_zero[static_cast<std::size_t>(ns[t])]) taps.push_back(t);
    auto grp = std::find_if(groups.begin(), groups.end(), [&](const TapGroup& q) { return q.taps == taps; });
    if (grp == groups.end()) grp = groups.insert(groups.end(), TapGroup{taps, {}, {}});
    grp->sites.push_back(static_cast<std::int32_t>(s));
    for (int t : taps) grp->nbr.push_back(ns[t]);
  }
  return groups;
}

template <class T>
bool one_input_conv_groups(const T* in, std::int64_t n, std::int64_t V, const std::vector<TapGroup>& groups,
                           const Arranged<T>& a, const T* bias, const Sink<T>& sink, Isa isa) {
  if (a.W != 8 || a.kin != 1 || a.mirrored) return false;
  for (const auto& grp : groups)
    if (grp.taps.size() > static_cast<std::size_t>(kOneInputTaps)) return false;
  // Blocks of samples, every group within a block: the groups' rows interleave in memory, and a block's output
  // (16 samples) stays in cache between the groups.
  constexpr std::int64_t kBlock = 16;
  with_sink(sink, [&](const auto& sk) {
    for (std::int64_t s0 = 0; s0 < n; s0 += kBlock) {
      const std::int64_t s1 = std::min(n, s0 + kBlock);
      for (const auto& grp : groups) {
        auto run = [&](auto k) {
          with_isa(isa, [&]() LATFLOW_KERNEL {
            one_input_group<T, decltype(k)::value>(in, s0, s1, V, grp, a.m.data(), a.kout, bias, sk);
          });
        };
        if (grp.taps.size() == 4)  // a 3x3 window on a checkerboard
          run(std::integral_constant<int, 4>{});
        else if (grp.taps.size() == 5)
          run(std::integral_constant<int, 5>{});
        else
          run(std::integral_constant<int, 0>{});
      }
    }
  });
  return true;
}

template <class T>
void conv_forward(const T* in, std::int64_t n, std::int64_t V, int taps, const std::int32_t* nbr, int cin, int cout,
                  const T* w, const T* bias, const Act* act, T* pre, T* out, Isa isa) {
  gather(in, n, Geo{V, taps, nbr, nullptr, V}, arrange_conv(w, taps, cin, cout, false), bias,
         Sink<T>{act, pre, nullptr, out}, isa);
}

template <class T>
void conv_forward_at(const T* in, std::int64_t n, std::int64_t V, int taps, const std::int32_t* nbr,
                     const std::int32_t* sites, std::int64_t Vr, int cin, int cout, const T* w, const T* bias, T* out,
                     Isa isa) {
  gather(in, n, Geo{V, taps, nbr, sites, Vr}, arrange_conv(w, taps, cin, cout, false), bias,
         Sink<T>{nullptr, nullptr, nullptr, out}, isa);
}

template <class T>
void conv_backward(const T* in, const T* gpre, std::int64_t n, std::int64_t V, int taps, const std::int32_t* nbr,
                   int cin, int cout, const T* w, const T* in_pre, const Act* in_act, T* gin, T* gw, T* gb, Isa isa) {
  if (gin)
    gather(gpre, n, Geo{V, taps, nbr, nullptr, V}, arrange_conv(w, taps, cin, cout, true),
           static_cast<const T*>(nullptr), Sink<T>{in_pre ? in_act : nullptr, nullptr, in_pre, gin}, isa);
  if (!gw) return;  // the parameters are constants here (path-gradient training: log q at fixed weights)
  const bool dot = cout <= 4 && cin % 8 == 0;
  const int W = dot ? (cout <= 1 ? 1 : cout <= 2 ? 2 : 4) : lanes(cout);  // padded width of gP
  const std::int64_t coutP = round_up(cout, W), rows = n * V;
  // The bias gradient: sums over the rows in float64 (float sums of 10^3 terms lose digits), four rows at a time
  // in separate sums (one chain of additions per channel would cost more than the weight gradient of a 1-input
  // conv).
  std::vector<double> bias_sum(static_cast<std::size_t>(4 * cout), 0.0);
  std::int64_t r = 0;
  for (; r + 4 <= rows; r += 4)
    for (int q = 0; q < 4; ++q)
      for (int c = 0; c < cout; ++c) bias_sum[static_cast<std::size_t>(q * cout + c)] += gpre[(r + q) * cout + c];
  for (; r < rows; ++r)
    for (int c = 0; c < cout; ++c) bias_sum[static_cast<std::size_t>(c)] += gpre[r * cout + c];
  for (int c = 0; c < cout; ++c) {
    const auto k = static_cast<std::size_t>(c), m = static_cast<std::size_t>(cout);
    gb[c] += static_cast<T>((bias_sum[k] + bias_sum[m + k]) + (bias_sum[2 * m + k] + bias_sum[3 * m + k]));
  }
  // The output gradient padded to coutP channels (gpre itself when there is no padding).
  std::vector<T> padded;
  const T* gP = gpre;
  if (coutP != cout) {
    padded.assign(static_cast<std::size_t>(rows * coutP), T(0));
    for (std::int64_t i = 0; i < rows; ++i)
      for (int c = 0; c < cout; ++c) padded[static_cast<std::size_t>(i * coutP + c)] = gpre[i * cout + c];
    gP = padded.data();
  }
  std::vector<T> gwp(static_cast<std::size_t>(taps * cin * coutP), T(0));
  if (dot) {  // gwp [taps, coutP, cin]
    with_isa(isa, [&]() LATFLOW_KERNEL {
      if (W == 1) weight_grad_dot<T, 1>(in, gP, n, V, taps, nbr, cin, gwp.data());
      if (W == 2) weight_grad_dot<T, 2>(in, gP, n, V, taps, nbr, cin, gwp.data());
      if (W == 4) weight_grad_dot<T, 4>(in, gP, n, V, taps, nbr, cin, gwp.data());
    });
    for (int co = 0; co < cout; ++co)
      for (int ci = 0; ci < cin; ++ci)
        for (int t = 0; t < taps; ++t)
          gw[(static_cast<std::int64_t>(co) * cin + ci) * taps + t] +=
              gwp[static_cast<std::size_t>((static_cast<std::int64_t>(t) * coutP + co) * cin + ci)];
    return;
  }
  with_isa(isa, [&]() LATFLOW_KERNEL {
    if (W == 4)  // gwp [taps, cin, coutP]
      weight_grad<T, 4>(in, gP, n, V, taps, nbr, cin, coutP, gwp.data());
    else
      weight_grad<T, 8>(in, gP, n, V, taps, nbr, cin, coutP, gwp.data());
  });
  for (int co = 0; co < cout; ++co)
    for (int ci = 0; ci < cin; ++ci)
      for (int t = 0; t < taps; ++t)
        gw[(static_cast<std::int64_t>(co) * cin + ci) * taps + t] +=
            gwp[static_cast<std::size_t>((static_cast<std::int64_t>(t) * cin + ci) * coutP + co)];
}

namespace {
// conv_backward_at's loops for rows [0, rows) of (sample, updated site): per tap, gin's row += W_t^T g and
// gw_t += g x^T, with W and gw as [taps][cout][cin] (cin contiguous).
template <class T>
__attribute__((always_inline)) inline void scatter_rows(const T* __restrict in, const T* __restrict gpre,
                                                        std::int64_t n, std::int64_t V, int taps,
                                                        const std::int32_t* nbr, const std::int32_t* sites,
                                                        std::int64_t Vr, int cin, int cout, const T* __restrict wt,
                                                        T* __restrict gin, T* __restrict gwt, double* bias_sum) {
  std::vector<T> acc_buf(static_cast<std::size_t>(cin));
  T* __restrict acc = acc_buf.data();
  for (std::int64_t b = 0; b < n; ++b)
    for (std::int64_t i = 0; i < Vr; ++i) {
      const T* __restrict g = gpre + (b * Vr + i) * cout;
      for (int co = 0; co < cout; ++co) bias_sum[co] += g[co];
      for (int t = 0; t < taps; ++t) {
        const std::int64_t row = b * V + nbr[static_cast<std::int64_t>(sites[i]) * taps + t];
        const T* __restrict x = in + row * cin;
        const T* __restrict w = wt + static_cast<std::int64_t>(t) * cout * cin;
        T* __restrict gw = gwt ? gwt + static_cast<std::int64_t>(t) * cout * cin : nullptr;
        for (int ci = 0; ci < cin; ++ci) acc[ci] = T(0);
        for (int co = 0; co < cout; ++co) {
          const T gc = g[co];
          for (int ci = 0; ci < cin; ++ci) acc[ci] += w[co * cin + ci] * gc;
          if (gw)
            for (int ci = 0; ci < cin; ++ci) gw[co * cin + ci] += gc * x[ci];
        }
        if (gin)
          for (int ci = 0; ci < cin; ++ci) gin[row * cin + ci] += acc[ci];
      }
    }
}

// The same for cin = 8 CB: the sums over cout in CB vector registers; with P = 2 on sample pairs (see below: in,
// gpre and gin [n/2][rows][C][2], wt and gwt every weight twice, lanes (input channel, sample)).
template <class T, int CB, int P = 1>
__attribute__((always_inline)) inline void scatter_rows_blocked(const T* __restrict in, const T* __restrict gpre,
                                                                std::int64_t n, std::int64_t V, int taps,
                                                                const std::int32_t* nbr, const std::int32_t* sites,
                                                                std::int64_t Vr, int cout, const T* __restrict wt,
                                                                T* __restrict gin, T* __restrict gwt,
                                                                double* bias_sum) {
  constexpr int W = 8 * P, cin = W * CB;  // (cin: the values of a row, both samples' on pairs)
  using Vec = vec_t<T, W>;
  for (std::int64_t b = 0; b < n / P; ++b)
    for (std::int64_t i = 0; i < Vr; ++i) {
      const T* __restrict g = gpre + (b * Vr + i) * cout * P;
      for (int co = 0; co < cout; ++co) bias_sum[co] += P == 2 ? static_cast<double>(g[2 * co]) + g[2 * co + 1] : g[co];
      for (int t = 0; t < taps; ++t) {
        const std::int64_t row = b * V + nbr[static_cast<std::int64_t>(sites[i]) * taps + t];
        const T* __restrict w = wt + static_cast<std::int64_t>(t) * cout * cin;
        Vec acc[CB], x[CB];
        for (int k = 0; k < CB; ++k) {
          acc[k] = Vec{};
          x[k] = load<W>(in + row * cin + W * k);
        }
        T* __restrict gw = gwt ? gwt + static_cast<std::int64_t>(t) * cout * cin : nullptr;
        for (int co = 0; co < cout; ++co) {
          const auto gc = [&] {
            if constexpr (P == 2)
              return pair_broadcast(g + 2 * co);
            else
              return g[co];
          }();
          for (int k = 0; k < CB; ++k) acc[k] += load<W>(w + co * cin + W * k) * gc;
          if (gw)
            for (int k = 0; k < CB; ++k) store<W>(gw + co * cin + W * k, load<W>(gw + co * cin + W * k) + x[k] * gc);
        }
        if (gin)
          for (int k = 0; k < CB; ++k) store<W>(gin + row * cin + W * k, load<W>(gin + row * cin + W * k) + acc[k]);
      }
    }
}
}  // namespace

// ---- Sample pairs: [n/2][rows][C][2], channel c of samples 2p and 2p + 1 side by side ----
//
// A gather on pairs keeps one register of 16 lanes per row, lane 2c + j the output channel c of sample 2p + j,
// and multiplies it by the weights of 8 output channels, each twice, against both samples' input value of one
// channel: one 64-bit broadcast of the pair. With 8 output channels (a gauge net's hidden convs) the lanes over
// the channels fill half an AVX-512 register; pairs fill it, with one load per multiply-add as before (the 8->8
// 3x3 conv on 16x16 ran 1.8x faster in a side-by-side test on this machine's AMD EPYC). Each lane's chain of
// multiply-adds is gather_rows's, so the outputs are the same bits.
namespace {

// Output channels c0 ... c0 + 7 of SB consecutive pair rows (pair p, site i); M2 [taps, kin, 2 koutP] holds every
// weight twice (lanes 2c, 2c + 1), bias2 [2 koutP] likewise (null: zero).
template <class T, int SB, class S>
__attribute__((always_inline)) inline void pair_rows(const T* in, Row row, const Geo& g, bool mirrored, int kin,
                                                     const T* M2, int kout, const T* bias2, const S& sink) {
  using V_t = vec_t<T, 16>;
  const std::int64_t koutP = round_up(kout, 8);
  const T* base[SB];
  const std::int32_t* ns[SB];
  row_starts<SB>(in, row, g, 2 * kin, base, ns);
  for (std::int64_t c0 = 0; c0 < koutP; c0 += 8) {
    V_t acc[SB];
    const V_t init = bias2 ? load<16>(bias2 + 2 * c0) : V_t{};
    for (int q = 0; q < SB; ++q) acc[q] = init;
    for (int t = 0; t < g.taps; ++t) {
      const int tt = mirrored ? g.taps - 1 - t : t;
      const T* src[SB];
      for (int q = 0; q < SB; ++q) src[q] = base[q] + static_cast<std::int64_t>(ns[q][tt]) * 2 * kin;
      const T* Mt = M2 + (static_cast<std::int64_t>(t) * kin * koutP + c0) * 2;
      for (int k = 0; k < kin; ++k) {
        const V_t m = load<16>(Mt + static_cast<std::int64_t>(k) * koutP * 2);
        for (int q = 0; q < SB; ++q) acc[q] += pair_broadcast(src[q] + 2 * k) * m;
      }
    }
    const int valid = static_cast<int>(std::min<std::int64_t>(8, kout - c0)) * 2;
    for (int q = 0; q < SB; ++q) sink.template put<16>((row.r + q) * 2 * kout + 2 * c0, 0, acc[q], valid);
  }
}

template <class T, class S>
__attribute__((always_inline)) inline void pair_conv(const T* in, std::int64_t pairs, const Geo& g, bool mirrored,
                                                     int kin, const T* M2, int kout, const T* bias2, const S& sink) {
  constexpr int SB = 8;
  const std::int64_t rows = pairs * g.Vr;
  Row row{0, 0, 0};
  for (; row.r + SB <= rows; row.advance(SB, g.Vr)) pair_rows<T, SB>(in, row, g, mirrored, kin, M2, kout, bias2, sink);
  for (; row.r < rows; row.advance(1, g.Vr)) pair_rows<T, 1>(in, row, g, mirrored, kin, M2, kout, bias2, sink);
}

// Weights [cout, cin, taps] -> [taps, kin, 2 koutP], each arranged weight twice (see arrange); bias likewise.
template <class T>
std::vector<T> arrange_pairs(const T* w, int taps, int cin, int cout, bool mirrored) {
  const auto m = arrange(w, taps, cin, cout, mirrored, 8);
  std::vector<T> m2(2 * m.size());
  for (std::size_t i = 0; i < m.size(); ++i) m2[2 * i] = m2[2 * i + 1] = m[i];
  return m2;
}
template <class T>
std::vector<T> pair_bias(const T* bias, int cout) {
  std::vector<T> b2(static_cast<std::size_t>(2 * round_up(cout, 8)), T(0));
  for (int c = 0; c < cout; ++c)
    b2[static_cast<std::size_t>(2 * c)] = b2[static_cast<std::size_t>(2 * c + 1)] = bias[c];
  return b2;
}

template <class T>
void gather_pairs(const T* in, std::int64_t pairs, const Geo& g, bool mirrored, int kin, int kout,
                  const std::vector<T>& M2, const T* bias2, const Sink<T>& sink, Isa isa) {
  with_sink(sink, [&](const auto& sk) {
    with_isa(isa, [&]() LATFLOW_KERNEL { pair_conv(in, pairs, g, mirrored, kin, M2.data(), kout, bias2, sk); });
  });
}

// gw[t, ci0 + c, c0 + o] += sum over pairs p, sites s, j of in[p, nbr(s, t), ci0 + c, j] gP[p, s, c0 + o, j] for
// c < CB, o < 8; gP rows of 2 coutP values. CB x RB accumulators, as weight_grad_block.
template <class T, int CB>
__attribute__((always_inline)) inline void pair_weight_grad_block(const T* in, const T* gP, std::int64_t pairs,
                                                                  std::int64_t V, int taps, const std::int32_t* nbr,
                                                                  int cin, int ci0, std::int64_t coutP, int t,
                                                                  std::int64_t c0, T* gw) {
  using V_t = vec_t<T, 16>;
  constexpr int RB = 8 / CB;
  V_t acc[CB][RB];
  for (int c = 0; c < CB; ++c)
    for (int q = 0; q < RB; ++q) acc[c][q] = V_t{};
  for (std::int64_t p = 0; p < pairs; ++p) {
    const T* inp = in + (p * V * cin + ci0) * 2;
    const T* gp = gP + (p * V * coutP + c0) * 2;
    std::int64_t s = 0;
    for (; s + RB <= V; s += RB)
      for (int q = 0; q < RB; ++q) {
        const T* x = inp + static_cast<std::int64_t>(nbr[(s + q) * taps + t]) * cin * 2;
        const V_t gv = load<16>(gp + (s + q) * coutP * 2);
        for (int c = 0; c < CB; ++c) acc[c][q] += pair_broadcast(x + 2 * c) * gv;
      }
    for (; s < V; ++s) {
      const T* x = inp + static_cast<std::int64_t>(nbr[s * taps + t]) * cin * 2;
      const V_t gv = load<16>(gp + s * coutP * 2);
      for (int c = 0; c < CB; ++c) acc[c][0] += pair_broadcast(x + 2 * c) * gv;
    }
  }
  for (int c = 0; c < CB; ++c) {
    V_t sum = acc[c][0];
    for (int q = 1; q < RB; ++q) sum += acc[c][q];
    T* row = gw + (static_cast<std::int64_t>(t) * cin + ci0 + c) * coutP + c0;
    for (int o = 0; o < 8; ++o) row[o] += sum[2 * o] + sum[2 * o + 1];
  }
}

// conv_backward_at, in the ordinary layout or on pairs (cin a multiple of 8, at most 32): the weights and their
// gradient as [taps][cout][cin] (cin contiguous; on pairs every weight twice, lanes (input channel, sample)).
template <class T>
void scatter_at(bool pairs, const T* in, const T* gpre, std::int64_t n, std::int64_t V, int taps,
                const std::int32_t* nbr, const std::int32_t* sites, std::int64_t Vr, int cin, int cout, const T* w,
                const T* in_pre, const Act* in_act, T* gin, T* gw, T* gb, Isa isa) {
  const int dup = pairs ? 2 : 1;
  const auto wsize = static_cast<std::size_t>(taps) * static_cast<std::size_t>(cout * cin * dup);
  std::vector<T> wt(wsize), gwt(gw ? wsize : 0, T(0));
  for (int co = 0; co < cout; ++co)
    for (int ci = 0; ci < cin; ++ci)
      for (int t = 0; t < taps; ++t)
        for (int j = 0; j < dup; ++j)
          wt[static_cast<std::size_t>(((t * cout + co) * cin + ci) * dup + j)] =
              w[(static_cast<std::int64_t>(co) * cin + ci) * taps + t];
  std::vector<double> bias_sum(static_cast<std::size_t>(cout), 0.0);
  if (gin) std::fill(gin, gin + n * V * cin, T(0));
  T* gwp = gw ? gwt.data() : nullptr;
  double* bs = bias_sum.data();
  with_isa(isa, [&]() LATFLOW_KERNEL {
    if (pairs) {
      switch (cin) {
        case 8:
          scatter_rows_blocked<T, 1, 2>(in, gpre, n, V, taps, nbr, sites, Vr, cout, wt.data(), gin, gwp, bs);
          break;
        case 16:
          scatter_rows_blocked<T, 2, 2>(in, gpre, n, V, taps, nbr, sites, Vr, cout, wt.data(), gin, gwp, bs);
          break;
        case 24:
          scatter_rows_blocked<T, 3, 2>(in, gpre, n, V, taps, nbr, sites, Vr, cout, wt.data(), gin, gwp, bs);
          break;
        default:
          scatter_rows_blocked<T, 4, 2>(in, gpre, n, V, taps, nbr, sites, Vr, cout, wt.data(), gin, gwp, bs);
          break;
      }
      return;
    }
    switch (cin) {
      case 8: scatter_rows_blocked<T, 1>(in, gpre, n, V, taps, nbr, sites, Vr, cout, wt.data(), gin, gwp, bs); break;
      case 16: scatter_rows_blocked<T, 2>(in, gpre, n, V, taps, nbr, sites, Vr, cout, wt.data(), gin, gwp, bs); break;
      case 32: scatter_rows_blocked<T, 4>(in, gpre, n, V, taps, nbr, sites, Vr, cout, wt.data(), gin, gwp, bs); break;
      default: scatter_rows(in, gpre, n, V, taps, nbr, sites, Vr, cin, cout, wt.data(), gin, gwp, bs);
    }
  });
  if (gin && in_pre) scale_by_derivative(gin, in_pre, n * V * cin, *in_act, isa);
  if (gb)
    for (int co = 0; co < cout; ++co) gb[co] += static_cast<T>(bias_sum[static_cast<std::size_t>(co)]);
  if (gw)
    for (int co = 0; co < cout; ++co)
      for (int ci = 0; ci < cin; ++ci)
        for (int t = 0; t < taps; ++t) {
          const auto k = static_cast<std::size_t>(((t * cout + co) * cin + ci) * dup);
          gw[(static_cast<std::int64_t>(co) * cin + ci) * taps + t] += pairs ? gwt[k] + gwt[k + 1] : gwt[k];
        }
}
}  // namespace

template <class T>
void conv_backward_at(const T* in, const T* gpre, std::int64_t n, std::int64_t V, int taps, const std::int32_t* nbr,
                      const std::int32_t* sites, std::int64_t Vr, int cin, int cout, const T* w, const T* in_pre,
                      const Act* in_act, T* gin, T* gw, T* gb, Isa isa) {
  scatter_at(false, in, gpre, n, V, taps, nbr, sites, Vr, cin, cout, w, in_pre, in_act, gin, gw, gb, isa);
}

template <class T>
void to_pairs(const T* in, std::int64_t n, std::int64_t rows, int C, T* out) {
  const std::int64_t per = rows * C;
  with_isa(Isa::best, [&]() LATFLOW_KERNEL {
    for (std::int64_t p = 0; p < n / 2; ++p) {
      const T* a = in + 2 * p * per;
      const T* b = a + per;
      T* o = out + 2 * p * per;
      std::int64_t e = 0;
      for (; e + 8 <= per; e += 8) {
        const auto u = load<8>(a + e), v = load<8>(b + e);
        store<8>(o + 2 * e, __builtin_shufflevector(u, v, 0, 8, 1, 9, 2, 10, 3, 11));
        store<8>(o + 2 * e + 8, __builtin_shufflevector(u, v, 4, 12, 5, 13, 6, 14, 7, 15));
      }
      for (; e < per; ++e) {
        o[2 * e] = a[e];
        o[2 * e + 1] = b[e];
      }
    }
  });
}

template <class T>
void from_pairs(const T* in, std::int64_t n, std::int64_t rows, int C, T* out) {
  const std::int64_t per = rows * C;
  with_isa(Isa::best, [&]() LATFLOW_KERNEL {
    for (std::int64_t p = 0; p < n / 2; ++p) {
      const T* i = in + 2 * p * per;
      T* a = out + 2 * p * per;
      T* b = a + per;
      std::int64_t e = 0;
      for (; e + 8 <= per; e += 8) {
        const auto u = load<8>(i + 2 * e), v = load<8>(i + 2 * e + 8);
        store<8>(a + e, __builtin_shufflevector(u, v, 0, 2, 4, 6, 8, 10, 12, 14));
        store<8>(b + e, __builtin_shufflevector(u, v, 1, 3, 5, 7, 9, 11, 13, 15));
      }
      for (; e < per; ++e) {
        a[e] = i[2 * e];
        b[e] = i[2 * e + 1];
      }
    }
  });
}

template <class T>
void conv_forward_pairs(const T* in, std::int64_t n, std::int64_t V, int taps, const std::int32_t* nbr, int cin,
                        int cout, const T* w, const T* bias, const Act* act, T* pre, T* out, Isa isa) {
  const auto b2 = pair_bias(bias, cout);
  gather_pairs(in, n / 2, Geo{V, taps, nbr, nullptr, V}, false, cin, cout, arrange_pairs(w, taps, cin, cout, false),
               b2.data(), Sink<T>{act, pre, nullptr, out}, isa);
}

template <class T>
void conv_backward_pairs(const T* in, const T* gpre, std::int64_t n, std::int64_t V, int taps, const std::int32_t* nbr,
                         int cin, int cout, const T* w, const T* in_pre, const Act* in_act, T* gin, T* gw, T* gb,
                         Isa isa) {
  const std::int64_t pairs = n / 2, rows = pairs * V;
  if (gin)
    gather_pairs(gpre, pairs, Geo{V, taps, nbr, nullptr, V}, true, cout, cin, arrange_pairs(w, taps, cin, cout, true),
                 static_cast<const T*>(nullptr), Sink<T>{in_pre ? in_act : nullptr, nullptr, in_pre, gin}, isa);
  if (!gw) return;
  // The bias gradient: float64 sums over the rows of each lane (channel, sample), two rows at a time in separate
  // sums.
  const int lanes2 = 2 * cout;
  std::vector<double> bias_sum(static_cast<std::size_t>(2 * lanes2), 0.0);
  std::int64_t r = 0;
  for (; r + 2 <= rows; r += 2)
    for (int e = 0; e < 2 * lanes2; ++e) bias_sum[static_cast<std::size_t>(e)] += gpre[r * lanes2 + e];
  for (; r < rows; ++r)
    for (int e = 0; e < lanes2; ++e) bias_sum[static_cast<std::size_t>(e)] += gpre[r * lanes2 + e];
  for (int c = 0; c < cout; ++c) {
    const auto k = static_cast<std::size_t>(2 * c), m = static_cast<std::size_t>(lanes2);
    gb[c] += static_cast<T>((bias_sum[k] + bias_sum[m + k]) + (bias_sum[k + 1] + bias_sum[m + k + 1]));
  }
  const std::int64_t coutP = round_up(cout, 8);
  std::vector<T> padded;
  const T* gP = gpre;
  if (coutP != cout) {
    padded.assign(static_cast<std::size_t>(rows * coutP * 2), T(0));
    for (std::int64_t i = 0; i < rows; ++i)
      for (int e = 0; e < 2 * cout; ++e) padded[static_cast<std::size_t>(i * coutP * 2 + e)] = gpre[i * cout * 2 + e];
    gP = padded.data();
  }
  std::vector<T> gwp(static_cast<std::size_t>(taps * cin * coutP), T(0));  // [taps, cin, coutP]
  with_isa(isa, [&]() LATFLOW_KERNEL {
    for (std::int64_t c0 = 0; c0 < coutP; c0 += 8)
      for (int t = 0; t < taps; ++t) {
        int ci = 0;
        for (; ci + 8 <= cin; ci += 8)
          pair_weight_grad_block<T, 8>(in, gP, pairs, V, taps, nbr, cin, ci, coutP, t, c0, gwp.data());
        for (; ci + 4 <= cin; ci += 4)
          pair_weight_grad_block<T, 4>(in, gP, pairs, V, taps, nbr, cin, ci, coutP, t, c0, gwp.data());
        for (; ci + 2 <= cin; ci += 2)
          pair_weight_grad_block<T, 2>(in, gP, pairs, V, taps, nbr, cin, ci, coutP, t, c0, gwp.data());
        for (; ci < cin; ++ci)
          pair_weight_grad_block<T, 1>(in, gP, pairs, V, taps, nbr, cin, ci, coutP, t, c0, gwp.data());
      }
  });
  for (int co = 0; co < cout; ++co)
    for (int ci = 0; ci < cin; ++ci)
      for (int t = 0; t < taps; ++t)
        gw[(static_cast<std::int64_t>(co) * cin + ci) * taps + t] +=
            gwp[static_cast<std::size_t>((static_cast<std::int64_t>(t) * cin + ci) * coutP + co)];
}

template <class T>
void conv_forward_at_pairs(const T* in, std::int64_t n, std::int64_t V, int taps, const std::int32_t* nbr,
                           const std::int32_t* sites, std::int64_t Vr, int cin, int cout, const T* w, const T* bias,
                           T* out, Isa isa) {
  const auto b2 = pair_bias(bias, cout);
  gather_pairs(in, n / 2, Geo{V, taps, nbr, sites, Vr}, false, cin, cout, arrange_pairs(w, taps, cin, cout, false),
               b2.data(), Sink<T>{nullptr, nullptr, nullptr, out}, isa);
}

template <class T>
void conv_backward_at_pairs(const T* in, const T* gpre, std::int64_t n, std::int64_t V, int taps,
                            const std::int32_t* nbr, const std::int32_t* sites, std::int64_t Vr, int cin, int cout,
                            const T* w, const T* in_pre, const Act* in_act, T* gin, T* gw, T* gb, Isa isa) {
  if (cin % 8 != 0 || cin > 32) {  // (no pair kernel: through the ordinary layout)
    std::vector<T> in_o(static_cast<std::size_t>(n * V * cin)), g_o(static_cast<std::size_t>(n * Vr * cout));
    std::vector<T> gin_o(gin ? in_o.size() : 0);
    from_pairs(in, n, V, cin, in_o.data());
    from_pairs(gpre, n, Vr, cout, g_o.data());
    conv_backward_at(in_o.data(), g_o.data(), n, V, taps, nbr, sites, Vr, cin, cout, w, static_cast<const T*>(nullptr),
                     in_act, gin ? gin_o.data() : nullptr, gw, gb, isa);
    if (gin) {
      to_pairs(gin_o.data(), n, V, cin, gin);
      if (in_pre) scale_by_derivative(gin, in_pre, n * V * cin, *in_act, isa);
    }
    return;
  }
  scatter_at(true, in, gpre, n, V, taps, nbr, sites, Vr, cin, cout, w, in_pre, in_act, gin, gw, gb, isa);
}

template <class T>
void scale_by_derivative(T* g, const T* pre, std::int64_t count, Act act, Isa isa) {
  with_isa(isa, [&]() LATFLOW_KERNEL {
    switch (act) {  // (one loop per activation, so that the compiler vectorises each)
      case Act::leaky_relu:
        for (std::int64_t k = 0; k < count; ++k) g[k] *= derivative(pre[k], Act::leaky_relu);
        break;
      case Act::tanh:
        for (std::int64_t k = 0; k < count; ++k) g[k] *= derivative(pre[k], Act::tanh);
        break;
      case Act::silu:
        for (std::int64_t k = 0; k < count; ++k) g[k] *= derivative(pre[k], Act::silu);
        break;
    }
  });
}

#define LATFLOW_INSTANTIATE(T)                                                                                         \
  template void conv_forward<T>(const T*, std::int64_t, std::int64_t, int, const std::int32_t*, int, int, const T*,    \
                                const T*, const Act*, T*, T*, Isa);                                                    \
  template void conv_forward_at<T>(const T*, std::int64_t, std::int64_t, int, const std::int32_t*,                     \
                                   const std::int32_t*, std::int64_t, int, int, const T*, const T*, T*, Isa);          \
  template void conv_backward<T>(const T*, const T*, std::int64_t, std::int64_t, int, const std::int32_t*, int, int,   \
                                 const T*, const T*, const Act*, T*, T*, T*, Isa);                                     \
  template void conv_backward_at<T>(const T*, const T*, std::int64_t, std::int64_t, int, const std::int32_t*,          \
                                    const std::int32_t*, std::int64_t, int, int, const T*, const T*, const Act*, T*,   \
                                    T*, T*, Isa);                                                                      \
  template void conv_forward_pairs<T>(const T*, std::int64_t, std::int64_t, int, const std::int32_t*, int, int,        \
                                      const T*, const T*, const Act*, T*, T*, Isa);                                    \
  template void conv_backward_pairs<T>(const T*, const T*, std::int64_t, std::int64_t, int, const std::int32_t*, int,  \
                                       int, const T*, const T*, const Act*, T*, T*, T*, Isa);                          \
  template void conv_forward_at_pairs<T>(const T*, std::int64_t, std::int64_t, int, const std::int32_t*,               \
                                         const std::int32_t*, std::int64_t, int, int, const T*, const T*, T*, Isa);    \
  template void conv_backward_at_pairs<T>(const T*, const T*, std::int64_t, std::int64_t, int, const std::int32_t*,    \
                                          const std::int32_t*, std::int64_t, int, int, const T*, const T*, const Act*, \
                                          T*, T*, T*, Isa);                                                            \
  template void to_pairs<T>(const T*, std::int64_t, std::int64_t, int, T*);                                            \
  template void from_pairs<T>(const T*, std::int64_t, std::int64_t, int, T*);                                          \
  template void scale_by_derivative<T>(T*, const T*, std::int64_t, Act, Isa);                                          \
  template Arranged<T> arrange_conv<T>(const T*, int, int, int, bool);                                                 \
  template void gather<T>(const T*, std::int64_t, const Geo&, const Arranged<T>&, const T*, const Sink<T>&, Isa);      \
  template bool one_input_conv_groups<T>(const T*, std::int64_t, std::int64_t, const std::vector<TapGroup>&,           \
                                         const Arranged<T>&, const T*, const Sink<T>&, Isa);
LATFLOW_INSTANTIATE(float)
LATFLOW_INSTANTIATE(double)
#undef LATFLOW_INSTANTIATE

}  // namespace latflow::pconv
