// SPDX-License-Identifier: MIT
#include <type_traits>

#include "latflow/kernels/conv_detail.hpp"

namespace latflow::pconv {

// Winograd's minimal filtering F(MxM, 3x3) (Lavin & Gray 2015, arXiv:1509.09308) for the hidden convs of 2D nets
// with 3x3 kernels, in inference: each MxM block of output sites is A^T [(G g G^T) . (B^T d B)] A over the
// (M+2)x(M+2) block d of input sites around it, (M+2)^2 multiply-adds per input and output channel instead of
// 9 M^2: 2.25x fewer for M = 2 (lattice extents even), 4x fewer for M = 4 (extents multiples of 4). The
// transforms' entries are small integers and fractions with short expansions; the results agree with the direct
// convolution to rounding (tests/test_kernels.cpp, float64).

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

namespace {

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
  static constexpr double G[6][3] = {{0.25, 0, 0},
                                     {-1. / 6, -1. / 6, -1. / 6},
                                     {-1. / 6, 1. / 6, -1. / 6},
                                     {1. / 24, 1. / 12, 1. / 6},
                                     {1. / 24, -1. / 12, 1. / 6},
                                     {0, 0, 1}};
  static constexpr double AT[4][6] = {
      {1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};
};

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
    const V x0 = x[0], x1 = x[stride], x2 = x[2 * stride], x3 = x[3 * stride], x4 = x[4 * stride], x5 = x[5 * stride];
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
    const V x0 = x[0], x1 = x[stride], x2 = x[2 * stride], x3 = x[3 * stride], x4 = x[4 * stride], x5 = x[5 * stride];
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
std::vector<T> winograd_weights_m(const T* w, int cin, int cout) {
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

// Tiles are done kTB at a time: their transformed inputs [(M+2)^2][kTB][cinP] and products stay in the L1 cache,
// and each weight vector loaded serves kTB tiles (kTB accumulators hide the FMA latency).
constexpr int kTB = 8;

template <class T, int M, int CH, class S>
__attribute__((always_inline)) inline void winograd_conv_m(const T* in, std::int64_t n, std::int64_t V,
                                                           const WinogradTiles& tiles, int cin_rt, int cout_rt,
                                                           const T* U, const T* bias, const S& sink, T* scratch) {
  constexpr int W = 8, A = M + 2;
  const int cin = CH ? CH : cin_rt, cout = CH ? CH : cout_rt;
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
          for (int v = 0; v < A; ++v)
            m[u][v] = load<W>(Mt + (static_cast<std::int64_t>(u * A + v) * kTB + q) * coutP + c0);
#pragma GCC unroll 8
        for (int v = 0; v < A; ++v) transform_AT<M, V_t, T>(&m[0][v], A, &r[0][v], A);  // A^T m
#pragma GCC unroll 8
        for (int i = 0; i < M; ++i) transform_AT<M, V_t, T>(&r[i][0], 1, &y[i][0], 1);  // (A^T m) A
        const V_t bv = load_lanes<W>(bias, c0, cout);
        const int valid = static_cast<int>(std::min<std::int64_t>(W, cout - c0));
#pragma GCC unroll 8
        for (int i = 0; i < M; ++i)
#pragma GCC unroll 8
          for (int j = 0; j < M; ++j)
            sink.template put<W>((b * V + sites[i * M + j]) * cout + c0, c0, y[i][j] + bv, valid);
      }
    }
  }
}

// The last conv of a Z2 affine coupling at the rows of g: s[r] = bias_s + sum_{t,k} Ws[t][k] u(nbr, k) and
// t[r] = sum_{t,k} Wt[t][k] w(nbr, k), from in [n, V, 2C] holding (u, w) per site, C a multiple of 8, Ws and Wt
// [taps][C]. One pass over the neighbours serves both outputs (u and w of a site share a cache line for C = 8);

}  // namespace

template <class T>
std::vector<T> winograd_weights(const T* w, int cin, int cout, int M) {
  return M == 4 ? winograd_weights_m<T, 4>(w, cin, cout) : winograd_weights_m<T, 2>(w, cin, cout);
}

std::size_t winograd_scratch_size(int M, int cin, int cout) {
  return static_cast<std::size_t>((M + 2) * (M + 2) * kTB * (round_up(cin, 8) + round_up(cout, 8)));
}

template <class T>
void winograd_conv(const T* in, std::int64_t n, std::int64_t V, const WinogradTiles& tiles, int cin, int cout,
                   const T* U, const T* bias, const Sink<T>& sink, T* scratch, Isa isa) {
  // Each variant in its own instruction-set wrapper (one function holding all of them was optimised worse).
  auto run = [&](auto m, auto ch) {
    if constexpr (decltype(ch)::value == 8) {
      if (sink.only_out() && sink.act && *sink.act == Act::leaky_relu) {  // inference's hidden convs
        const OutSink<T, true> out{sink.out};
        with_isa(isa, [&]() LATFLOW_KERNEL {
          winograd_conv_m<T, decltype(m)::value, 8>(in, n, V, tiles, cin, cout, U, bias, out, scratch);
        });
        return;
      }
    }
    with_isa(isa, [&]() LATFLOW_KERNEL {
      winograd_conv_m<T, decltype(m)::value, decltype(ch)::value>(in, n, V, tiles, cin, cout, U, bias, sink, scratch);
    });
  };
  using std::integral_constant;
  if (tiles.M == 4 && cin == 8 && cout == 8)  // the channel loops unrolled
    run(integral_constant<int, 4>{}, integral_constant<int, 8>{});
  else if (tiles.M == 4)
    run(integral_constant<int, 4>{}, integral_constant<int, 0>{});
  else
    run(integral_constant<int, 2>{}, integral_constant<int, 0>{});
}

template <class T>
bool conv_forward_winograd(const T* in, std::int64_t n, std::int64_t L0, std::int64_t L1, int cin, int cout, const T* w,
                           const T* bias, const Act* act, T* out, Isa isa) {
  if (cin % 8 != 0 || L0 % 2 != 0 || L1 % 2 != 0) return false;
  const int M = L0 % 4 == 0 && L1 % 4 == 0 ? 4 : 2;
  const auto tiles = winograd_tiles(L0, L1, M);
  const auto U = winograd_weights(w, cin, cout, M);
  std::vector<T> scratch(winograd_scratch_size(M, cin, cout));
  winograd_conv(in, n, L0 * L1, tiles, cin, cout, U.data(), bias, Sink<T>{act, nullptr, nullptr, out}, scratch.data(),
                isa);
  return true;
}

#define LATFLOW_INSTANTIATE(T)                                                                                   \
  template bool conv_forward_winograd<T>(const T*, std::int64_t, std::int64_t, std::int64_t, int, int, const T*, \
                                         const T*, const Act*, T*, Isa);                                         \
  template std::vector<T> winograd_weights<T>(const T*, int, int, int);                                          \
  template void winograd_conv<T>(const T*, std::int64_t, std::int64_t, const WinogradTiles&, int, int, const T*, \
                                 const T*, const Sink<T>&, T*, Isa);
LATFLOW_INSTANTIATE(float)
LATFLOW_INSTANTIATE(double)
#undef LATFLOW_INSTANTIATE

}  // namespace latflow::pconv
