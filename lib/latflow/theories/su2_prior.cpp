// SPDX-License-Identifier: MIT
#include "latflow/theories/su2_prior.hpp"

#include <cmath>
#include <string>

#include "latflow/core/error.hpp"
#include "latflow/theories/sun_exact.hpp"

namespace latflow {
namespace {

constexpr double kNegligible = 1e-18;
constexpr std::int64_t kMaxTries = 100000000;

double gaussian(SplitMix64& rng) {  // Box-Muller, one of the pair
  const double u = 1.0 - rng.uniform(), v = rng.uniform();
  return std::sqrt(-2 * std::log(u)) * std::cos(2 * M_PI * v);
}

// A unit vector times r, uniform in direction.
void random_direction(double r, SplitMix64& rng, Quaternion& q) {
  const double z = 2 * rng.uniform() - 1, phi = 2 * M_PI * rng.uniform();
  const double s = std::sqrt(std::max(0.0, 1 - z * z));
  q[1] = r * s * std::cos(phi);
  q[2] = r * s * std::sin(phi);
  q[3] = r * z;
}

[[noreturn]] void give_up(const char* what, double beta) {
  throw NumericalError(std::string("SU(2) exact prior: no ") + what + " accepted in " + std::to_string(kMaxTries) +
                       " tries (beta = " + std::to_string(beta) + ")");
}

}  // namespace

Quaternion quaternion_mul(const Quaternion& a, const Quaternion& b) {
  // (a0 + i a.s)(b0 + i b.s) = a0 b0 - a.b + i (a0 b + b0 a - a x b).s
  return {a[0] * b[0] - a[1] * b[1] - a[2] * b[2] - a[3] * b[3],
          a[0] * b[1] + b[0] * a[1] - (a[2] * b[3] - a[3] * b[2]),
          a[0] * b[2] + b[0] * a[2] - (a[3] * b[1] - a[1] * b[3]),
          a[0] * b[3] + b[0] * a[3] - (a[1] * b[2] - a[2] * b[1])};
}

Quaternion quaternion_dag(const Quaternion& q) { return {q[0], -q[1], -q[2], -q[3]}; }

Quaternion haar_su2(SplitMix64& rng) {
  Quaternion q{gaussian(rng), gaussian(rng), gaussian(rng), gaussian(rng)};
  const double n = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  for (auto& v : q) v /= n;
  return q;
}

Quaternion boltzmann_su2(double beta, SplitMix64& rng) {
  // Haar in a0 is (2/pi) sqrt(1 - a0^2) d a0: a0 from exp(beta a0) on [-1, 1] by its inverse CDF, accepted with
  // probability sqrt(1 - a0^2); the rest of the quaternion uniform on the sphere of radius sqrt(1 - a0^2).
  Quaternion q{};
  for (;;) {
    const double u = rng.uniform();
    q[0] = beta > 1e-12 ? 1 + std::log(u + (1 - u) * std::exp(-2 * beta)) / beta : 2 * u - 1;
    q[0] = std::max(-1.0, std::min(1.0, q[0]));
    const double r = std::sqrt(std::max(0.0, 1 - q[0] * q[0]));
    if (rng.uniform() < r) {
      random_direction(r, rng, q);
      return q;
    }
  }
}

SU2PlaquettePrior::SU2PlaquettePrior(const std::vector<std::int64_t>& extents, double beta, Kind kind)
    : beta_(beta), kind_(kind) {
  if (extents.size() != 2 || extents[0] < 1 || extents[1] < 1)
    throw ConfigError("lattice.extents: the SU(2) plaquette priors need a 2D lattice");
  if (!(beta >= 0 && beta <= 200))
    throw ConfigError("sun.beta = " + std::to_string(beta) + ": the SU(2) plaquette priors need beta in [0, 200]");
  L0_ = extents[0];
  L1_ = extents[1];
  const std::int64_t V = L0_ * L1_;
  for (std::int64_t x1 = 0; x1 < L1_; ++x1)
    for (std::int64_t x0 = L0_ - 1; x0 >= 0; --x0)
      if (!(x0 == L0_ - 1 && x1 == L1_ - 1)) order_.push_back(x0 * L1_ + x1);
  const double c0 = beta > 0 ? 2 * std::cyl_bessel_i(1.0, beta) / beta : 1.0;
  if (kind == Kind::independent) {
    log_norm_ = -static_cast<double>(V - 1) * std::log(c0);
    return;
  }
  log_norm_ = sun_free_energy(2, V, beta);
  if (beta == 0) return;  // c_j = 0 for j > 0: the plaquettes are Haar and independent
  std::vector<double> log_rho;  // ln(I_n / I_1), n = 1, 2, ...
  const double i1 = std::cyl_bessel_i(1.0, beta);
  for (int n = 1; n <= 4000; ++n) {
    const double rho = std::cyl_bessel_i(static_cast<double>(n), beta) / i1;
    if (!(rho >= kNegligible)) break;
    log_rho.push_back(std::log(rho));
  }
  for (std::int64_t m = 1; m <= V; ++m) {
    std::vector<double> c;
    double norm = 0;
    for (std::size_t i = 0; i < log_rho.size(); ++i) {
      const double v = std::exp(static_cast<double>(m) * log_rho[i]);
      if (i > 0 && v < kNegligible) break;
      c.push_back(v / static_cast<double>(i + 1));
      norm += v;
    }
    if (c.size() <= 1) break;  // only the trivial representation left: G_m is constant
    coeff_.push_back(std::move(c));
    norm_.push_back(norm);
  }
}

double SU2PlaquettePrior::accept_ratio(std::int64_t m, const Quaternion& x) const {
  // sum_n rho_n^m chi_{(n-1)/2}(x) / n with chi = U_{n-1}(a0) (Chebyshev, second kind; real, so chi(x^+) = chi(x)).
  const auto& c = coeff_[m - 1];
  const double a0 = x[0];
  double prev = 0, cur = 1, g = 0;  // U_{-1} = 0, U_0 = 1
  for (std::size_t i = 0; i < c.size(); ++i) {
    g += c[i] * cur;
    const double next = 2 * a0 * cur - prev;
    prev = cur;
    cur = next;
  }
  return g / norm_[m - 1];
}

std::vector<Quaternion> SU2PlaquettePrior::build_links(const std::vector<Quaternion>& plaq, const Quaternion& A,
                                                       const Quaternion& B,
                                                       const std::vector<Quaternion>& gauge) const {
  const std::int64_t L0 = L0_, L1 = L1_;
  std::vector<Quaternion> u(2 * L0 * L1, Quaternion{1, 0, 0, 0});
  auto link = [&](int mu, std::int64_t x0, std::int64_t x1) -> Quaternion& { return u[(mu * L0 + x0) * L1 + x1]; };
  auto P = [&](std::int64_t x0, std::int64_t x1) { return plaq[x0 * L1 + x1]; };
  link(1, 0, L1 - 1) = B;
  for (std::int64_t x1 = 0; x1 < L1; ++x1)
    for (std::int64_t x0 = 0; x0 + 1 < L0; ++x0) link(1, x0 + 1, x1) = quaternion_mul(P(x0, x1), link(1, x0, x1));
  link(0, L0 - 1, 0) = A;
  for (std::int64_t x1 = 0; x1 + 1 < L1; ++x1)
    link(0, L0 - 1, x1 + 1) =
        quaternion_mul(quaternion_mul(quaternion_dag(link(1, L0 - 1, x1)), quaternion_dag(P(L0 - 1, x1))),
                       quaternion_mul(link(0, L0 - 1, x1), link(1, 0, x1)));
  // g(x) U_mu(x) g(x + e_mu)^+
  std::vector<Quaternion> out(u.size());
  for (std::int64_t x0 = 0; x0 < L0; ++x0)
    for (std::int64_t x1 = 0; x1 < L1; ++x1) {
      const auto& g = gauge[x0 * L1 + x1];
      out[(0 * L0 + x0) * L1 + x1] =
          quaternion_mul(g, quaternion_mul(link(0, x0, x1), quaternion_dag(gauge[((x0 + 1) % L0) * L1 + x1])));
      out[(1 * L0 + x0) * L1 + x1] =
          quaternion_mul(g, quaternion_mul(link(1, x0, x1), quaternion_dag(gauge[x0 * L1 + (x1 + 1) % L1])));
    }
  return out;
}

void SU2PlaquettePrior::draw(SplitMix64& rng, double* links) const {
  const std::int64_t V = L0_ * L1_;
  std::vector<Quaternion> plaq(V, Quaternion{1, 0, 0, 0});
  Quaternion X{1, 0, 0, 0};  // the product of the plaquettes drawn so far, in the order of T
  for (std::size_t k = 0; k < order_.size(); ++k) {
    const std::int64_t m = V - 1 - static_cast<std::int64_t>(k);  // still to come after this one, the defect too
    const bool flat = kind_ == Kind::independent || m > static_cast<std::int64_t>(coeff_.size());
    Quaternion M{};
    std::int64_t tries = 0;
    for (;; ++tries) {
      if (tries == kMaxTries) give_up("plaquette", beta_);
      M = boltzmann_su2(beta_, rng);
      if (flat || rng.uniform() < accept_ratio(m, quaternion_mul(X, M))) break;
    }
    plaq[order_[k]] = M;
    X = quaternion_mul(X, M);
  }
  Quaternion A{}, B{};
  for (std::int64_t tries = 0;; ++tries) {
    if (tries == kMaxTries) give_up("pair of holonomies", beta_);
    A = haar_su2(rng);
    B = haar_su2(rng);
    if (kind_ == Kind::independent || beta_ == 0) break;
    // P_defect = (Q(0) .. Q(L1-2))^+ [A, B] R^+, with T = X = Q(0) .. Q(L1-2) R; accept with f(P_defect) / f(1).
    Quaternion R{1, 0, 0, 0};
    for (std::int64_t x0 = L0_ - 2; x0 >= 0; --x0) R = quaternion_mul(R, plaq[x0 * L1_ + (L1_ - 1)]);
    const Quaternion Y = quaternion_mul(R, quaternion_dag(X));  // (Q(0) .. Q(L1-2))^+ = R T^+
    const Quaternion comm = quaternion_mul(quaternion_mul(A, B), quaternion_mul(quaternion_dag(A), quaternion_dag(B)));
    const Quaternion D = quaternion_mul(quaternion_mul(Y, comm), quaternion_dag(R));
    if (rng.uniform() < std::exp(beta_ * (D[0] - 1))) break;
  }
  std::vector<Quaternion> gauge(V);
  for (auto& g : gauge) g = haar_su2(rng);
  const auto u = build_links(plaq, A, B, gauge);
  // [2, L0, L1] quaternions -> [2, L0, L1, 2, 2, 2]: U = [[a0 + i a3, a2 + i a1], [-a2 + i a1, a0 - i a3]].
  for (std::size_t i = 0; i < u.size(); ++i) {
    const auto& q = u[i];
    double* e = links + 8 * i;
    e[0] = q[0], e[1] = q[3];   // (0, 0)
    e[2] = q[2], e[3] = q[1];   // (0, 1)
    e[4] = -q[2], e[5] = q[1];  // (1, 0)
    e[6] = q[0], e[7] = -q[3];  // (1, 1)
  }
}

}  // namespace latflow
