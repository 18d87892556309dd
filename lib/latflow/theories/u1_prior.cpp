// SPDX-License-Identifier: MIT
#include "latflow/theories/u1_prior.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "latflow/core/error.hpp"
#include "latflow/theories/u1_exact.hpp"

namespace latflow {
namespace {

constexpr double kTwoPi = 2 * M_PI;
constexpr double kNegligible = 1e-18;          // terms (I_n / I_0)^m below this are dropped from G_m
constexpr std::int64_t kMaxTries = 100000000;  // rejection attempts before giving up on a conditional draw

double wrap(double a) {  // [0, 2 pi)
  double r = std::fmod(a, kTwoPi);
  if (r < 0) r += kTwoPi;
  return r >= kTwoPi ? 0.0 : r;
}

}  // namespace

double von_mises(double kappa, SplitMix64& rng) {
  if (kappa <= 0) return M_PI * (2 * rng.uniform() - 1);
  // Best and Fisher's wrapped-Cauchy envelope: tau, rho and r as in their algorithm.
  const double tau = 1 + std::sqrt(1 + 4 * kappa * kappa);
  const double rho = (tau - std::sqrt(2 * tau)) / (2 * kappa);
  const double r = (1 + rho * rho) / (2 * rho);
  for (;;) {
    const double z = std::cos(M_PI * rng.uniform());
    const double f = (1 + r * z) / (r + z);
    const double c = kappa * (r - f);
    const double u = rng.uniform();
    if (c * (2 - c) - u > 0 || std::log(c / u) + 1 - c >= 0) {
      const double t = std::acos(std::clamp(f, -1.0, 1.0));
      return rng.uniform() < 0.5 ? -t : t;
    }
  }
}

U1PlaquettePrior::U1PlaquettePrior(const std::vector<std::int64_t>& extents, double beta, Kind kind)
    : beta_(beta), kind_(kind) {
  if (extents.size() != 2 || extents[0] < 1 || extents[1] < 1)
    throw ConfigError("lattice.extents: the U(1) plaquette priors need a 2D lattice");
  if (!(beta >= 0 && beta <= 500))
    throw ConfigError("u1.beta = " + std::to_string(beta) + ": the U(1) plaquette priors need beta in [0, 500]");
  L0_ = extents[0];
  L1_ = extents[1];
  const std::int64_t V = L0_ * L1_;
  const double Vd = static_cast<double>(V);
  if (kind == Kind::independent) {
    const double log_i0 = std::log(std::cyl_bessel_i(0.0, beta));
    log_norm_ = -(Vd - 1) * (std::log(kTwoPi) + log_i0) - (Vd + 1) * std::log(kTwoPi);
    return;
  }
  log_norm_ = u1_free_energy(V, beta);
  if (beta == 0) return;  // G_m = 1: the plaquettes are uniform and independent
  // r_n = I_n / I_0 decreases in n; keep the n with r_n^m >= kNegligible for each m >= 2 (m = 1 is exact).
  std::vector<double> log_r;
  const double i0 = std::cyl_bessel_i(0.0, beta);
  for (int n = 1; n <= 4000; ++n) {
    const double r = std::cyl_bessel_i(static_cast<double>(n), beta) / i0;
    if (!(r >= kNegligible)) break;
    log_r.push_back(std::log(r));
  }
  coeff_.assign(1, {});  // m = 1 is handled in closed form
  g0_.assign(1, 1.0);
  for (std::int64_t m = 2; m < V && !log_r.empty(); ++m) {
    std::vector<double> c;
    for (double lr : log_r) {
      const double v = std::exp(static_cast<double>(m) * lr);
      if (v < kNegligible) break;
      c.push_back(v);
    }
    if (c.empty()) break;
    double g0 = 1;
    for (double v : c) g0 += 2 * v;
    coeff_.push_back(std::move(c));
    g0_.push_back(g0);
  }
}

double U1PlaquettePrior::conditional(std::int64_t m, double s, SplitMix64& rng) const {
  const bool flat = kind_ == Kind::independent || m > static_cast<std::int64_t>(coeff_.size());
  if (flat) return von_mises(beta_, rng);
  const auto& c = coeff_[m - 1];
  for (std::int64_t tries = 0; tries < kMaxTries; ++tries) {
    const double t = von_mises(beta_, rng);
    const double phi = s + t;
    double accept;
    if (m == 1) {
      accept = std::exp(beta_ * (std::cos(phi) - 1));
    } else {
      // 1 + 2 sum_n c_n cos(n phi), cos(n phi) by the Chebyshev recurrence.
      const double c1 = std::cos(phi);
      double prev = 1, cur = c1, g = 1;
      for (std::size_t n = 0; n < c.size(); ++n) {
        g += 2 * c[n] * cur;
        const double next = 2 * c1 * cur - prev;
        prev = cur;
        cur = next;
      }
      accept = g / g0_[m - 1];
    }
    if (rng.uniform() < accept) return t;
  }
  throw NumericalError("U(1) exact prior: no conditional draw accepted in " + std::to_string(kMaxTries) +
                       " tries (beta = " + std::to_string(beta_) + ")");
}

void U1PlaquettePrior::build_links(const double* plaq, double h0, double h1, const double* gauge, double* links) const {
  const std::int64_t L0 = L0_, L1 = L1_;
  auto link = [&](int mu, std::int64_t x0, std::int64_t x1) -> double& { return links[(mu * L0 + x0) * L1 + x1]; };
  auto P = [&](std::int64_t x0, std::int64_t x1) { return plaq[x0 * L1 + x1]; };
  std::fill(links, links + 2 * L0 * L1, 0.0);
  link(1, 0, L1 - 1) = h1;
  for (std::int64_t x1 = 0; x1 < L1; ++x1)
    for (std::int64_t x0 = 0; x0 + 1 < L0; ++x0) link(1, x0 + 1, x1) = link(1, x0, x1) + P(x0, x1);
  link(0, L0 - 1, 0) = h0;
  for (std::int64_t x1 = 0; x1 + 1 < L1; ++x1)
    link(0, L0 - 1, x1 + 1) = link(0, L0 - 1, x1) + link(1, 0, x1) - link(1, L0 - 1, x1) - P(L0 - 1, x1);
  // theta_mu(x) + a(x) - a(x + e_mu)
  for (std::int64_t x0 = 0; x0 < L0; ++x0)
    for (std::int64_t x1 = 0; x1 < L1; ++x1) {
      const double a = gauge[x0 * L1 + x1];
      link(0, x0, x1) += a - gauge[((x0 + 1) % L0) * L1 + x1];
      link(1, x0, x1) += a - gauge[x0 * L1 + (x1 + 1) % L1];
    }
}

void U1PlaquettePrior::draw(SplitMix64& rng, double* links) const {
  const std::int64_t V = L0_ * L1_;
  std::vector<double> plaq(V), gauge(V);
  double s = 0;  // the sum of the plaquettes drawn so far, kept in [-pi, pi]
  for (std::int64_t k = 0; k + 1 < V; ++k) {
    plaq[k] = conditional(V - 1 - k, s, rng);
    s = std::remainder(s + plaq[k], kTwoPi);
  }
  plaq[V - 1] = -s;  // the defect closes the constraint
  const double h0 = kTwoPi * rng.uniform(), h1 = kTwoPi * rng.uniform();
  for (auto& a : gauge) a = kTwoPi * rng.uniform();
  build_links(plaq.data(), h0, h1, gauge.data(), links);
  for (std::int64_t i = 0; i < 2 * V; ++i) links[i] = wrap(links[i]);
}

}  // namespace latflow
