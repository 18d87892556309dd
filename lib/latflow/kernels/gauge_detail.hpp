// SPDX-License-Identifier: MIT
// Internal to lib/latflow/kernels (gauge_kernels.cpp, u1_grad.cpp): what the gauge layers' inference kernels and
// the U(1) training kernels share: angle reductions as LibTorch computes them, U(1) plaquettes of the angle
// storage, and the spline and NCP maps of gauge.cpp in float64.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "latflow/kernels/gauge_kernels.hpp"
#include "latflow/kernels/lane_math.hpp"

namespace latflow::gauge_kernels {

// The functions the SU(N) kernels call, inlined into them so that pconv::with_isa compiles them per instruction
// set (gauge_kernels.cpp).
#define LATFLOW_GAUGE_INLINE __attribute__((always_inline)) inline

constexpr double kTwoPi = 2 * M_PI;

// The periodic coordinate of x in [-L, 2L) (the kernels step at most one site past either end), without a division.
LATFLOW_GAUGE_INLINE std::int64_t wrap(std::int64_t x, std::int64_t L) { return x >= L ? x - L : (x < 0 ? x + L : x); }
constexpr double kMinBin = 1e-3, kMinDeriv = 1e-3;  // as gauge.cpp's SplineKnots

// LibTorch's remainder (the sign of the divisor), exact: fmod, then shifted by b.
LATFLOW_GAUGE_INLINE double remainder(double a, double b) {
  const double m = std::fmod(a, b);
  return m != 0 && ((b < 0) != (m < 0)) ? m + b : m;
}
LATFLOW_GAUGE_INLINE double remainder_2pi(double a) { return remainder(a, kTwoPi); }
inline double centred(double a) { return remainder(a + M_PI, kTwoPi) - M_PI; }  // gauge.cpp's centred

// Knots of a monotone rational-quadratic spline of [lo, hi] from 3K + 1 raw net outputs r(c) (SplineKnots and
// spline_knots in gauge.cpp / flow.cpp: softmax widths and heights with a floor, softplus slopes). The slopes are
// computed only at the two knots of the bin that is used.
struct Spline {
  int K;
  std::vector<double> xk, yk;
  std::vector<double> wsoft, hsoft;  // the softmax of the width and of the height outputs
  std::vector<double> slopes_raw;
  explicit Spline(int bins) : K(bins), xk(bins + 1), yk(bins + 1), wsoft(bins), hsoft(bins), slopes_raw(bins + 1) {}

  // The slope of knot i is kMinDeriv + softplus(raw + slope_shift()): a zero output gives slope 1.
  static double slope_shift() {
    static const double shift = std::log(std::expm1(1.0 - kMinDeriv));
    return shift;
  }

  bool periodic = false;  // K slopes, the last knot's equal to the first's (gauge.cpp's circular spline)

  template <class R>
  LATFLOW_GAUGE_INLINE void set(const R& r, double lo, double hi, bool circular = false) {
    periodic = circular;
    auto knots = [&](int off, std::vector<double>& k, std::vector<double>& soft) {
      double m = r(off);
      for (int i = 1; i < K; ++i) m = std::max(m, r(off + i));
      double sum = 0;
      for (int i = 0; i < K; ++i) sum += soft[i] = std::exp(r(off + i) - m);
      for (int i = 0; i < K; ++i) soft[i] /= sum;
      double c = 0;
      k[0] = lo;
      for (int i = 0; i < K - 1; ++i) {
        c += kMinBin + (1 - K * kMinBin) * soft[i];
        k[i + 1] = c * (hi - lo) + lo;
      }
      k[K] = hi;
    };
    knots(0, xk, wsoft);
    knots(K, yk, hsoft);
    for (int i = 0; i < (periodic ? K : K + 1); ++i) slopes_raw[i] = r(2 * K + i);
  }

  LATFLOW_GAUGE_INLINE double slope(int i) const {
    const double z = slopes_raw[periodic && i == K ? 0 : i] + slope_shift();
    return kMinDeriv + (z > 20 ? z : std::log1p(std::exp(z)));  // LibTorch's softplus threshold
  }

  // rational_quadratic (flow.cpp) at one point: (y, log dy/dv), or for inverse (x, -log dy/dx at x).
  LATFLOW_GAUGE_INLINE std::pair<double, double> operator()(double v, bool inverse) const {
    const std::vector<double>& search = inverse ? yk : xk;
    int bin = 0;
    while (bin < K - 1 && search[bin + 1] <= v) ++bin;
    const double x0 = xk[bin], x1 = xk[bin + 1], y0 = yk[bin], y1 = yk[bin + 1], d0 = slope(bin), d1 = slope(bin + 1);
    const double w = x1 - x0, h = y1 - y0, s = h / w;
    double xi;
    if (!inverse) {
      xi = std::clamp((v - x0) / w, 0.0, 1.0);
    } else {
      const double dy = v - y0, c2 = d1 + d0 - 2 * s;
      const double a = h * (s - d0) + dy * c2, b = h * d0 - dy * c2, c = -s * dy;
      const double disc = std::max(b * b - 4 * a * c, 0.0);
      xi = std::clamp(2 * c / (-b - std::sqrt(disc)), 0.0, 1.0);
    }
    const double xi1 = xi * (1 - xi), den = s + (d1 + d0 - 2 * s) * xi1;
    // log(s^2 (d1 xi^2 + 2 s xi (1 - xi) + d0 (1 - xi)^2) / den^2) with one logarithm instead of three (no
    // factor comes near double's range: widths, heights and slopes have floors of 1e-3 and the slopes are softplus
    // outputs of the nets).
    const double ls = std::log(s * s * (d1 * xi * xi + 2 * s * xi1 + d0 * (1 - xi) * (1 - xi)) / (den * den));
    if (!inverse) return {y0 + h * (s * xi * xi + d0 * xi1) / den, ls};
    return {x0 + xi * w, -ls};
  }
};

// Spline's circular form (periodic slopes, on [0, 2 pi]) for W sites at once, one per lane of a double vector,
// by the same formulas in the same order; exp, log and log1p by lane_math.hpp's double lanes (within 2 ulp of
// libm's), so results agree with Spline's to rounding. For the U(1) kernels, which run it per instruction set.
template <int W>
struct SplineLanes {
  using D = pconv::vec_t<double, W>;
  using I = pconv::vec_t<std::int64_t, W>;
  // A vector of lanes to keep in a std::vector: aligned for every instruction set (code compiled for baseline x86-64
  // aligns a 64-byte vector to 16 bytes only, while AVX-512 code loads it as aligned to 64).
  struct alignas(64) Held {
    D v;
  };
  using Lanes = std::vector<Held>;
  int K;
  Lanes xk, yk, wsoft, hsoft, raw;  // knots (K + 1 each), the softmax of the widths and heights, slopes' raw outputs
  explicit SplineLanes(int bins) : K(bins), xk(bins + 1), yk(bins + 1), wsoft(bins), hsoft(bins), raw(bins) {}

  // From r[c], the raw output c of each lane's site (3K + 1 of them; the last, the rotation, is not read).
  LATFLOW_GAUGE_INLINE void set(const Held* r) {
    auto knots = [&](int off, Lanes& k, Lanes& soft) LATFLOW_KERNEL {
      D m = r[off].v;
      for (int i = 1; i < K; ++i) m = r[off + i].v > m ? r[off + i].v : m;
      D sum{};
      for (int i = 0; i < K; ++i) sum += soft[i].v = pconv::exp_lanes_d<W>(r[off + i].v - m);
      for (int i = 0; i < K; ++i) soft[i].v /= sum;
      D c{};
      k[0].v = D{};
      for (int i = 0; i < K - 1; ++i) {
        c += kMinBin + (1 - K * kMinBin) * soft[i].v;
        k[i + 1].v = c * kTwoPi;
      }
      k[K].v = D{} + kTwoPi;
    };
    knots(0, xk, wsoft);
    knots(K, yk, hsoft);
    for (int i = 0; i < K; ++i) raw[i].v = r[2 * K + i].v;
  }

  LATFLOW_GAUGE_INLINE D slope(D raw_out) const {
    const D z = raw_out + Spline::slope_shift();
    const D sp = pconv::log1p_lanes_d<W>(pconv::exp_lanes_d<W>(z > 20.0 ? D{} + 20 : z));
    return kMinDeriv + (z > 20.0 ? z : sp);
  }

  // Each lane's bin at v (in y for inverse): its index, knots and the raw outputs of its two slopes.
  struct Bin {
    I index;
    D x0, x1, y0, y1, r0, r1;
  };
  LATFLOW_GAUGE_INLINE Bin bin(D v, bool inverse) const {
    const Lanes& search = inverse ? yk : xk;
    Bin b{I{}, xk[0].v, xk[1].v, yk[0].v, yk[1].v, raw[0].v, raw[1 % K].v};
    for (int k = 1; k < K; ++k) b.index -= search[k].v <= v;  // (true is -1): the knots below v, Spline's bin
    for (int k = 1; k < K; ++k) {
      const auto here = b.index == k;
      b.x0 = here ? xk[k].v : b.x0;
      b.x1 = here ? xk[k + 1].v : b.x1;
      b.y0 = here ? yk[k].v : b.y0;
      b.y1 = here ? yk[k + 1].v : b.y1;
      b.r0 = here ? raw[k].v : b.r0;
      b.r1 = here ? raw[(k + 1) % K].v : b.r1;  // (the last knot's slope is the first's)
    }
    return b;
  }

  // Spline::operator() in each lane: out = y and ls = log dy/dv at v, or for inverse out = x and ls = -log dy/dx.
  LATFLOW_GAUGE_INLINE void operator()(D v, bool inverse, D& out, D& ls) const {
    const Bin bn = bin(v, inverse);
    const D x0 = bn.x0, x1 = bn.x1, y0 = bn.y0, y1 = bn.y1, d0 = slope(bn.r0), d1 = slope(bn.r1);
    const D w = x1 - x0, h = y1 - y0, s = h / w;
    auto clamp01 = [](D u) LATFLOW_KERNEL { return u < 0.0 ? D{} : (u > 1.0 ? D{} + 1 : u); };
    D xi;
    if (!inverse) {
      xi = clamp01((v - x0) / w);
    } else {
      const D dy = v - y0, c2 = d1 + d0 - 2 * s;
      const D a = h * (s - d0) + dy * c2, b = h * d0 - dy * c2, c = -s * dy;
      D disc = b * b - 4 * a * c;
      disc = disc < 0.0 ? D{} : disc;
      for (int j = 0; j < W; ++j) disc[j] = std::sqrt(disc[j]);
      xi = clamp01(2 * c / (-b - disc));
    }
    const D xi1 = xi * (1 - xi), den = s + (d1 + d0 - 2 * s) * xi1;
    ls = pconv::log_lanes_d<W>(s * s * (d1 * xi * xi + 2 * s * xi1 + d0 * (1 - xi) * (1 - xi)) / (den * den));
    if (!inverse) {
      out = y0 + h * (s * xi * xi + d0 * xi1) / den;
    } else {
      out = x0 + xi * w;
      ls = -ls;
    }
  }
};

template <class T>
struct Angles {
  const T* x;
  const Shape& s;
  LATFLOW_GAUGE_INLINE std::int64_t at(std::int64_t b, int dir, std::int64_t x0, std::int64_t x1) const {
    return ((b * 2 + dir) * s.L0 + wrap(x0, s.L0)) * s.L1 + wrap(x1, s.L1);
  }
  // U1::plaquettes: theta_0(x) + theta_1(x + e0) - theta_0(x + e1) - theta_1(x), not reduced.
  LATFLOW_GAUGE_INLINE double plaquette(std::int64_t b, std::int64_t x0, std::int64_t x1) const {
    return (static_cast<double>(x[at(b, 0, x0, x1)]) + static_cast<double>(x[at(b, 1, x0 + 1, x1)])) -
           static_cast<double>(x[at(b, 0, x0, x1 + 1)]) - static_cast<double>(x[at(b, 1, x0, x1)]);
  }
};

// The NCP mixture of gauge.cpp's kernel: h(theta) = sum_k rho_k 2 atan2(alpha_k sin(theta/2), cos(theta/2)) on
// [-pi, pi] and its slope.
struct Ncp {
  int K;
  std::vector<double> alpha, rho;
  explicit Ncp(int k) : K(k), alpha(k), rho(k) {}
  template <class R>
  void set(const R& r) {
    constexpr double kMaxLogAlpha = 6.0;  // gauge.cpp
    double m = r(K);
    for (int k = 1; k < K; ++k) m = std::max(m, r(K + k));
    double sum = 0;
    for (int k = 0; k < K; ++k) {
      alpha[k] = std::exp(kMaxLogAlpha * std::tanh(r(k) / kMaxLogAlpha));
      sum += rho[k] = std::exp(r(K + k) - m);
    }
    for (auto& v : rho) v /= sum;
  }
  double h(double th) const {
    const double c = std::cos(th / 2), s = std::sin(th / 2);
    double out = 0;
    for (int k = 0; k < K; ++k) out += rho[k] * 2 * std::atan2(alpha[k] * s, c);
    return out;
  }
  double slope(double th) const {
    const double c = std::cos(th / 2), s = std::sin(th / 2);
    double out = 0;
    for (int k = 0; k < K; ++k) out += rho[k] * alpha[k] / (c * c + alpha[k] * alpha[k] * s * s);
    return out;
  }
  // h^{-1}(target) for target in [-pi, pi): bisection on [-pi, pi] (64 halvings reach the rounding), then one
  // Newton step (gauge.cpp's kernel does the same).
  double inverse(double target) const {
    double lo = -M_PI, hi = M_PI;
    for (int it = 0; it < 64; ++it) {
      const double mid = 0.5 * (lo + hi);
      (h(mid) < target ? lo : hi) = mid;
    }
    const double root = 0.5 * (lo + hi);
    return root + (target - h(root)) / slope(root);
  }
};

}  // namespace latflow::gauge_kernels
