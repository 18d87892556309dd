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
// The spline's derivatives run over 8 active sites at a time in double vector lanes (SplineGradLanes),
// u1_update_backward compiled per instruction set.
#include <algorithm>
#include <cmath>
#include <vector>

#include "latflow/kernels/gauge_detail.hpp"

namespace latflow::gauge_kernels {
namespace {

// A number with its derivatives in the seven directions (v, x0, x1, y0, y1, d0, d1) of one spline bin, in W double
// lanes (one site per lane); inlined into kernels compiled per instruction set.
template <int W>
struct DualLanes {
  using D = pconv::vec_t<double, W>;
  D v{};
  D d[7]{};
  static DualLanes var(D value, int k) {
    DualLanes x;
    x.v = value;
    x.d[k] = D{} + 1;
    return x;
  }
  static DualLanes constant(D value) {
    DualLanes x;
    x.v = value;
    return x;
  }
};
#define LATFLOW_DUAL \
  template <int W>   \
  LATFLOW_GAUGE_INLINE DualLanes<W>
LATFLOW_DUAL operator+(DualLanes<W> a, const DualLanes<W>& b) {
  a.v += b.v;
  for (int k = 0; k < 7; ++k) a.d[k] += b.d[k];
  return a;
}
LATFLOW_DUAL operator-(DualLanes<W> a, const DualLanes<W>& b) {
  a.v -= b.v;
  for (int k = 0; k < 7; ++k) a.d[k] -= b.d[k];
  return a;
}
LATFLOW_DUAL operator*(const DualLanes<W>& a, const DualLanes<W>& b) {
  DualLanes<W> c;
  c.v = a.v * b.v;
  for (int k = 0; k < 7; ++k) c.d[k] = a.d[k] * b.v + a.v * b.d[k];
  return c;
}
LATFLOW_DUAL operator*(double a, DualLanes<W> b) {
  b.v *= a;
  for (auto& x : b.d) x *= a;
  return b;
}
LATFLOW_DUAL operator/(const DualLanes<W>& a, const DualLanes<W>& b) {
  DualLanes<W> c;
  c.v = a.v / b.v;
  for (int k = 0; k < 7; ++k) c.d[k] = (a.d[k] - c.v * b.d[k]) / b.v;
  return c;
}
LATFLOW_DUAL log(const DualLanes<W>& a) {
  DualLanes<W> c;
  c.v = pconv::log_lanes_d<W>(a.v);
  for (int k = 0; k < 7; ++k) c.d[k] = a.d[k] / a.v;
  return c;
}
#undef LATFLOW_DUAL

// The derivatives of the circular spline (SplineLanes: gauge_detail.hpp Spline with periodic slopes, on [0, 2 pi])
// for W sites at once, one per lane: at(v) gives h_v = dh/dv and L_v = d log h' / dv, add() the raw outputs'
// cotangents.
template <int W>
class SplineGradLanes {
 public:
  using D = pconv::vec_t<double, W>;
  using I = pconv::vec_t<std::int64_t, W>;
  using Lanes = typename SplineLanes<W>::Lanes;
  explicit SplineGradLanes(int K)
      : K_(K), g_knot_(static_cast<std::size_t>(K + 1)), gwd_(static_cast<std::size_t>(K)) {}

  LATFLOW_GAUGE_INLINE void at(const SplineLanes<W>& sp, D v) {
    using Dl = DualLanes<W>;
    sp_ = &sp;
    const auto bn = sp.bin(v, false);
    bin_ = bn.index;
    const Dl X0 = Dl::var(bn.x0, 1), X1 = Dl::var(bn.x1, 2), Y0 = Dl::var(bn.y0, 3), Y1 = Dl::var(bn.y1, 4),
             D0 = Dl::var(sp.slope(bn.r0), 5), D1 = Dl::var(sp.slope(bn.r1), 6);
    const Dl w = X1 - X0, hh = Y1 - Y0, s = hh / w;
    Dl xi = (Dl::var(v, 0) - X0) / w;
    const auto out = xi.v < 0.0 || xi.v > 1.0;  // (LibTorch's clamp passes no gradient)
    xi.v = xi.v < 0.0 ? D{} : (xi.v > 1.0 ? D{} + 1 : xi.v);
    for (auto& d : xi.d) d = out ? D{} : d;
    const Dl one = Dl::constant(D{} + 1), om = one - xi, xi1 = xi * om;
    const Dl den = s + (D1 + D0 - 2.0 * s) * xi1;
    const Dl h = Y0 + hh * (s * xi * xi + D0 * xi1) / den;
    const Dl L = 2.0 * log(s) + log(D1 * xi * xi + 2.0 * s * xi1 + D0 * om * om) - 2.0 * log(den);
    for (int k = 0; k < 7; ++k) {
      h_[k] = h.d[k];
      L_[k] = L.d[k];
    }
    r0_ = bn.r0;
    r1_ = bn.r1;
  }
  LATFLOW_GAUGE_INLINE D h_v() const { return h_[0]; }
  LATFLOW_GAUGE_INLINE D L_v() const { return L_[0]; }

  // g[c] += the cotangent of the raw output c of each lane, for cotangents (c_h, c_L) of (h, L) at the point of at().
  LATFLOW_GAUGE_INLINE void add(D c_h, D c_L, typename SplineLanes<W>::Held* g) {
    auto local = [&](int k) LATFLOW_KERNEL { return c_h * h_[k] + c_L * L_[k]; };
    softmax_chain(0, local(1), local(2), sp_->wsoft, g);
    softmax_chain(K_, local(3), local(4), sp_->hsoft, g);
    const double shift = Spline::slope_shift();
    for (int e = 0; e < 2; ++e) {
      const D z = (e ? r1_ : r0_) + shift;
      const D one = D{} + 1;
      const D gz = local(5 + e) * (z > 20.0 ? one : one / (1 + pconv::exp_lanes_d<W>(-z)));
      const I knot = bin_ + e;
      for (int k = 0; k < K_; ++k) {  // the knot's raw output: 2K + knot, the last knot's being the first's
        const auto here = knot == k || (knot == K_ && k == 0);
        g[2 * K_ + k].v += here ? gz : D{};
      }
    }
  }

 private:
  LATFLOW_GAUGE_INLINE void softmax_chain(int off, D g0, D g1, const Lanes& soft, typename SplineLanes<W>::Held* g) {
    for (int i = 0; i <= K_; ++i) {
      const auto at0 = bin_ == i, at1 = bin_ + 1 == i;
      g_knot_[i].v = (at0 ? g0 : D{}) + (at1 ? g1 : D{});
    }
    D tail{};
    for (int j = K_ - 1; j >= 0; --j) {
      if (j + 1 < K_) tail += g_knot_[j + 1].v;
      gwd_[j].v = kTwoPi * tail;
    }
    D dot{};
    for (int j = 0; j < K_; ++j) dot += soft[j].v * gwd_[j].v;
    const double scale = 1 - K_ * kMinBin;
    for (int j = 0; j < K_; ++j) g[off + j].v += scale * soft[j].v * (gwd_[j].v - dot);
  }

  int K_;
  I bin_{};
  const SplineLanes<W>* sp_ = nullptr;
  Lanes g_knot_, gwd_;
  D h_[7]{}, L_[7]{}, r0_{}, r1_{};
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

namespace {

// The spline layers' part of u1_update_backward with SplineLanes and SplineGradLanes over W rows (sample, active
// site) at a time; gx accumulates row by row in the order of the scalar loop.
template <class T>
LATFLOW_GAUGE_INLINE void u1_spline_backward(const Angles<T>& a, const T* par, const Shape& s,
                                             const std::int32_t* active, std::int64_t Va, int mu, int K, bool inverse,
                                             const T* gy, const double* gld, T* gx, T* gpar) {
  constexpr int W = 8;
  using D = pconv::vec_t<double, W>;
  const std::int64_t channels = 3 * K + 1, rows = s.batch * Va;
  const double sign = mu == 0 ? 1.0 : -1.0;
  SplineLanes<W> sp(K);
  SplineGradLanes<W> sg(K);
  typename SplineLanes<W>::Lanes r(static_cast<std::size_t>(channels)), gr(static_cast<std::size_t>(channels));
  for (std::int64_t r0 = 0; r0 < rows; r0 += W) {
    const int n = static_cast<int>(std::min<std::int64_t>(W, rows - r0));
    std::int64_t site[W][2], row_of[W];
    D P, t, v, gm, gl;
    for (int j = 0; j < W; ++j) {  // lanes past the last row repeat it
      const std::int64_t row = r0 + std::min(j, n - 1), b = row / Va, i = row % Va;
      const std::int64_t x0 = active[i] / s.L1, x1 = active[i] % s.L1;
      row_of[j] = row;
      site[j][0] = x0;
      site[j][1] = x1;
      P[j] = a.plaquette(b, x0, x1);
      const T* p = par + row * channels;
      for (std::int64_t c = 0; c < channels; ++c) r[static_cast<std::size_t>(c)].v[j] = static_cast<double>(p[c]);
      t[j] = r[static_cast<std::size_t>(3 * K)].v[j];
      v[j] = std::clamp(remainder(inverse ? P[j] - t[j] : P[j], kTwoPi), 0.0, kTwoPi);
      // y_l = x_l + sign (moved - P) reduced: the cotangent of moved is sign gy_l.
      gm[j] = sign * static_cast<double>(gy[a.at(b, mu, x0, x1)]);
      gl[j] = gld ? gld[b] : 0.0;
    }
    sp.set(r.data());
    if (inverse) {
      D moved, ls;
      sp(v, true, moved, ls);
      v = moved;
    }
    sg.at(sp, v);
    for (auto& g : gr) g.v = D{};
    D gP;
    if (!inverse) {
      gP = gm * sg.h_v() + gl * sg.L_v();
      sg.add(gm, gl, gr.data());
      gr[static_cast<std::size_t>(3 * K)].v += gm;
    } else {
      const D gu = (gm - gl * sg.L_v()) / sg.h_v();
      sg.add(-gu, -gl, gr.data());
      gP = gu;
      gr[static_cast<std::size_t>(3 * K)].v -= gu;
    }
    gP -= gm;  // the - P of moved - P
    for (int j = 0; j < n; ++j) {
      const std::int64_t b = row_of[j] / Va, x0 = site[j][0], x1 = site[j][1];
      const auto q = static_cast<T>(gP[j]);
      gx[a.at(b, 0, x0, x1)] += q;
      gx[a.at(b, 1, x0 + 1, x1)] += q;
      gx[a.at(b, 0, x0, x1 + 1)] -= q;
      gx[a.at(b, 1, x0, x1)] -= q;
      T* out = gpar + row_of[j] * channels;
      for (std::int64_t c = 0; c < channels; ++c) out[c] = static_cast<T>(gr[static_cast<std::size_t>(c)].v[j]);
    }
  }
}

template <class T>
LATFLOW_GAUGE_INLINE void u1_update_backward_body(const T* x, const T* par, const Shape& s, const std::int32_t* active,
                                                  std::int64_t Va, int mu, bool spline, int components, bool inverse,
                                                  const T* gy, const double* gld, T* gx, T* gpar) {
  const Angles<T> a{x, s};
  const int K = components;
  const std::int64_t channels = 2 * K + 1, links = 2 * s.L0 * s.L1;  // (the NCP's; the spline's below)
  const double sign = mu == 0 ? 1.0 : -1.0;
  std::copy(gy, gy + s.batch * links, gx);
  if (spline) {
    u1_spline_backward(a, par, s, active, Va, mu, K, inverse, gy, gld, gx, gpar);
    return;
  }
  Ncp ncp(K);
  NcpGrad ng(K);
  std::vector<double> gr(static_cast<std::size_t>(channels));
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
      ncp.set(r);
      ng.at(ncp, inverse ? ncp.inverse(centred(P - r(2 * K))) : centred(P));
      if (!inverse) {
        gP = gm * ng.h_v() + gl * ng.L_v();
        ng.add(gm, gl, r, gr.data());
        gr[static_cast<std::size_t>(2 * K)] += gm;
      } else {
        const double gu = (gm - gl * ng.L_v()) / ng.h_v();
        ng.add(-gu, -gl, r, gr.data());
        gP = gu;
        gr[static_cast<std::size_t>(2 * K)] -= gu;
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

}  // namespace

template <class T>
void u1_update_backward(const T* x, const T* par, const Shape& s, const std::int32_t* active, std::int64_t Va, int mu,
                        bool spline, int components, bool inverse, const T* gy, const double* gld, T* gx, T* gpar,
                        pconv::Isa isa) {
  pconv::with_isa(isa, [&]() LATFLOW_KERNEL {
    u1_update_backward_body(x, par, s, active, Va, mu, spline, components, inverse, gy, gld, gx, gpar);
  });
}

#define LATFLOW_INSTANTIATE(T)                                                                                        \
  template void u1_context_backward<T>(const T*, const Shape&, bool, const T*, T*);                                   \
  template void u1_update_backward<T>(const T*, const T*, const Shape&, const std::int32_t*, std::int64_t, int, bool, \
                                      int, bool, const T*, const double*, T*, T*, pconv::Isa);
LATFLOW_INSTANTIATE(float)
LATFLOW_INSTANTIATE(double)
#undef LATFLOW_INSTANTIATE

}  // namespace latflow::gauge_kernels
