// SPDX-License-Identifier: MIT
// The U(1) and SU(N) plaquette priors (theories/u1_prior.hpp, sun_prior.hpp), torch-free. U(1): the von Mises
// sampler's moments; the gauge-fixing
// map reproduces the plaquettes and is a unimodular integer map (unit Jacobian, so the density formula holds); the
// exact prior's draws against the exact finite-volume results (every plaquette alike, <Q^2>, a 2x2 loop); the
// independent prior's normalisation (free energy from its importance weights) and its Kish ESS/N against
// I_0(beta)^2 / I_0(2 beta). SU(2) and SU(3): the one-plaquette sampler's <Re tr U / N> = c_f / c_0 and its Haar
// limit; the tree walk reproduces the plaquettes and closes the defect with the holonomies' commutator; the
// characters from Jacobi-Trudi against the Weyl formula; the exact prior's draws against the character expansion
// (every plaquette alike, a 2x2 loop); the independent prior's normalisation and Kish ESS/N = c_0(beta)^2 /
// c_0(2 beta). Statistical checks: fixed seeds, within 3 standard deviations.
#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "latflow/core/error.hpp"
#include "latflow/theories/sun_exact.hpp"
#include "latflow/theories/sun_prior.hpp"
#include "latflow/theories/u1_exact.hpp"
#include "latflow/theories/u1_prior.hpp"

using namespace latflow;

namespace {

constexpr double kTwoPi = 2 * M_PI;

double centred(double a) { return std::remainder(a, kTwoPi); }  // [-pi, pi]

// Plaquette angles [L0, L1] of links [2, L0, L1] by explicit periodic indices.
std::vector<double> plaquettes(const std::vector<double>& l, std::int64_t L0, std::int64_t L1) {
  auto t = [&](int mu, std::int64_t a, std::int64_t b) { return l[(mu * L0 + (a % L0)) * L1 + (b % L1)]; };
  std::vector<double> p(L0 * L1);
  for (std::int64_t a = 0; a < L0; ++a)
    for (std::int64_t b = 0; b < L1; ++b) p[a * L1 + b] = t(0, a, b) + t(1, a + 1, b) - t(0, a, b + 1) - t(1, a, b);
  return p;
}

// Mean and standard error of independent values.
struct Stat {
  double n = 0, s = 0, s2 = 0;
  void add(double v) { n += 1, s += v, s2 += v * v; }
  double mean() const { return s / n; }
  double error() const { return std::sqrt((s2 / n - mean() * mean()) / (n - 1)); }
};

// |det| of a square matrix by Gaussian elimination with partial pivoting.
double abs_det(std::vector<std::vector<double>> a) {
  const std::size_t n = a.size();
  double det = 1;
  for (std::size_t c = 0; c < n; ++c) {
    std::size_t p = c;
    for (std::size_t r = c + 1; r < n; ++r)
      if (std::abs(a[r][c]) > std::abs(a[p][c])) p = r;
    if (a[p][c] == 0) return 0;
    std::swap(a[p], a[c]);
    det *= a[c][c];
    for (std::size_t r = c + 1; r < n; ++r) {
      const double f = a[r][c] / a[c][c];
      for (std::size_t k = c; k < n; ++k) a[r][k] -= f * a[c][k];
    }
  }
  return std::abs(det);
}

}  // namespace

TEST_CASE("von Mises draws have the moments <cos n t> = I_n(kappa) / I_0(kappa), <sin t> = 0", "[u1][prior]") {
  for (double kappa : {0.0, 0.3, 2.0, 6.0, 60.0}) {
    SplitMix64 rng(17 + static_cast<std::uint64_t>(kappa * 10));
    Stat c1, c2, s1;
    for (int i = 0; i < 200000; ++i) {
      const double t = von_mises(kappa, rng);
      REQUIRE(std::abs(t) <= M_PI);
      c1.add(std::cos(t)), c2.add(std::cos(2 * t)), s1.add(std::sin(t));
    }
    const double i0 = std::cyl_bessel_i(0.0, kappa);
    INFO("kappa = " << kappa);
    CHECK(std::abs(c1.mean() - std::cyl_bessel_i(1.0, kappa) / i0) < 3 * c1.error());
    CHECK(std::abs(c2.mean() - std::cyl_bessel_i(2.0, kappa) / i0) < 3 * c2.error());
    CHECK(std::abs(s1.mean()) < 3 * s1.error());
  }
}

TEST_CASE("gauge-fixing map: plaquettes reproduced, integer map of unit determinant", "[u1][prior]") {
  for (auto [L0, L1] : std::vector<std::pair<std::int64_t, std::int64_t>>{{1, 3}, {2, 2}, {3, 2}, {4, 4}, {3, 5}}) {
    INFO(L0 << "x" << L1);
    const std::int64_t V = L0 * L1;
    U1PlaquettePrior prior({L0, L1}, 1.0, U1PlaquettePrior::Kind::independent);
    SplitMix64 rng(5);
    // Random plaquettes closing the constraint, holonomies and gauge function.
    std::vector<double> plaq(V), gauge(V), links(2 * V);
    double sum = 0;
    for (std::int64_t k = 0; k + 1 < V; ++k) sum += plaq[k] = kTwoPi * rng.uniform() - M_PI;
    plaq[V - 1] = -sum;
    for (auto& g : gauge) g = kTwoPi * rng.uniform();
    prior.build_links(plaq.data(), 1.3, -0.4, gauge.data(), links.data());
    const auto p = plaquettes(links, L0, L1);
    for (std::int64_t k = 0; k < V; ++k) CHECK(std::abs(centred(p[k] - plaq[k])) < 1e-12);
    // The map (V - 1 plaquettes, h0, h1, gauge at the V - 1 sites other than 0) -> 2 V links is linear: its
    // columns are the images of unit vectors. Integer entries and |det| = 1 make it a bijection of the torus
    // with unit Jacobian.
    auto image = [&](std::int64_t j) {
      std::vector<double> pl(V, 0.0), g(V, 0.0), out(2 * V);
      double h0 = 0, h1 = 0;
      if (j < V - 1) {
        pl[j] = 1, pl[V - 1] = -1;  // the defect follows the constraint
      } else if (j == V - 1) {
        h0 = 1;
      } else if (j == V) {
        h1 = 1;
      } else {
        g[j - V] = 1;  // gauge sites 1 .. V - 1
      }
      prior.build_links(pl.data(), h0, h1, g.data(), out.data());
      return out;
    };
    std::vector<std::vector<double>> m(2 * V, std::vector<double>(2 * V));
    for (std::int64_t j = 0; j < 2 * V; ++j) {
      const auto col = image(j);
      for (std::int64_t i = 0; i < 2 * V; ++i) {
        CHECK(col[i] == std::round(col[i]));
        m[i][j] = col[i];
      }
    }
    CHECK(abs_det(m) == Approx(1.0).margin(1e-9));
  }
}

TEST_CASE("exact prior: draws follow the exact finite-volume distribution", "[u1][prior]") {
  // Small lattices, weak and strong coupling (2x5 at beta = 12: sharply peaked conditionals): every plaquette (the
  // first, a middle one and the defect) has the exact <cos theta_P>, and <Q^2> and the 2x2 loop (4x4 only) agree
  // with the character expansion.
  struct Point {
    std::int64_t L0, L1;
    double beta;
  };
  for (auto pt : {Point{3, 3, 1.5}, Point{4, 4, 6.0}, Point{4, 6, 4.0}, Point{2, 5, 12.0}}) {
    INFO(pt.L0 << "x" << pt.L1 << " beta " << pt.beta);
    const std::int64_t V = pt.L0 * pt.L1;
    U1PlaquettePrior prior({pt.L0, pt.L1}, pt.beta, U1PlaquettePrior::Kind::exact);
    SplitMix64 rng(2024);
    std::vector<double> links(2 * V);
    Stat first, middle, defect, all, q2, loop;
    for (int i = 0; i < 40000; ++i) {
      prior.draw(rng, links.data());
      const auto p = plaquettes(links, pt.L0, pt.L1);
      double q = 0, mean_cos = 0;
      for (double a : p) q += centred(a), mean_cos += std::cos(a) / V;
      q /= kTwoPi;
      REQUIRE(std::abs(q - std::round(q)) < 1e-9);
      first.add(std::cos(p[0])), middle.add(std::cos(p[V / 2])), defect.add(std::cos(p[V - 1]));
      all.add(mean_cos), q2.add(std::round(q) * std::round(q));
      if (pt.L0 == 4 && pt.L1 == 4) loop.add(std::cos(p[0] + p[1] + p[4] + p[5]));
    }
    const double plaq = u1_plaquette(V, pt.beta);
    for (const Stat* s : {&first, &middle, &defect, &all}) CHECK(std::abs(s->mean() - plaq) < 3 * s->error());
    // (2x5 at beta = 12: <Q^2> = 6e-10, no charged configuration expected in 40000 draws.)
    const double q2_exact = u1_topological_susceptibility_q2(V, pt.beta);
    if (q2_exact > 1e-3)
      CHECK(std::abs(q2.mean() - q2_exact) < 3 * q2.error());
    else
      CHECK(q2.mean() == 0);
    if (loop.n > 0) CHECK(std::abs(loop.mean() - u1_wilson_loop(V, pt.beta, 4)) < 3 * loop.error());
  }
}

TEST_CASE("exact prior: log q = -S + F for every draw; beta = 0 is the Haar measure", "[u1][prior]") {
  const std::int64_t L0 = 4, L1 = 6, V = L0 * L1;
  for (double beta : {0.0, 3.0}) {
    U1PlaquettePrior prior({L0, L1}, beta, U1PlaquettePrior::Kind::exact);
    CHECK(prior.log_normalisation() == Approx(u1_free_energy(V, beta)).epsilon(1e-14));
    if (beta == 0) CHECK(prior.log_normalisation() == Approx(-2.0 * V * std::log(kTwoPi)).epsilon(1e-14));
  }
  // beta = 0: the links are uniform, so each link's mean cos and sin vanish and <cos^2> = 1/2.
  U1PlaquettePrior haar({L0, L1}, 0.0, U1PlaquettePrior::Kind::exact);
  SplitMix64 rng(3);
  std::vector<double> links(2 * V);
  Stat c, s, c2;
  for (int i = 0; i < 20000; ++i) {
    haar.draw(rng, links.data());
    c.add(std::cos(links[7])), s.add(std::sin(links[V + 3])),
        c2.add(std::cos(links[2 * V - 1]) * std::cos(links[2 * V - 1]));
  }
  CHECK(std::abs(c.mean()) < 3 * c.error());
  CHECK(std::abs(s.mean()) < 3 * s.error());
  CHECK(std::abs(c2.mean() - 0.5) < 3 * c2.error());
}

TEST_CASE("plaquette prior: normalised (free energy from its weights) and Kish ESS/N = I_0(beta)^2 / I_0(2 beta)",
          "[u1][prior]") {
  // log w = -S - log q = beta cos theta_defect - log_normalisation(): the mean of w estimates Z (the free energy
  // checks the normalisation), and for a large volume the defect is uniform, so ESS/N -> I_0^2 / I_0(2 beta).
  const std::int64_t L0 = 8, L1 = 8, V = L0 * L1;
  const double beta = 2.0;
  U1PlaquettePrior prior({L0, L1}, beta, U1PlaquettePrior::Kind::independent);
  SplitMix64 rng(99);
  std::vector<double> links(2 * V);
  const int batches = 20, per = 5000;
  Stat w_mean, ess;
  const double log_w0 = -prior.log_normalisation();
  const double F = u1_free_energy(V, beta);
  for (int b = 0; b < batches; ++b) {
    double sw = 0, sw2 = 0;
    for (int i = 0; i < per; ++i) {
      prior.draw(rng, links.data());
      const auto p = plaquettes(links, L0, L1);
      double cos_sum = 0;
      for (double a : p) cos_sum += std::cos(a);
      const double log_q = beta * (cos_sum - std::cos(p[V - 1])) + prior.log_normalisation();
      const double w = std::exp(beta * cos_sum - log_q + F);  // w / Z: mean 1 if q is normalised
      REQUIRE(std::abs(std::log(w) - (beta * std::cos(p[V - 1]) + log_w0 + F)) < 1e-9);
      sw += w, sw2 += w * w;
      w_mean.add(w);
    }
    ess.add(sw * sw / (per * sw2));
  }
  CHECK(std::abs(w_mean.mean() - 1.0) < 3 * w_mean.error());
  const double expected = std::pow(std::cyl_bessel_i(0.0, beta), 2) / std::cyl_bessel_i(0.0, 2 * beta);
  CHECK(std::abs(ess.mean() - expected) < 3 * ess.error() + 1e-3);  // + the O(1/N) bias of the ratio
}

TEST_CASE("plaquette priors refuse what they cannot do", "[u1][prior]") {
  CHECK_THROWS_AS(U1PlaquettePrior({8, 8, 8}, 1.0, U1PlaquettePrior::Kind::exact), ConfigError);
  CHECK_THROWS_AS(U1PlaquettePrior({8, 8}, 600.0, U1PlaquettePrior::Kind::exact), ConfigError);
  CHECK_THROWS_AS(U1PlaquettePrior({8, 8}, -1.0, U1PlaquettePrior::Kind::independent), ConfigError);
}

namespace {

using cplx = std::complex<double>;

std::vector<int> partition(int n, int l1, int l2 = 0) {
  return n == 2 ? std::vector<int>{l1, 0} : std::vector<int>{l1, l2, 0};
}

// Plaquettes [L0, L1] of SU(N) links [2, L0, L1].
std::vector<SmallMatrix> sun_plaquettes(int n, const std::vector<SmallMatrix>& u, std::int64_t L0, std::int64_t L1) {
  auto U = [&](int mu, std::int64_t a, std::int64_t b) { return u[(mu * L0 + (a % L0)) * L1 + (b % L1)]; };
  std::vector<SmallMatrix> p(L0 * L1);
  for (std::int64_t a = 0; a < L0; ++a)
    for (std::int64_t b = 0; b < L1; ++b)
      p[a * L1 + b] = small_mul(n, small_mul(n, U(0, a, b), U(1, a + 1, b)),
                                small_mul(n, small_dag(n, U(0, a, b + 1)), small_dag(n, U(1, a, b))));
  return p;
}

// Links [2, L0, L1, N, N, 2] back to matrices; checks unitarity and det = 1 on the way.
std::vector<SmallMatrix> from_storage(int n, const std::vector<double>& s) {
  std::vector<SmallMatrix> u(s.size() / (2 * n * n));
  for (std::size_t i = 0; i < u.size(); ++i) {
    for (int e = 0; e < n * n; ++e) u[i][e] = cplx(s[(i * n * n + e) * 2], s[(i * n * n + e) * 2 + 1]);
    const auto one = small_mul(n, u[i], small_dag(n, u[i]));
    for (int e = 0; e < n * n; ++e) REQUIRE(std::abs(one[e] - (e % (n + 1) == 0 ? 1.0 : 0.0)) < 1e-12);
  }
  return u;
}

double re_tr(int n, const SmallMatrix& a) { return small_trace(n, a).real() / n; }

// The character of the representation (l1, l2) from Weyl's formula det[z_j^(lambda_i + N - i)] / det[z_j^(N - i)]
// on the eigenvalues of a diagonal matrix diag(z).
cplx weyl_character(int n, const std::vector<cplx>& z, int l1, int l2) {
  auto det = [n](const std::vector<std::vector<cplx>>& m) {
    if (n == 2) return m[0][0] * m[1][1] - m[0][1] * m[1][0];
    return m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) +
           m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
  };
  const std::vector<int> lam = partition(n, l1, l2);
  std::vector<std::vector<cplx>> num(n, std::vector<cplx>(n)), den(n, std::vector<cplx>(n));
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      num[i][j] = std::pow(z[j], lam[i] + n - 1 - i);
      den[i][j] = std::pow(z[j], n - 1 - i);
    }
  return det(num) / det(den);
}

}  // namespace

TEST_CASE("SU(N) one-plaquette draws: special unitary, <Re tr U / N> = c_f / c_0", "[sun][prior]") {
  for (int n : {2, 3})
    for (double beta : {0.0, 0.5, 4.0, 12.0}) {
      INFO("N = " << n << ", beta = " << beta);
      SplitMix64 rng(41 + static_cast<std::uint64_t>(beta) + 100 * n);
      Stat tr, im;
      std::vector<double> store(2 * n * n);
      for (int i = 0; i < 50000; ++i) {
        const auto u = boltzmann_sun(n, beta, rng);
        if (i % 1000 == 0) {
          for (int e = 0; e < n * n; ++e) store[2 * e] = u[e].real(), store[2 * e + 1] = u[e].imag();
          from_storage(n, store);
        }
        tr.add(re_tr(n, u)), im.add(small_trace(n, u).imag());
      }
      const double c0 = sun_character_coefficient_times_dim(n, partition(n, 0), beta);
      const double expected = sun_character_coefficient_times_dim(n, partition(n, 1), beta) / n / c0;
      CHECK(std::abs(tr.mean() - expected) < 3 * tr.error());
      CHECK(std::abs(im.mean()) < 3 * im.error());
      if (n == 2 && beta > 0)  // the closed form for SU(2): I_2 / I_1
        CHECK(expected == Approx(std::cyl_bessel_i(2.0, beta) / std::cyl_bessel_i(1.0, beta)).epsilon(1e-10));
    }
}

TEST_CASE("SU(N) tree walk: plaquettes reproduced, the defect closed by the holonomies' commutator", "[sun][prior]") {
  for (int n : {2, 3})
    for (auto [L0, L1] : std::vector<std::pair<std::int64_t, std::int64_t>>{{1, 3}, {2, 2}, {3, 2}, {4, 4}, {3, 5}}) {
      INFO("N = " << n << ", " << L0 << "x" << L1);
      const std::int64_t V = L0 * L1;
      SUNPlaquettePrior prior(n, {L0, L1}, 1.0, SUNPlaquettePrior::Kind::independent);
      SplitMix64 rng(8);
      std::vector<SmallMatrix> plaq(V), gauge(V);
      for (auto& p : plaq) p = haar_sun(n, rng);
      for (auto& g : gauge) g = haar_sun(n, rng);
      const auto A = haar_sun(n, rng), B = haar_sun(n, rng);
      const auto u = prior.build_links(plaq, A, B, gauge);
      const auto p = sun_plaquettes(n, u, L0, L1);
      // Each plaquette is conjugated by g(x) at its corner.
      auto conj_by = [&](std::int64_t k, const SmallMatrix& m) {
        return small_mul(n, small_mul(n, gauge[k], m), small_dag(n, gauge[k]));
      };
      auto close = [&](const SmallMatrix& a, const SmallMatrix& b) {
        double d = 0;
        for (int e = 0; e < n * n; ++e) d = std::max(d, std::abs(a[e] - b[e]));
        return d < 1e-12;
      };
      for (std::int64_t k = 0; k + 1 < V; ++k) CHECK(close(p[k], conj_by(k, plaq[k])));
      SmallMatrix T = small_identity(n), R = small_identity(n);
      for (auto k : prior.order()) T = small_mul(n, T, plaq[k]);
      for (std::int64_t x0 = L0 - 2; x0 >= 0; --x0) R = small_mul(n, R, plaq[x0 * L1 + (L1 - 1)]);
      const auto comm = small_mul(n, small_mul(n, A, B), small_mul(n, small_dag(n, A), small_dag(n, B)));
      const auto defect = small_mul(n, small_mul(n, small_mul(n, R, small_dag(n, T)), comm), small_dag(n, R));
      CHECK(close(p[V - 1], conj_by(V - 1, defect)));
    }
}

TEST_CASE("SU(N) characters by Jacobi-Trudi equal Weyl's formula; G_m(X) <= G_m(1) = 1", "[sun][prior]") {
  // accept_ratio(m, X) = sum_r (c_r/c_0)^m chi_r(X^+) / d_r / sum_r (c_r/c_0)^m: compare with the same sum built
  // from Weyl characters on diagonal matrices.
  for (int n : {2, 3}) {
    INFO("N = " << n);
    const double beta = 3.0;
    SUNPlaquettePrior prior(n, {3, 3}, beta, SUNPlaquettePrior::Kind::exact);
    const double c0 = sun_character_coefficient_times_dim(n, partition(n, 0), beta);
    SplitMix64 rng(4);
    for (int trial = 0; trial < 5; ++trial) {
      std::vector<cplx> z(n);
      std::vector<double> a(n);
      double sum = 0;
      for (int i = 0; i + 1 < n; ++i) sum += a[i] = 2 * M_PI * rng.uniform() - M_PI;
      a[n - 1] = -sum;
      SmallMatrix X{};
      for (int i = 0; i < n; ++i) X[i * n + i] = z[i] = std::polar(1.0, a[i]);
      std::vector<cplx> zbar(n);
      for (int i = 0; i < n; ++i) zbar[i] = std::conj(z[i]);
      for (std::int64_t m : {1, 2, 5}) {
        cplx g = 0;
        double norm = 0;
        for (int l1 = 0; l1 <= 40; ++l1)
          for (int l2 = 0; l2 <= (n == 3 ? l1 : 0); ++l2) {
            const double d = sun_dimension(n, partition(n, l1, l2));
            const double r = std::pow(sun_character_coefficient_times_dim(n, partition(n, l1, l2), beta) / d / c0,
                                      static_cast<double>(m));
            g += r * weyl_character(n, zbar, l1, l2) / d;
            norm += r;
          }
        CAPTURE(m, trial);
        const double got = prior.accept_ratio(m, X);
        CHECK(got == Approx(g.real() / norm).margin(1e-12));
        CHECK(got <= 1.0 + 1e-12);
      }
    }
    CHECK(prior.accept_ratio(1, small_identity(n)) == Approx(1.0).epsilon(1e-14));
  }
}

TEST_CASE("SU(N) exact prior: draws follow the exact finite-volume distribution", "[sun][prior]") {
  struct Point {
    int n;
    std::int64_t L0, L1;
    double beta;
  };
  for (auto pt : {Point{2, 2, 2, 2.0}, Point{2, 3, 3, 4.0}, Point{2, 4, 4, 4.0}, Point{2, 2, 3, 10.0},
                  Point{3, 2, 2, 3.0}, Point{3, 4, 4, 8.0}, Point{3, 3, 2, 6.0}}) {
    INFO("N = " << pt.n << ", " << pt.L0 << "x" << pt.L1 << " beta " << pt.beta);
    const int n = pt.n;
    const std::int64_t V = pt.L0 * pt.L1;
    SUNPlaquettePrior prior(n, {pt.L0, pt.L1}, pt.beta, SUNPlaquettePrior::Kind::exact);
    CHECK(prior.log_normalisation() == Approx(sun_free_energy(n, V, pt.beta)).epsilon(1e-14));
    SplitMix64 rng(77);
    std::vector<double> links(2 * V * n * n * 2);
    Stat first, middle, defect, loop;
    const int draws = n == 2 ? 40000 : 5000;
    for (int i = 0; i < draws; ++i) {
      prior.draw(rng, links.data());
      const auto u = from_storage(n, links);
      const auto p = sun_plaquettes(n, u, pt.L0, pt.L1);
      first.add(re_tr(n, p[0])), middle.add(re_tr(n, p[V / 2])), defect.add(re_tr(n, p[V - 1]));
      if (pt.L0 == 4 && pt.L1 == 4) {
        auto U = [&](int mu, std::int64_t a, std::int64_t b) { return u[(mu * 4 + a % 4) * 4 + b % 4]; };
        auto W = small_mul(n, small_mul(n, U(0, 0, 0), U(0, 1, 0)), small_mul(n, U(1, 2, 0), U(1, 2, 1)));
        W = small_mul(n, W,
                      small_mul(n, small_dag(n, small_mul(n, U(0, 0, 2), U(0, 1, 2))),
                                small_dag(n, small_mul(n, U(1, 0, 0), U(1, 0, 1)))));
        loop.add(re_tr(n, W));
      }
    }
    const double plaq = sun_plaquette(n, V, pt.beta);
    for (const Stat* s : {&first, &middle, &defect}) CHECK(std::abs(s->mean() - plaq) < 3 * s->error());
    if (loop.n > 0) CHECK(std::abs(loop.mean() - sun_wilson_loop(n, V, pt.beta, 4)) < 3 * loop.error());
  }
}

TEST_CASE("SU(N) plaquette prior: normalised, Kish ESS/N = c_0(beta)^2 / c_0(2 beta)", "[sun][prior]") {
  struct Point {
    int n;
    double beta;
  };
  for (auto pt : {Point{2, 2.0}, Point{3, 4.0}}) {
    INFO("N = " << pt.n << ", beta = " << pt.beta);
    const int n = pt.n;
    const std::int64_t L0 = 8, L1 = 8, V = L0 * L1;
    SUNPlaquettePrior prior(n, {L0, L1}, pt.beta, SUNPlaquettePrior::Kind::independent);
    const double F = sun_free_energy(n, V, pt.beta);
    SplitMix64 rng(12);
    std::vector<double> links(2 * V * n * n * 2);
    const int batches = 20, per = n == 2 ? 2000 : 250;
    Stat w_mean, ess;
    for (int b = 0; b < batches; ++b) {
      double sw = 0, sw2 = 0;
      for (int i = 0; i < per; ++i) {
        prior.draw(rng, links.data());
        const auto p = sun_plaquettes(n, from_storage(n, links), L0, L1);
        double sum = 0;
        for (const auto& q : p) sum += small_trace(n, q).real();
        const double log_q = pt.beta / n * (sum - small_trace(n, p[V - 1]).real()) + prior.log_normalisation();
        const double w = std::exp(pt.beta / n * sum - log_q + F);  // w / Z
        sw += w, sw2 += w * w;
        w_mean.add(w);
      }
      ess.add(sw * sw / (per * sw2));
    }
    CHECK(std::abs(w_mean.mean() - 1.0) < 3 * w_mean.error());
    const double c1 = sun_character_coefficient_times_dim(n, partition(n, 0), pt.beta);
    const double c2 = sun_character_coefficient_times_dim(n, partition(n, 0), 2 * pt.beta);
    const double expected = c1 * c1 / c2;
    CHECK(std::abs(ess.mean() - expected) < 3 * ess.error() + 2e-3);
    if (n == 2)
      CHECK(expected ==
            Approx(4 * std::pow(std::cyl_bessel_i(1.0, pt.beta), 2) / (pt.beta * std::cyl_bessel_i(1.0, 2 * pt.beta)))
                .epsilon(1e-10));
  }
}
