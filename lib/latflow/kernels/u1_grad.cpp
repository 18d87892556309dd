// SPDX-License-Identifier: MIT
// The backward passes of the U(1) layer kernels (gauge_kernels.hpp u1_context_backward, u1_update_backward): what
// a training step needs of GaugeCoupling without LibTorch ops (flows/gauge_nodes.cpp makes autograd nodes of them;
// tests/test_u1.cpp compares every gradient with autograd through the LibTorch formulas of gauge.cpp).
//
// Per active site the layer maps the plaquette angle P to moved(P; r) and adds ls(P; r) to the log-det, r the
// net's raw outputs there. Both kernels are written as a map h of the circle, evaluated at a point v with its
// value, L = log h'(v), dh/dv, dL/dv, and the cotangent of r for any pair (c_h, c_L) of cotangents of (h, L):
//   forward  moved = h(v) + t, ls = L(v), v = P reduced: g_P = g_m h_v + g_l L_v, g_r += (g_m, g_l), g_t = g_m;
//   inverse  moved = v = h^{-1}(P - t), ls = -L(v): with g_v = g_m - g_l L_v and g_u = g_v / h_v (implicit
//            function), g_P = g_u, g_r += (-g_u, -g_l), g_t = -g_u.
#include <array>
#include <cmath>
#include <vector>

#include "latflow/kernels/gauge_detail.hpp"

namespace latflow::gauge_kernels {
namespace {

// A number with its derivatives in the seven directions (v, x0, x1, y0, y1, d0, d1) of one spline bin.
struct Dual {
  double v = 0;
  std::array<double, 7> d{};
  static Dual var(double value, int k) {
    Dual x{value, {}};
    x.d[static_cast<std::size_t>(k)] = 1;
    return x;
  }
};
Dual operator+(Dual a, const Dual& b) {
  a.v += b.v;
  for (std::size_t k = 0; k < 7; ++k) a.d[k] += b.d[k];
  return a;
}
Dual operator-(Dual a, const Dual& b) {
  a.v -= b.v;
  for (std::size_t k = 0; k < 7; ++k) a.d[k] -= b.d[k];
  return a;
}
Dual operator*(const Dual& a, const Dual& b) {
  Dual c{a.v * b.v, {}};
  for (std::size_t k = 0; k < 7; ++k) c.d[k] = a.d[k] * b.v + a.v * b.d[k];
  return c;
}
Dual operator*(double a, Dual b) {
  b.v *= a;
  for (auto& x : b.d) x *= a;
  return b;
}
Dual operator/(const Dual& a, const Dual& b) {
  Dual c{a.v / b.v, {}};
  for (std::size_t k = 0; k < 7; ++k) c.d[k] = (a.d[k] - c.v * b.d[k]) / b.v;
  return c;
}
Dual log(const Dual& a) {
  Dual c{std::log(a.v), {}};
  for (std::size_t k = 0; k < 7; ++k) c.d[k] = a.d[k] / a.v;
  return c;
}
Dual constant(double v) { return Dual{v, {}}; }

// The derivatives of the circular spline (gauge_detail.hpp Spline with periodic slopes, on [0, 2 pi]) at v.
class SplineGrad {
 public:
  explicit SplineGrad(int K) : K_(K), g_knot_(static_cast<std::size_t>(K + 1)), gwd_(static_cast<std::size_t>(K)) {}

  // At v in [0, 2 pi] of the spline sp (set from the raw outputs r): h_v = dh/dv and L_v = d log h' / dv.
  void at(const Spline& sp, double v) {
    sp_ = &sp;
    bin_ = 0;
    while (bin_ < K_ - 1 && sp.xk[static_cast<std::size_t>(bin_ + 1)] <= v) ++bin_;
    const auto b = static_cast<std::size_t>(bin_);
    const Dual x0 = Dual::var(sp.xk[b], 1), x1 = Dual::var(sp.xk[b + 1], 2), y0 = Dual::var(sp.yk[b], 3),
               y1 = Dual::var(sp.yk[b + 1], 4), d0 = Dual::var(sp.slope(bin_), 5),
               d1 = Dual::var(sp.slope(bin_ + 1), 6);
    const Dual w = x1 - x0, hh = y1 - y0, s = hh / w;
    Dual xi = (Dual::var(v, 0) - x0) / w;
    if (xi.v < 0 || xi.v > 1) xi = constant(std::clamp(xi.v, 0.0, 1.0));  // (LibTorch's clamp passes no gradient)
    const Dual one = constant(1), om = one - xi, xi1 = xi * om;
    const Dual den = s + (d1 + d0 - 2.0 * s) * xi1;
    const Dual h = y0 + hh * (s * xi * xi + d0 * xi1) / den;
    const Dual L = 2.0 * log(s) + log(d1 * xi * xi + 2.0 * s * xi1 + d0 * om * om) - 2.0 * log(den);
    h_ = h.d;
    L_ = L.d;
  }
  double h_v() const { return h_[0]; }
  double L_v() const { return L_[0]; }

  // g[c] += the cotangent of the raw output r(c) for cotangents (c_h, c_L) of (h, L) at the point of at().
  template <class R>
  void add(double c_h, double c_L, const R& r, double* g) {
    auto local = [&](int k) { return c_h * h_[static_cast<std::size_t>(k)] + c_L * L_[static_cast<std::size_t>(k)]; };
    // Knot positions: x_i = lo + (hi - lo) sum_{j < i} wd_j for 0 < i < K (the end knots are fixed).
    softmax_chain(0, local(1), local(2), sp_->wsoft, g);
    softmax_chain(K_, local(3), local(4), sp_->hsoft, g);
    // Knot slopes d_i = kMinDeriv + softplus(r(2K + i) + shift), the last knot's being the first's.
    const double shift = Spline::slope_shift();
    for (int e = 0; e < 2; ++e) {
      const int knot = bin_ + e, c = 2 * K_ + (knot == K_ ? 0 : knot);
      const double z = r(c) + shift;
      g[c] += local(5 + e) * (z > 20 ? 1.0 : 1.0 / (1.0 + std::exp(-z)));
    }
  }

 private:
  // The cotangents g0, g1 of the knots bin, bin + 1 of the knot vector built from the softmax of r(off ...).
  void softmax_chain(int off, double g0, double g1, const std::vector<double>& soft, double* g) {
    std::fill(g_knot_.begin(), g_knot_.end(), 0.0);
    g_knot_[static_cast<std::size_t>(bin_)] += g0;
    g_knot_[static_cast<std::size_t>(bin_ + 1)] += g1;
    // d knot_i / d wd_j = 2 pi for j < i < K; the cotangent of wd_j is 2 pi sum_{j < i < K} g_knot_i.
    double tail = 0;
    for (int j = K_ - 1; j >= 0; --j) {
      if (j + 1 < K_) tail += g_knot_[static_cast<std::size_t>(j + 1)];
      gwd_[static_cast<std::size_t>(j)] = kTwoPi * tail;
    }
    double dot = 0;
    for (int j = 0; j < K_; ++j) dot += soft[static_cast<std::size_t>(j)] * gwd_[static_cast<std::size_t>(j)];
    const double scale = 1 - K_ * kMinBin;
    for (int j = 0; j < K_; ++j)
      g[off + j] += scale * soft[static_cast<std::size_t>(j)] * (gwd_[static_cast<std::size_t>(j)] - dot);
  }

  int K_, bin_ = 0;
  const Spline* sp_ = nullptr;
  std::vector<double> g_knot_, gwd_;
  std::array<double, 7> h_{}, L_{};
};

// The derivatives of the NCP mixture (gauge_detail.hpp Ncp) at theta.
class NcpGrad {
 public:
  explicit NcpGrad(int K)
      : K_(K), dh_(static_cast<std::size_t>(2 * K)), dS_(dh_.size()), g_rho_(static_cast<std::size_t>(K)) {}
  void at(const Ncp& ncp, double th) {
    const double c = std::cos(th / 2), s = std::sin(th / 2);
    double S = 0, S_th = 0;
    for (int k = 0; k < K_; ++k) {
      const auto kk = static_cast<std::size_t>(k);
      const double al = ncp.alpha[kk], rho = ncp.rho[kk], D = c * c + al * al * s * s;
      S += rho * al / D;
      S_th -= rho * al * (al * al - 1) * s * c / (D * D);
      // d/d alpha_k and d/d rho_k of h and of S.
      dh_[kk] = rho * 2 * s * c / D;
      dS_[kk] = rho * (c * c - al * al * s * s) / (D * D);
      dh_[kk + static_cast<std::size_t>(K_)] = 2 * std::atan2(al * s, c);
      dS_[kk + static_cast<std::size_t>(K_)] = al / D;
    }
    S_ = S;
    S_th_ = S_th;
    ncp_ = &ncp;
  }
  double h_v() const { return S_; }
  double L_v() const { return S_th_ / S_; }
  template <class R>
  void add(double c_h, double c_L, const R& r, double* g) {
    constexpr double kMaxLogAlpha = 6.0;  // gauge.cpp: alpha = exp(6 tanh(r / 6))
    double dot = 0;
    std::vector<double>& g_rho = g_rho_;
    for (int k = 0; k < K_; ++k) {
      const auto kk = static_cast<std::size_t>(k), kr = kk + static_cast<std::size_t>(K_);
      const double g_alpha = c_h * dh_[kk] + c_L * dS_[kk] / S_;
      const double th = std::tanh(r(k) / kMaxLogAlpha);
      g[k] += g_alpha * ncp_->alpha[kk] * (1 - th * th);
      g_rho[kk] = c_h * dh_[kr] + c_L * dS_[kr] / S_;
      dot += ncp_->rho[kk] * g_rho[kk];
    }
    for (int k = 0; k < K_; ++k) {
      const auto kk = static_cast<std::size_t>(k);
      g[K_ + k] += ncp_->rho[kk] * (g_rho[kk] - dot);
    }
  }

 private:
  int K_;
  std::vector<double> dh_, dS_, g_rho_;
  double S_ = 1, S_th_ = 0;
  const Ncp* ncp_ = nullptr;
};

}  // namespace

template <class T>
void u1_context_backward(const T* ctx, const Shape& s, bool loops, const T* gctx, T* gx) {
  const Angles<T> a{gx, s};
  const std::int64_t V = s.L0 * s.L1;
  const int C = loops ? 6 : 2;
  std::vector<double> gp(static_cast<std::size_t>(V));
  for (std::int64_t b = 0; b < s.batch; ++b) {
    const T* c = ctx + b * C * V;
    const T* g = gctx + b * C * V;
    // d/dq of the pair (cos q, sin q) in channels (k, k + 1) at site against their cotangents: -sin q g_k +
    // cos q g_{k+1}, read from the context itself (0 where the mask is off).
    auto pull = [&](int k, std::int64_t site) {
      return -static_cast<double>(c[(k + 1) * V + site]) * static_cast<double>(g[k * V + site]) +
             static_cast<double>(c[k * V + site]) * static_cast<double>(g[(k + 1) * V + site]);
    };
    for (std::int64_t site = 0; site < V; ++site) gp[static_cast<std::size_t>(site)] = pull(0, site);
    if (loops)  // the loops P(x) + P(x + e0) and P(x) + P(x + e1)
      for (std::int64_t x0 = 0; x0 < s.L0; ++x0)
        for (std::int64_t x1 = 0; x1 < s.L1; ++x1) {
          const std::int64_t site = x0 * s.L1 + x1;
          const double q0 = pull(2, site), q1 = pull(4, site);
          gp[static_cast<std::size_t>(site)] += q0 + q1;
          gp[static_cast<std::size_t>(((x0 + 1) % s.L0) * s.L1 + x1)] += q0;
          gp[static_cast<std::size_t>(x0 * s.L1 + (x1 + 1) % s.L1)] += q1;
        }
    // P(x) = theta_0(x) + theta_1(x + e0) - theta_0(x + e1) - theta_1(x).
    T* out = gx;
    for (std::int64_t x0 = 0; x0 < s.L0; ++x0)
      for (std::int64_t x1 = 0; x1 < s.L1; ++x1) {
        const double q = gp[static_cast<std::size_t>(x0 * s.L1 + x1)];
        if (q == 0) continue;
        out[a.at(b, 0, x0, x1)] += static_cast<T>(q);
        out[a.at(b, 1, x0 + 1, x1)] += static_cast<T>(q);
        out[a.at(b, 0, x0, x1 + 1)] -= static_cast<T>(q);
        out[a.at(b, 1, x0, x1)] -= static_cast<T>(q);
      }
  }
}

template <class T>
void u1_update_backward(const T* x, const T* par, const Shape& s, const std::int32_t* active, std::int64_t Va, int mu,
                        bool spline, int components, bool inverse, const T* gy, const double* gld, T* gx, T* gpar) {
  const Angles<T> a{x, s};
  const int K = components;
  const std::int64_t channels = spline ? 3 * K + 1 : 2 * K + 1, links = 2 * s.L0 * s.L1;
  const double sign = mu == 0 ? 1.0 : -1.0;
  Spline sp(K);
  Ncp ncp(K);
  SplineGrad sg(K);
  NcpGrad ng(K);
  std::vector<double> gr(static_cast<std::size_t>(channels));
  std::copy(gy, gy + s.batch * links, gx);
  for (std::int64_t b = 0; b < s.batch; ++b) {
    const double gl = gld ? gld[b] : 0.0;
    for (std::int64_t i = 0; i < Va; ++i) {
      const std::int64_t x0 = active[i] / s.L1, x1 = active[i] % s.L1;
      const double P = a.plaquette(b, x0, x1);
      const T* p = par + (b * Va + i) * channels;
      auto r = [&](int c) { return static_cast<double>(p[c]); };
      // y_l = x_l + sign (moved - P) reduced: the cotangent of moved is sign gy_l.
      const double gm = sign * static_cast<double>(gy[a.at(b, mu, x0, x1)]);
      std::fill(gr.begin(), gr.end(), 0.0);
      double gP;
      const int t_channel = spline ? 3 * K : 2 * K;
      auto finish = [&](auto& grad) {
        if (!inverse) {
          gP = gm * grad.h_v() + gl * grad.L_v();
          grad.add(gm, gl, r, gr.data());
          gr[static_cast<std::size_t>(t_channel)] += gm;
        } else {
          const double gu = (gm - gl * grad.L_v()) / grad.h_v();
          grad.add(-gu, -gl, r, gr.data());
          gP = gu;
          gr[static_cast<std::size_t>(t_channel)] -= gu;
        }
      };
      if (spline) {
        sp.set(r, 0, kTwoPi, true);
        const double t = r(3 * K);
        const double v = std::clamp(remainder(inverse ? P - t : P, kTwoPi), 0.0, kTwoPi);
        sg.at(sp, inverse ? sp(v, true).first : v);
        finish(sg);
      } else {
        ncp.set(r);
        const double t = r(2 * K);
        ng.at(ncp, inverse ? ncp.inverse(centred(P - t)) : centred(P));
        finish(ng);
      }
      gP -= gm;  // the - P of moved - P
      gx[a.at(b, 0, x0, x1)] += static_cast<T>(gP);
      gx[a.at(b, 1, x0 + 1, x1)] += static_cast<T>(gP);
      gx[a.at(b, 0, x0, x1 + 1)] -= static_cast<T>(gP);
      gx[a.at(b, 1, x0, x1)] -= static_cast<T>(gP);
      T* out = gpar + (b * Va + i) * channels;
      for (std::int64_t c = 0; c < channels; ++c) out[c] = static_cast<T>(gr[static_cast<std::size_t>(c)]);
    }
  }
}

#define LATFLOW_INSTANTIATE(T)                                                                                        \
  template void u1_context_backward<T>(const T*, const Shape&, bool, const T*, T*);                                   \
  template void u1_update_backward<T>(const T*, const T*, const Shape&, const std::int32_t*, std::int64_t, int, bool, \
                                      int, bool, const T*, const double*, T*, T*);
LATFLOW_INSTANTIATE(float)
LATFLOW_INSTANTIATE(double)
#undef LATFLOW_INSTANTIATE

}  // namespace latflow::gauge_kernels
