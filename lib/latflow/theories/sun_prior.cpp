// SPDX-License-Identifier: MIT
#include "latflow/theories/sun_prior.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "latflow/core/error.hpp"
#include "latflow/theories/sun_exact.hpp"

namespace latflow {
namespace {

using cplx = std::complex<double>;
constexpr double kNegligible = 1e-18;
constexpr std::int64_t kMaxTries = 100000000;

double gaussian(SplitMix64& rng) {  // Box-Muller, one of the pair
  const double u = 1.0 - rng.uniform(), v = rng.uniform();
  return std::sqrt(-2 * std::log(u)) * std::cos(2 * M_PI * v);
}

cplx determinant(int n, const SmallMatrix& a) {
  if (n == 2) return a[0] * a[3] - a[1] * a[2];
  return a[0] * (a[4] * a[8] - a[5] * a[7]) - a[1] * (a[3] * a[8] - a[5] * a[6]) + a[2] * (a[3] * a[7] - a[4] * a[6]);
}

[[noreturn]] void give_up(const char* what, double beta) {
  throw NumericalError(std::string("SU(N) exact prior: no ") + what + " accepted in " + std::to_string(kMaxTries) +
                       " tries (beta = " + std::to_string(beta) + ")");
}

}  // namespace

SmallMatrix small_identity(int n) {
  SmallMatrix a{};
  for (int i = 0; i < n; ++i) a[i * n + i] = 1;
  return a;
}

SmallMatrix small_mul(int n, const SmallMatrix& a, const SmallMatrix& b) {
  SmallMatrix c{};
  for (int i = 0; i < n; ++i)
    for (int k = 0; k < n; ++k)
      for (int j = 0; j < n; ++j) c[i * n + j] += a[i * n + k] * b[k * n + j];
  return c;
}

SmallMatrix small_dag(int n, const SmallMatrix& a) {
  SmallMatrix c{};
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) c[i * n + j] = std::conj(a[j * n + i]);
  return c;
}

cplx small_trace(int n, const SmallMatrix& a) {
  cplx t = 0;
  for (int i = 0; i < n; ++i) t += a[i * n + i];
  return t;
}

void gram_schmidt(int n, cplx* q) {
  for (int c = 0; c < n; ++c) {
    for (int pass = 0; pass < 2; ++pass)
      for (int p = 0; p < c; ++p) {
        cplx dot = 0;
        for (int r = 0; r < n; ++r) dot += std::conj(q[r * n + p]) * q[r * n + c];
        for (int r = 0; r < n; ++r) q[r * n + c] -= dot * q[r * n + p];
      }
    double norm = 0;
    for (int r = 0; r < n; ++r) norm += std::norm(q[r * n + c]);
    norm = std::sqrt(norm);
    for (int r = 0; r < n; ++r) q[r * n + c] /= norm;
  }
}

void divide_det_root(int n, cplx* q) {
  SmallMatrix m{};
  std::copy(q, q + n * n, m.begin());
  const cplx phase = std::polar(1.0, -std::arg(determinant(n, m)) / n);
  for (int i = 0; i < n * n; ++i) q[i] *= phase;
}

SmallMatrix haar_sun(int n, SplitMix64& rng) {
  SmallMatrix q{};
  for (int c = 0; c < n; ++c)  // column by column, as the draws were always made
    for (int r = 0; r < n; ++r) q[r * n + c] = cplx(gaussian(rng), gaussian(rng));
  gram_schmidt(n, q.data());
  divide_det_root(n, q.data());
  return q;
}

SmallMatrix boltzmann_sun(int n, double beta, SplitMix64& rng) {
  const double kappa = beta / n, bound = std::pow(static_cast<double>(n), n);
  std::array<double, 3> a{};
  for (;;) {
    double sum = 0;
    for (int i = 0; i + 1 < n; ++i) sum += a[i] = von_mises(kappa, rng);
    a[n - 1] = -sum;
    double delta2 = 1;  // |Delta(e^{ia})|^2 = prod_{i<j} |e^{i a_i} - e^{i a_j}|^2 = prod 4 sin^2((a_i - a_j)/2)
    for (int i = 0; i < n; ++i)
      for (int j = i + 1; j < n; ++j) {
        const double s = std::sin((a[i] - a[j]) / 2);
        delta2 *= 4 * s * s;
      }
    if (rng.uniform() * bound < delta2 * std::exp(kappa * (std::cos(a[n - 1]) - 1))) break;
  }
  const SmallMatrix v = haar_sun(n, rng);
  SmallMatrix d{};
  for (int i = 0; i < n; ++i) d[i * n + i] = std::polar(1.0, a[i]);
  return small_mul(n, small_mul(n, v, d), small_dag(n, v));
}

SUNPlaquettePrior::SUNPlaquettePrior(int n, const std::vector<std::int64_t>& extents, double beta, Kind kind)
    : n_(n), beta_(beta), kind_(kind) {
  if (n != 2 && n != 3) throw ConfigError("sun.n = " + std::to_string(n) + ": the plaquette priors need N = 2 or 3");
  if (extents.size() != 2 || extents[0] < 1 || extents[1] < 1)
    throw ConfigError("lattice.extents: the SU(N) plaquette priors need a 2D lattice");
  if (!(beta >= 0 && beta <= 200))
    throw ConfigError("sun.beta = " + std::to_string(beta) + ": the SU(N) plaquette priors need beta in [0, 200]");
  L0_ = extents[0];
  L1_ = extents[1];
  const std::int64_t V = L0_ * L1_;
  for (std::int64_t x1 = 0; x1 < L1_; ++x1)
    for (std::int64_t x0 = L0_ - 1; x0 >= 0; --x0)
      if (!(x0 == L0_ - 1 && x1 == L1_ - 1)) order_.push_back(x0 * L1_ + x1);
  auto partition = [n](int l1, int l2) { return n == 2 ? std::vector<int>{l1, 0} : std::vector<int>{l1, l2, 0}; };
  const double c0 = sun_character_coefficient_times_dim(n, partition(0, 0), beta);
  if (kind == Kind::independent) {
    log_norm_ = -static_cast<double>(V - 1) * std::log(c0);
    return;
  }
  log_norm_ = sun_free_energy(n, V, beta);
  if (beta == 0) return;  // c_r = 0 for r != 0: the plaquettes are Haar and independent
  // Representations with c_r / c_0 >= 1e-18, row by row in l1 until a whole row is below.
  std::vector<double> rho, dim;
  for (int l1 = 0; l1 <= 400; ++l1) {
    bool any = false;
    for (int l2 = 0; l2 <= (n == 3 ? l1 : 0); ++l2) {
      const double d = sun_dimension(n, partition(l1, l2));
      const double r = sun_character_coefficient_times_dim(n, partition(l1, l2), beta) / d / c0;
      if (!(r >= kNegligible)) continue;
      any = true;
      reps_.push_back({l1, l2});
      rho.push_back(r);
      dim.push_back(d);
      max_row_ = std::max(max_row_, l1);
    }
    if (!any && l1 > 0) break;
  }
  for (std::int64_t m = 1; m <= V; ++m) {
    std::vector<double> c(reps_.size(), 0.0);
    double norm = 0;
    bool nontrivial = false;
    for (std::size_t i = 0; i < reps_.size(); ++i) {
      const double v = std::pow(rho[i], static_cast<double>(m));
      if (v < kNegligible) continue;
      c[i] = v / dim[i];
      norm += v;
      nontrivial = nontrivial || i > 0;
    }
    if (!nontrivial) break;  // only the trivial representation left: G_m is constant
    coeff_.push_back(std::move(c));
    norm_.push_back(norm);
  }
}

double SUNPlaquettePrior::accept_ratio(std::int64_t m, const SmallMatrix& x) const {
  if (m > static_cast<std::int64_t>(coeff_.size())) return 1.0;
  // Elementary symmetric polynomials of the eigenvalues of X^+: e1 = tr X^+, e2 = tr X (N = 3) or 1 (N = 2),
  // e3 = 1; complete symmetric h_k = e1 h_{k-1} - e2 h_{k-2} + e3 h_{k-3}.
  const cplx t = small_trace(n_, x);
  const cplx e1 = std::conj(t), e2 = n_ == 3 ? t : cplx(1.0), e3 = n_ == 3 ? cplx(1.0) : cplx(0.0);
  std::vector<cplx> h(max_row_ + 2, 0.0);
  h[0] = 1;
  for (int k = 1; k < static_cast<int>(h.size()); ++k)
    h[k] = e1 * h[k - 1] - (k >= 2 ? e2 * h[k - 2] : 0.0) + (k >= 3 ? e3 * h[k - 3] : 0.0);
  const auto& c = coeff_[m - 1];
  cplx g = 0;
  for (std::size_t i = 0; i < reps_.size(); ++i) {
    if (c[i] == 0) continue;
    const int l1 = reps_[i][0], l2 = reps_[i][1];
    // Jacobi-Trudi: s_(l1) = h_l1; s_(l1, l2) = h_l1 h_l2 - h_(l1+1) h_(l2-1).
    const cplx chi = n_ == 2 ? h[l1] : h[l1] * h[l2] - (l2 >= 1 ? h[l1 + 1] * h[l2 - 1] : 0.0);
    g += c[i] * chi;
  }
  return g.real() / norm_[m - 1];
}

std::vector<SmallMatrix> SUNPlaquettePrior::build_links(const std::vector<SmallMatrix>& plaq, const SmallMatrix& A,
                                                        const SmallMatrix& B,
                                                        const std::vector<SmallMatrix>& gauge) const {
  const int n = n_;
  const std::int64_t L0 = L0_, L1 = L1_;
  std::vector<SmallMatrix> u(2 * L0 * L1, small_identity(n));
  auto link = [&](int mu, std::int64_t x0, std::int64_t x1) -> SmallMatrix& { return u[(mu * L0 + x0) * L1 + x1]; };
  auto P = [&](std::int64_t x0, std::int64_t x1) -> const SmallMatrix& { return plaq[x0 * L1 + x1]; };
  link(1, 0, L1 - 1) = B;
  for (std::int64_t x1 = 0; x1 < L1; ++x1)
    for (std::int64_t x0 = 0; x0 + 1 < L0; ++x0) link(1, x0 + 1, x1) = small_mul(n, P(x0, x1), link(1, x0, x1));
  link(0, L0 - 1, 0) = A;
  for (std::int64_t x1 = 0; x1 + 1 < L1; ++x1)
    link(0, L0 - 1, x1 + 1) = small_mul(n, small_mul(n, small_dag(n, link(1, L0 - 1, x1)), small_dag(n, P(L0 - 1, x1))),
                                        small_mul(n, link(0, L0 - 1, x1), link(1, 0, x1)));
  // g(x) U_mu(x) g(x + e_mu)^+
  std::vector<SmallMatrix> out(u.size());
  for (std::int64_t x0 = 0; x0 < L0; ++x0)
    for (std::int64_t x1 = 0; x1 < L1; ++x1) {
      const auto& g = gauge[x0 * L1 + x1];
      out[(0 * L0 + x0) * L1 + x1] =
          small_mul(n, g, small_mul(n, link(0, x0, x1), small_dag(n, gauge[((x0 + 1) % L0) * L1 + x1])));
      out[(1 * L0 + x0) * L1 + x1] =
          small_mul(n, g, small_mul(n, link(1, x0, x1), small_dag(n, gauge[x0 * L1 + (x1 + 1) % L1])));
    }
  return out;
}

void SUNPlaquettePrior::draw(SplitMix64& rng, double* links) const {
  const int n = n_;
  const std::int64_t V = L0_ * L1_;
  std::vector<SmallMatrix> plaq(V, small_identity(n));
  SmallMatrix X = small_identity(n);  // the product of the plaquettes drawn so far, in the order of T
  for (std::size_t k = 0; k < order_.size(); ++k) {
    const std::int64_t m = V - 1 - static_cast<std::int64_t>(k);  // still to come after this one, the defect too
    const bool flat = kind_ == Kind::independent || m > static_cast<std::int64_t>(coeff_.size());
    SmallMatrix M{};
    for (std::int64_t tries = 0;; ++tries) {
      if (tries == kMaxTries) give_up("plaquette", beta_);
      M = boltzmann_sun(n, beta_, rng);
      if (flat || rng.uniform() < accept_ratio(m, small_mul(n, X, M))) break;
    }
    plaq[order_[k]] = M;
    X = small_mul(n, X, M);
  }
  SmallMatrix A{}, B{};
  SmallMatrix R = small_identity(n);
  for (std::int64_t x0 = L0_ - 2; x0 >= 0; --x0) R = small_mul(n, R, plaq[x0 * L1_ + (L1_ - 1)]);
  const SmallMatrix Y = small_mul(n, R, small_dag(n, X));  // (Q(0) .. Q(L1-2))^+ = R T^+
  for (std::int64_t tries = 0;; ++tries) {
    if (tries == kMaxTries) give_up("pair of holonomies", beta_);
    A = haar_sun(n, rng);
    B = haar_sun(n, rng);
    if (kind_ == Kind::independent || beta_ == 0) break;
    // P_defect = Y [A, B] R^+, accepted with f(P_defect) / f(1).
    const SmallMatrix comm = small_mul(n, small_mul(n, A, B), small_mul(n, small_dag(n, A), small_dag(n, B)));
    const SmallMatrix D = small_mul(n, small_mul(n, Y, comm), small_dag(n, R));
    if (rng.uniform() < std::exp(beta_ / n * (small_trace(n, D).real() - n))) break;
  }
  std::vector<SmallMatrix> gauge(V);
  for (auto& g : gauge) g = haar_sun(n, rng);
  const auto u = build_links(plaq, A, B, gauge);
  for (std::size_t i = 0; i < u.size(); ++i)
    for (int e = 0; e < n * n; ++e) {
      links[(i * n * n + e) * 2] = u[i][e].real();
      links[(i * n * n + e) * 2 + 1] = u[i][e].imag();
    }
}

}  // namespace latflow
