// SPDX-License-Identifier: MIT
#include "latflow/kernels/gauge_kernels.hpp"

#include "latflow/kernels/gauge_detail.hpp"
#include "latflow/kernels/simd.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <complex>
#include <vector>

namespace latflow::gauge_kernels {
namespace {

using C = std::complex<double>;

template <int N>
using Mat = std::array<C, N * N>;

template <int N>
LATFLOW_GAUGE_INLINE Mat<N> mul(const Mat<N>& a, const Mat<N>& b) {
  Mat<N> c{};
  for (int i = 0; i < N; ++i)
    for (int k = 0; k < N; ++k)
      for (int j = 0; j < N; ++j) c[i * N + j] += a[i * N + k] * b[k * N + j];
  return c;
}

template <int N>
LATFLOW_GAUGE_INLINE Mat<N> dagger(const Mat<N>& a) {
  Mat<N> c;
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < N; ++j) c[i * N + j] = std::conj(a[j * N + i]);
  return c;
}

template <int N>
LATFLOW_GAUGE_INLINE C trace(const Mat<N>& a) {
  C t = 0;
  for (int i = 0; i < N; ++i) t += a[i * N + i];
  return t;
}

// The links' real storage [B, 2, L0, L1, N, N, 2].
template <int N, class T>
struct Links {
  T* x;
  const Shape& s;
  LATFLOW_GAUGE_INLINE T* at(std::int64_t b, int dir, std::int64_t x0, std::int64_t x1) const {
    return x + ((((b * 2 + dir) * s.L0 + wrap(x0, s.L0)) * s.L1 + wrap(x1, s.L1)) * N * N) * 2;
  }
  LATFLOW_GAUGE_INLINE Mat<N> get(std::int64_t b, int dir, std::int64_t x0, std::int64_t x1) const {
    const T* p = at(b, dir, x0, x1);
    Mat<N> m;
    for (int i = 0; i < N * N; ++i) m[i] = C(static_cast<double>(p[2 * i]), static_cast<double>(p[2 * i + 1]));
    return m;
  }
  LATFLOW_GAUGE_INLINE void set(std::int64_t b, int dir, std::int64_t x0, std::int64_t x1, const Mat<N>& m) const {
    T* p = at(b, dir, x0, x1);
    for (int i = 0; i < N * N; ++i) {
      p[2 * i] = static_cast<T>(m[i].real());
      p[2 * i + 1] = static_cast<T>(m[i].imag());
    }
  }
  // U_P(x) = U_0(x) U_1(x + e0) U_0(x + e1)^+ U_1(x)^+ (SUN::plaquettes).
  LATFLOW_GAUGE_INLINE Mat<N> plaquette(std::int64_t b, std::int64_t x0, std::int64_t x1) const {
    return mul<N>(mul<N>(get(b, 0, x0, x1), get(b, 1, x0 + 1, x1)),
                  mul<N>(dagger<N>(get(b, 0, x0, x1 + 1)), dagger<N>(get(b, 1, x0, x1))));
  }
};

// g / g' for g = sin(3 theta / 2) - Im(t e^{i theta / 2}) (gauge.cpp newton_step), from s = sin(theta / 2) and
// c = cos(theta / 2): the triple angle by its polynomial.
LATFLOW_GAUGE_INLINE double newton_step(double s, double c, C t) {
  const C half = C(c, s) * t;
  const double g = s * (3 - 4 * s * s) - half.imag(), gp = 1.5 * c * (4 * c * c - 3) - 0.5 * half.real();
  return std::abs(gp) > 1e-12 ? g / gp : 0.0;
}

// (c, s) = (cos, sin) of an angle alpha becomes that of alpha - x, for |x| <= 1e-3: cos x and sin x by their
// Taylor series, whose first omitted terms (x^6 / 720, x^7 / 5040) are below 2e-21 there. Saves a sincos for each
// small turn (the Newton steps, the phases' mean).
LATFLOW_GAUGE_INLINE void turn(double& c, double& s, double x) {
  const double x2 = x * x;
  const double sx = x * (1 - x2 / 6 * (1 - x2 / 20)), cx = 1 - x2 / 2 * (1 - x2 / 12);
  const double c1 = c * cx + s * sx;
  s = s * cx - c * sx;
  c = c1;
}

// The eigenphases in the alcove order and the eigenvalues e^{i theta_k}.
struct Alcove {
  std::array<double, 3> th;
  std::array<C, 3> e;
};

// su3_alcove_phases (gauge.cpp) for one matrix with trace t, and e^{i theta_k}: each phase's half-angle sine and
// cosine follow from Cardano's root and are turned along with the Newton steps, the eigenvalues from them by the
// double angle (no sincos, where the formula's three steps and the eigenvalue took four).
LATFLOW_GAUGE_INLINE Alcove alcove_phases(C t) {
  const C a = std::conj(t) - t * t / 3.0, b = t * std::conj(t) / 3.0 - 2.0 / 27 * t * t * t - 1.0;
  const C disc = std::sqrt(b * b / 4.0 + a * a * a / 27.0);
  const C cp = -b / 2.0 + disc, cm = -b / 2.0 - disc;
  const C c3 = std::norm(cp) >= std::norm(cm) ? cp : cm;
  const bool nonzero = c3 != C(0);
  // The principal cube root, as std::pow(c3, 1 / 3) (whose modulus is exp(log|c3| / 3)).
  const C c = nonzero ? std::polar(std::cbrt(std::abs(c3)), std::arg(c3) / 3) : C(1);
  static const C omega[3] = {C(1), std::polar(1.0, kTwoPi / 3), std::polar(1.0, 2 * kTwoPi / 3)};
  Alcove al;
  auto& phi = al.th;
  for (int k = 0; k < 3; ++k) {
    const C ck = c * omega[k];
    const C mu = nonzero ? ck - a / (3.0 * ck) : C(0);
    const C lambda = mu + t / 3.0;
    double th = std::arg(lambda);
    // sin and cos of theta / 2 in (-pi / 2, pi / 2] from those of theta by the half-angle formulas, each where it
    // does not cancel.
    double sn, cs;
    {
      const double r = std::abs(lambda);  // ~1 (an eigenvalue of a unitary matrix); 0 only for broken input,
      const double co = r > 0 ? lambda.real() / r : 1, si = r > 0 ? lambda.imag() / r : 0;  // where arg gives 0
      if (co >= 0) {
        cs = std::sqrt((1 + co) / 2);
        sn = si / (2 * cs);
      } else {
        sn = std::copysign(std::sqrt((1 - co) / 2), si);
        cs = si / (2 * sn);
      }
    }
    for (int it = 0; it < 3; ++it) {
      const double step = std::clamp(newton_step(sn, cs, t), -1e-3, 1e-3);
      th -= step;
      turn(cs, sn, step / 2);
    }
    phi[k] = remainder_2pi(th + M_PI) - M_PI;  // (a turn by 2 pi leaves e^{i theta})
    al.e[k] = C(cs * cs - sn * sn, 2 * sn * cs);
  }
  // Sort descending, carrying the eigenvalues.
  auto swap_if = [&](int i, int j) {
    if (phi[i] < phi[j]) {
      std::swap(phi[i], phi[j]);
      std::swap(al.e[i], al.e[j]);
    }
  };
  swap_if(0, 1);
  swap_if(1, 2);
  swap_if(0, 1);
  const double m = std::nearbyint((phi[0] + phi[1] + phi[2]) / kTwoPi);
  if (m > 0.5) {
    phi = {phi[1], phi[2], phi[0] - kTwoPi};
    al.e = {al.e[1], al.e[2], al.e[0]};
  }
  if (m < -0.5) {
    phi = {phi[2] + kTwoPi, phi[0], phi[1]};
    al.e = {al.e[2], al.e[0], al.e[1]};
  }
  const double mean = (phi[0] + phi[1] + phi[2]) / 3;
  for (auto& p : phi) p -= mean;
  if (mean != 0)
    for (auto& e : al.e) {
      if (std::abs(mean) <= 1e-3) {
        double re = e.real(), im = e.imag();
        turn(re, im, mean);
        e = C(re, im);
      } else {
        e *= std::polar(1.0, -mean);
      }
    }
  return al;
}

LATFLOW_GAUGE_INLINE C divided(C num, C den) { return std::norm(den) > 1e-26 ? num / den : C(0); }  // |den| > 1e-13

// R (P' = R P) and the log-det at one active site; r(c) reads the net's raw outputs there.
template <class T>
LATFLOW_GAUGE_INLINE double kernel(const Mat<2>& P, Spline& sp, const T* par, std::int64_t stride, bool inverse,
                                   double eps, Mat<2>& R) {
  sp.set([&](int c) { return static_cast<double>(par[c * stride]); }, 0, M_PI);
  const double c = trace<2>(P).real() / 2;
  double s2 = 0;
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) s2 += std::norm((P[i * 2 + j] - std::conj(P[j * 2 + i])) / 2.0);
  const double s = std::sqrt(std::max(s2 / 2, eps)), theta = std::atan2(s, c);
  const auto [h, ls] = sp(theta, inverse);
  const double d = h - theta, f = std::sin(d) / s;
  for (int i = 0; i < 4; ++i) R[i] = f * P[i];
  R[0] += std::cos(d) - f * c;
  R[3] += std::cos(d) - f * c;
  return ls + 2 * std::log(std::sin(h)) - 2 * std::log(s);
}

template <class T>
LATFLOW_GAUGE_INLINE double kernel(const Mat<3>& P, Spline& sp, Spline& sp2, const T* par, std::int64_t stride,
                                   bool inverse, Mat<3>& R) {
  const int np = 3 * sp.K + 1;
  sp.set([&](int c) { return static_cast<double>(par[c * stride]); }, 0, 1);
  sp2.set([&](int c) { return static_cast<double>(par[(np + c) * stride]); }, 0, 1);
  const Alcove al = alcove_phases(trace<3>(P));
  const auto& th = al.th;
  const double lo = 1e-12;
  const double w1 = std::clamp((th[0] - th[1]) / kTwoPi, lo, 1 - lo);
  const double w2 = std::clamp((th[1] - th[2]) / kTwoPi, lo, 1 - lo);
  const double v = std::clamp(w2 / (1 - w1), lo, 1 - lo);
  const auto [w1n, ls1] = sp(w1, inverse);
  const auto [vn, ls2] = sp2(v, inverse);
  const double a = kTwoPi * w1n, b = kTwoPi * vn * (1 - w1n), t2 = (b - a) / 3;
  // The new phases {t2 + a, t2, t2 - b}: e^{i theta'_k} from the half angles of a and b and from t2 (three sincos
  // where rho_k and the two Vandermonde factors took nine sin and cos).
  const double sa = std::sin(a / 2), ca = std::cos(a / 2), sb = std::sin(b / 2), cb = std::cos(b / 2);
  const C et = std::polar(1.0, t2), ea(ca * ca - sa * sa, 2 * sa * ca), eb(cb * cb - sb * sb, -2 * sb * cb);
  const C en[3] = {et * ea, et, et * eb};
  C l[3], r[3];
  for (int k = 0; k < 3; ++k) {
    l[k] = al.e[k];
    r[k] = en[k] * std::conj(l[k]);
  }
  const C d12 = divided(r[1] - r[0], l[1] - l[0]), d23 = divided(r[2] - r[1], l[2] - l[1]);
  const C d123 = divided(d23 - d12, l[2] - l[0]);
  const C c0 = r[0] - d12 * l[0] + d123 * l[0] * l[1], c1 = d12 - d123 * (l[0] + l[1]), c2 = d123;
  const Mat<3> P2 = mul<3>(P, P);
  for (int i = 0; i < 9; ++i) R[i] = c1 * P[i] + c2 * P2[i];
  for (int i = 0; i < 3; ++i) R[i * 4] += c0;
  // |Delta(e^{i theta})|^2 = prod_{j < k} 4 sin^2((theta_j - theta_k) / 2) = prod |e^{i theta_j} - e^{i theta_k}|^2
  // (gauge.cpp log_vandermonde); the new one's differences are a, b and a + b. One logarithm of the ratios.
  const double sab = sa * cb + ca * sb;  // sin((a + b) / 2)
  const double vnew = 64 * (sa * sa) * (sb * sb) * (sab * sab);
  const double vold = std::norm(l[0] - l[1]) * std::norm(l[1] - l[2]) * std::norm(l[0] - l[2]);
  return ls1 + ls2 + std::log((1 - w1n) / (1 - w1) * (vnew / vold));
}

template <int N, class T>
LATFLOW_GAUGE_INLINE void update_n(T* x, const T* par, const Shape& s, const std::int32_t* active, std::int64_t Va,
                                   int mu, int bins, bool inverse, double* log_det) {
  const Links<N, T> u{x, s};
  const std::int64_t channels = (N == 2 ? 1 : 2) * (3 * bins + 1);
  const double eps = sizeof(T) == sizeof(double) ? 1e-150 : 1e-30;  // as su2_kernel's floor on sin theta
  Spline sp(bins), sp2(bins);
  for (std::int64_t b = 0; b < s.batch; ++b) {
    double ld = 0;
    for (std::int64_t i = 0; i < Va; ++i) {
      const std::int64_t x0 = active[i] / s.L1, x1 = active[i] % s.L1;
      const Mat<N> P = u.plaquette(b, x0, x1);
      const T* p = par + (b * Va + i) * channels;
      Mat<N> R;
      if constexpr (N == 2)
        ld += kernel(P, sp, p, 1, inverse, eps, R);
      else
        ld += kernel(P, sp, sp2, p, 1, inverse, R);
      u.set(b, mu, x0, x1, mul<N>(mu == 0 ? R : dagger<N>(R), u.get(b, mu, x0, x1)));
    }
    log_det[b] += ld;
  }
}

template <int N, class T>
LATFLOW_GAUGE_INLINE void context_n(const T* x, const Shape& s, const std::uint8_t* frozen, T* ctx) {
  const Links<N, T> u{const_cast<T*>(x), s};
  const std::int64_t V = s.L0 * s.L1;
  const int C_ = N == 2 ? 1 : 2;
  for (std::int64_t b = 0; b < s.batch; ++b)
    for (std::int64_t x0 = 0; x0 < s.L0; ++x0)
      for (std::int64_t x1 = 0; x1 < s.L1; ++x1) {
        const std::int64_t site = x0 * s.L1 + x1;
        C t = 0;
        if (frozen[site]) t = trace<N>(u.plaquette(b, x0, x1)) / static_cast<double>(N);
        ctx[(b * C_) * V + site] = static_cast<T>(t.real());
        if (C_ == 2) ctx[(b * C_ + 1) * V + site] = static_cast<T>(t.imag());
      }
}

}  // namespace

// (Each compiled per instruction set, pconv::with_isa: the scalar complex arithmetic gains from FMA.)
template <class T>
void spectral_context(const T* x, const Shape& s, const std::uint8_t* frozen, T* ctx, pconv::Isa isa) {
  if (s.n == 2)
    pconv::with_isa(isa, [&]() LATFLOW_KERNEL { context_n<2>(x, s, frozen, ctx); });
  else
    pconv::with_isa(isa, [&]() LATFLOW_KERNEL { context_n<3>(x, s, frozen, ctx); });
}

template <class T>
void spectral_update(T* x, const T* par, const Shape& s, const std::int32_t* active, std::int64_t Va, int mu, int bins,
                     bool inverse, double* log_det, pconv::Isa isa) {
  if (s.n == 2)
    pconv::with_isa(isa, [&]() LATFLOW_KERNEL { update_n<2>(x, par, s, active, Va, mu, bins, inverse, log_det); });
  else
    pconv::with_isa(isa, [&]() LATFLOW_KERNEL { update_n<3>(x, par, s, active, Va, mu, bins, inverse, log_det); });
}

namespace {

template <class T>
LATFLOW_GAUGE_INLINE void u1_context_body(const T* x, const Shape& s, const std::uint8_t* frozen,
                                          const std::uint8_t* frozen_rect0, const std::uint8_t* frozen_rect1, T* ctx) {
  const Angles<T> a{x, s};
  const std::int64_t V = s.L0 * s.L1;
  const int C = frozen_rect0 ? 6 : 2;
  // cos and sin of every frozen plaquette once, in double lanes (only frozen plaquettes are read: a frozen loop's
  // are frozen sites); those of the loops P(x) + P(x + e) by the angle-addition formulas.
  std::vector<double> cp(static_cast<std::size_t>(V)), sp(static_cast<std::size_t>(V));
  std::vector<std::int64_t> sites;
  for (std::int64_t site = 0; site < V; ++site)
    if (frozen[site]) sites.push_back(site);
  const auto nf = static_cast<std::int64_t>(sites.size());
  constexpr int W = 8;
  for (std::int64_t b = 0; b < s.batch; ++b) {
    for (std::int64_t i = 0; i < nf; i += W) {
      pconv::vec_t<double, W> p{}, sn, cs;
      const int n = static_cast<int>(std::min<std::int64_t>(W, nf - i));
      for (int j = 0; j < n; ++j) {
        const std::int64_t site = sites[static_cast<std::size_t>(i + j)];
        p[j] = a.plaquette(b, site / s.L1, site % s.L1);
      }
      pconv::sincos_lanes_d<W>(p, sn, cs);
      for (int j = 0; j < n; ++j) {
        const auto site = static_cast<std::size_t>(sites[static_cast<std::size_t>(i + j)]);
        cp[site] = cs[j];
        sp[site] = sn[j];
      }
    }
    T* out = ctx + b * C * V;
    auto put = [&](int channel, std::int64_t site, bool on, double c, double sn) {
      out[channel * V + site] = on ? static_cast<T>(c) : T(0);
      out[(channel + 1) * V + site] = on ? static_cast<T>(sn) : T(0);
    };
    for (std::int64_t x0 = 0; x0 < s.L0; ++x0)
      for (std::int64_t x1 = 0; x1 < s.L1; ++x1) {
        const std::int64_t site = x0 * s.L1 + x1;
        put(0, site, frozen[site], cp[site], sp[site]);
        if (!frozen_rect0) continue;
        const std::int64_t n0 = ((x0 + 1) % s.L0) * s.L1 + x1, n1 = x0 * s.L1 + (x1 + 1) % s.L1;
        put(2, site, frozen_rect0[site], cp[site] * cp[n0] - sp[site] * sp[n0], sp[site] * cp[n0] + cp[site] * sp[n0]);
        put(4, site, frozen_rect1[site], cp[site] * cp[n1] - sp[site] * sp[n1], sp[site] * cp[n1] + cp[site] * sp[n1]);
      }
  }
}

// The spline layer's update (u1_update) with SplineLanes over W active sites at a time, the rows (sample, site) in
// order; each sample's log-det summed in the order of its sites, as the scalar loop does.
template <class T>
LATFLOW_GAUGE_INLINE void u1_spline_update(T* x, const T* par, const Shape& s, const std::int32_t* active,
                                           std::int64_t Va, int mu, int K, bool inverse, double* ld) {
  constexpr int W = 8;
  using D = pconv::vec_t<double, W>;
  const Angles<T> a{x, s};
  const std::int64_t channels = 3 * K + 1, rows = s.batch * Va;
  const double sign = mu == 0 ? 1.0 : -1.0;
  SplineLanes<W> sp(K);
  typename SplineLanes<W>::Lanes r(static_cast<std::size_t>(channels));
  // The active plaquettes hold no other updated link, so each is read before its own link changes.
  for (std::int64_t r0 = 0; r0 < rows; r0 += W) {
    const int n = static_cast<int>(std::min<std::int64_t>(W, rows - r0));
    std::int64_t b[W], link[W];
    D P, t, v;
    for (int j = 0; j < W; ++j) {  // lanes past the last row repeat it
      const std::int64_t row = r0 + std::min(j, n - 1), i = row % Va;
      const std::int64_t x0 = active[i] / s.L1, x1 = active[i] % s.L1;
      b[j] = row / Va;
      P[j] = a.plaquette(b[j], x0, x1);
      link[j] = a.at(b[j], mu, x0, x1);
      const T* p = par + row * channels;
      for (std::int64_t c = 0; c < channels; ++c) r[static_cast<std::size_t>(c)].v[j] = static_cast<double>(p[c]);
      t[j] = r[static_cast<std::size_t>(3 * K)].v[j];
      v[j] = std::clamp(remainder(inverse ? P[j] - t[j] : P[j], kTwoPi), 0.0, kTwoPi);
    }
    sp.set(r.data());
    D out, ls;
    sp(v, inverse, out, ls);
    for (int j = 0; j < n; ++j) {
      const double moved = inverse ? out[j] : out[j] + t[j];
      ld[b[j]] += ls[j];
      x[link[j]] = static_cast<T>(static_cast<double>(x[link[j]]) + sign * centred(moved - P[j]));
    }
  }
}

template <class T>
LATFLOW_GAUGE_INLINE void u1_update_body(T* x, const T* par, const Shape& s, const std::int32_t* active,
                                         std::int64_t Va, int mu, bool spline, int components, bool inverse,
                                         double* log_det) {
  const Angles<T> a{x, s};
  const int K = components;
  const std::int64_t channels = 2 * K + 1, links = 2 * s.L0 * s.L1;
  const double sign = mu == 0 ? 1.0 : -1.0;
  std::vector<double> ld(static_cast<std::size_t>(s.batch), 0.0);
  if (spline) {
    u1_spline_update(x, par, s, active, Va, mu, K, inverse, ld.data());
  } else {
    Ncp ncp(K);
    for (std::int64_t b = 0; b < s.batch; ++b)
      for (std::int64_t i = 0; i < Va; ++i) {
        const std::int64_t x0 = active[i] / s.L1, x1 = active[i] % s.L1;
        const double P = a.plaquette(b, x0, x1);
        const T* p = par + (b * Va + i) * channels;
        ncp.set([&](int c) { return static_cast<double>(p[c]); });
        const double t = static_cast<double>(p[2 * K]);
        double moved;
        if (!inverse) {
          const double th = centred(P);
          moved = ncp.h(th) + t;
          ld[static_cast<std::size_t>(b)] += std::log(ncp.slope(th));
        } else {
          moved = ncp.inverse(centred(P - t));
          ld[static_cast<std::size_t>(b)] -= std::log(ncp.slope(moved));
        }
        const std::int64_t l = a.at(b, mu, x0, x1);
        x[l] = static_cast<T>(static_cast<double>(x[l]) + sign * centred(moved - P));
      }
  }
  for (std::int64_t b = 0; b < s.batch; ++b) {
    for (std::int64_t l = b * links; l < (b + 1) * links; ++l) {
      const double v = static_cast<double>(x[l]);
      if (v < 0 || v >= kTwoPi) x[l] = static_cast<T>(remainder(v, kTwoPi));  // (in [0, 2 pi) it is v exactly)
    }
    log_det[b] += ld[static_cast<std::size_t>(b)];
  }
}

}  // namespace

template <class T>
void u1_context(const T* x, const Shape& s, const std::uint8_t* frozen, const std::uint8_t* frozen_rect0,
                const std::uint8_t* frozen_rect1, T* ctx, pconv::Isa isa) {
  pconv::with_isa(isa, [&]() LATFLOW_KERNEL { u1_context_body(x, s, frozen, frozen_rect0, frozen_rect1, ctx); });
}

template <class T>
void u1_update(T* x, const T* par, const Shape& s, const std::int32_t* active, std::int64_t Va, int mu, bool spline,
               int components, bool inverse, double* log_det, pconv::Isa isa) {
  pconv::with_isa(
      isa, [&]() LATFLOW_KERNEL { u1_update_body(x, par, s, active, Va, mu, spline, components, inverse, log_det); });
}

#define LATFLOW_INSTANTIATE(T)                                                                                       \
  template void spectral_context<T>(const T*, const Shape&, const std::uint8_t*, T*, pconv::Isa);                    \
  template void spectral_update<T>(T*, const T*, const Shape&, const std::int32_t*, std::int64_t, int, int, bool,    \
                                   double*, pconv::Isa);                                                             \
  template void u1_context<T>(const T*, const Shape&, const std::uint8_t*, const std::uint8_t*, const std::uint8_t*, \
                              T*, pconv::Isa);                                                                       \
  template void u1_update<T>(T*, const T*, const Shape&, const std::int32_t*, std::int64_t, int, bool, int, bool,    \
                             double*, pconv::Isa);
LATFLOW_INSTANTIATE(float)
LATFLOW_INSTANTIATE(double)
#undef LATFLOW_INSTANTIATE

}  // namespace latflow::gauge_kernels
