// SPDX-License-Identifier: MIT
// phi^4 theory: action and force against naive site loops and finite differences, convention conversions,
// observables against direct definitions, exact free-field values of docs/physics.md.
#include <torch/torch.h>

#include <catch2/catch.hpp>
#include <cmath>

#include "latflow/core/error.hpp"
#include "latflow/theories/phi4.hpp"
#include "latflow/theories/phi4_exact.hpp"

using namespace latflow;

namespace {

// Site index helpers for naive loops over a lattice with the given extents (row-major, last index fastest).
struct Sites {
  std::vector<int64_t> ext;
  int64_t volume() const {
    int64_t v = 1;
    for (auto l : ext) v *= l;
    return v;
  }
  std::vector<int64_t> coords(int64_t s) const {
    std::vector<int64_t> c(ext.size());
    for (int mu = static_cast<int>(ext.size()) - 1; mu >= 0; --mu) {
      c[mu] = s % ext[mu];
      s /= ext[mu];
    }
    return c;
  }
  int64_t index(const std::vector<int64_t>& c) const {
    int64_t s = 0;
    for (size_t mu = 0; mu < ext.size(); ++mu) s = s * ext[mu] + ((c[mu] % ext[mu]) + ext[mu]) % ext[mu];
    return s;
  }
  int64_t neighbour(int64_t s, int mu, int step) const {
    auto c = coords(s);
    c[mu] += step;
    return index(c);
  }
};

// The no-1/2 action written as in docs/physics.md, with the kinetic term as squared differences.
double naive_action(const std::vector<double>& phi, const Sites& L, double m2, double lam) {
  double S = 0;
  for (int64_t s = 0; s < L.volume(); ++s) {
    for (size_t mu = 0; mu < L.ext.size(); ++mu) {
      double d = phi[L.neighbour(s, static_cast<int>(mu), 1)] - phi[s];
      S += d * d;
    }
    S += m2 * phi[s] * phi[s] + lam * std::pow(phi[s], 4);
  }
  return S;
}

// "half": S = sum [ 1/2 (d phi)^2 + 1/2 m2 phi^2 + lam phi^4 ].
double naive_action_half(const std::vector<double>& phi, const Sites& L, double m2, double lam) {
  double S = 0;
  for (int64_t s = 0; s < L.volume(); ++s) {
    for (size_t mu = 0; mu < L.ext.size(); ++mu) {
      double d = phi[L.neighbour(s, static_cast<int>(mu), 1)] - phi[s];
      S += 0.5 * d * d;
    }
    S += 0.5 * m2 * phi[s] * phi[s] + lam * std::pow(phi[s], 4);
  }
  return S;
}

// "hopping": S = sum [ -2 kappa sum_mu phi phi' + (1 - 2 lam) phi^2 + lam phi^4 ].
double naive_action_hopping(const std::vector<double>& phi, const Sites& L, double kappa, double lam) {
  double S = 0;
  for (int64_t s = 0; s < L.volume(); ++s) {
    for (size_t mu = 0; mu < L.ext.size(); ++mu)
      S += -2 * kappa * phi[s] * phi[L.neighbour(s, static_cast<int>(mu), 1)];
    S += (1 - 2 * lam) * phi[s] * phi[s] + lam * std::pow(phi[s], 4);
  }
  return S;
}

std::vector<double> to_vec(const torch::Tensor& t) {
  auto c = t.contiguous().to(torch::kFloat64);
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

Phi4 make(const std::vector<int64_t>& ext, double m2, double lam, const std::string& conv = "nohalf",
          double kappa = 0) {
  LatticeParams lat;
  lat.extents = ext;
  Phi4Params p;
  p.convention = choice<Phi4Convention>(conv);
  p.m2 = m2;
  p.lam = lam;
  p.kappa = kappa;
  p.resolve(static_cast<int>(ext.size()));
  return Phi4(lat, p);
}

const std::vector<std::vector<int64_t>> kLattices{{7}, {4, 6}, {3, 4, 5}, {2, 3, 4, 3}};

}  // namespace

TEST_CASE("phi4 action equals the naive site loop in d = 1..4", "[phi4]") {
  torch::manual_seed(1);
  for (const auto& ext : kLattices) {
    CAPTURE(ext);
    auto th = make(ext, -1.3, 0.7);
    std::vector<int64_t> shape{3};
    shape.insert(shape.end(), ext.begin(), ext.end());
    auto phi = torch::randn(shape, torch::kFloat64);
    auto S = th.action(phi);
    for (int b = 0; b < 3; ++b)
      CHECK(S[b].item<double>() == Approx(naive_action(to_vec(phi[b]), Sites{ext}, -1.3, 0.7)).epsilon(1e-12));
  }
}

TEST_CASE("phi4 force is -dS/dphi: finite differences and autograd", "[phi4]") {
  torch::manual_seed(2);
  for (const auto& ext : kLattices) {
    CAPTURE(ext);
    auto th = make(ext, 0.4, 1.1);
    std::vector<int64_t> shape{1};
    shape.insert(shape.end(), ext.begin(), ext.end());
    auto phi = torch::randn(shape, torch::kFloat64);
    auto F = th.force(phi);
    auto pv = phi.clone().requires_grad_(true);
    auto grad = torch::autograd::grad({th.action(pv).sum()}, {pv})[0];
    CHECK((F + grad).abs().max().item<double>() < 1e-12);
    // Central differences at a few sites; h = 1e-5 gives ~1e-9 truncation + rounding.
    auto flat = phi.view({-1});
    for (int64_t s : {int64_t{0}, flat.numel() / 2, flat.numel() - 1}) {
      const double h = 1e-5;
      auto up = phi.clone(), dn = phi.clone();
      up.view({-1})[s] += h;
      dn.view({-1})[s] -= h;
      const double fd = -(th.action(up).item<double>() - th.action(dn).item<double>()) / (2 * h);
      CHECK(F.view({-1})[s].item<double>() == Approx(fd).epsilon(1e-7).margin(1e-8));
    }
  }
}

TEST_CASE("half and hopping conventions convert exactly to no-1/2", "[phi4]") {
  torch::manual_seed(3);
  for (const auto& ext : kLattices) {
    CAPTURE(ext);
    const Sites L{ext};
    std::vector<int64_t> shape{1};
    shape.insert(shape.end(), ext.begin(), ext.end());
    auto phi_n = torch::randn(shape, torch::kFloat64);  // a no-1/2 field

    // half: phi_half = sqrt(2) phi_nohalf.
    Phi4Params half;
    half.convention = Phi4Convention::half;
    half.m2 = -0.8;
    half.lam = 0.3;
    half.resolve(static_cast<int>(ext.size()));
    CHECK(half.field_scale == Approx(std::sqrt(2.0)));
    LatticeParams lat;
    lat.extents = ext;
    double S_n = Phi4(lat, half).action(phi_n).item<double>();
    double S_h = naive_action_half(to_vec(phi_n * half.field_scale), L, -0.8, 0.3);
    CHECK(S_n == Approx(S_h).epsilon(1e-12));

    // hopping: phi_nohalf = sqrt(kappa) phi_hopping.
    Phi4Params hop;
    hop.convention = Phi4Convention::hopping;
    hop.kappa = 0.13;
    hop.lam = 0.02;
    hop.resolve(static_cast<int>(ext.size()));
    CHECK(hop.field_scale == Approx(1 / std::sqrt(0.13)));
    S_n = Phi4(lat, hop).action(phi_n).item<double>();
    double S_k = naive_action_hopping(to_vec(phi_n * hop.field_scale), L, 0.13, 0.02);
    CHECK(S_n == Approx(S_k).epsilon(1e-12));
  }
}

TEST_CASE("bad couplings are rejected with the key named", "[phi4]") {
  Phi4Params p;
  p.convention = Phi4Convention::hopping;
  p.kappa = -1;
  CHECK_THROWS_WITH(p.resolve(2), Catch::Contains("phi4.kappa"));
  p.convention = Phi4Convention::nohalf;
  p.lam = std::nan("");
  CHECK_THROWS_AS(p.resolve(2), ConfigError);
  p.lam = 0;
  p.m2 = -1;
  CHECK_THROWS_WITH(p.resolve(2), Catch::Contains("m2"));
}

TEST_CASE("observables match their definitions", "[phi4]") {
  torch::manual_seed(4);
  const std::vector<int64_t> ext{6, 4, 6};
  const Sites L{ext};
  auto th = make(ext, -2, 1.5);
  auto phi = torch::randn({2, 6, 4, 6}, torch::kFloat64);
  auto m = th.measure(phi);
  const auto& names = Phi4::scalar_names();
  auto col = [&](const std::string& n) {
    return m.scalars.select(1, std::find(names.begin(), names.end(), n) - names.begin());
  };
  const double V = 144;
  for (int b = 0; b < 2; ++b) {
    auto f = to_vec(phi[b]);
    double M = 0, p2 = 0;
    for (double v : f) {
      M += v;
      p2 += v * v;
    }
    CHECK(col("mag")[b].item<double>() == Approx(M / V));
    CHECK(col("abs_mag")[b].item<double>() == Approx(std::abs(M) / V));
    CHECK(col("chi2")[b].item<double>() == Approx(M * M / V));
    CHECK(col("m4")[b].item<double>() == Approx(std::pow(M / V, 4)));
    CHECK(col("phi2")[b].item<double>() == Approx(p2 / V));
    CHECK(col("action_density")[b].item<double>() == Approx(naive_action(f, L, -2, 1.5) / V));
    // |phi~(p_min)|^2 / V averaged over the directions with L_mu = L_0 (mu = 0 and 2).
    double g = 0;
    for (int mu : {0, 2}) {
      double re = 0, im = 0;
      for (int64_t s = 0; s < L.volume(); ++s) {
        double k = 2 * M_PI * L.coords(s)[mu] / ext[mu];
        re += f[s] * std::cos(k);
        im += f[s] * std::sin(k);
      }
      g += (re * re + im * im) / V / 2;
    }
    CHECK(col("g_pmin")[b].item<double>() == Approx(g));
    // C(t) = (1/L0) sum_t0 (1/Vs) sum_{x,y} phi(t0, x) phi(t0 + t, y); sum_t C(t) = M^2 / V.
    for (int64_t t = 0; t < 6; ++t) {
      double c = 0;
      for (int64_t s1 = 0; s1 < L.volume(); ++s1)
        for (int64_t s2 = 0; s2 < L.volume(); ++s2)
          if ((L.coords(s2)[0] - L.coords(s1)[0] + 6) % 6 == t) c += f[s1] * f[s2];
      CHECK(m.correlator[b][t].item<double>() == Approx(c / (6 * 24)));
    }
    CHECK(m.correlator[b].sum().item<double>() == Approx(M * M / V));
  }
}

TEST_CASE("free-field exact values agree with docs/physics.md and with a direct Gaussian computation", "[phi4]") {
  auto e = free_field_exact({8, 8}, 1.0);
  CHECK(e.phi2 == Approx(0.127087).margin(1e-6));
  CHECK(e.chi2 == Approx(0.5));
  CHECK(e.free_energy == Approx(11.622885).margin(1e-6));
  CHECK(e.action_density == 0.5);
  // xi_2nd of the free field is exactly 1/sqrt(m2) for any L.
  for (double m2 : {0.3, 1.0, 2.5}) CHECK(free_field_exact({10, 6}, m2).xi_2nd == Approx(1 / std::sqrt(m2)));
  // Direct check on a 1D ring of 5 sites: Z = pi^{V/2} det(A)^{-1/2} with S = phi^T A phi.
  const int n = 5;
  const double m2 = 0.7;
  auto A = torch::zeros({n, n}, torch::kFloat64);
  for (int i = 0; i < n; ++i) {
    A[i][i] = 2 + m2;
    A[i][(i + 1) % n] = -1;
    A[(i + 1) % n][i] = -1;
  }
  const double F = -(0.5 * n * std::log(M_PI) - 0.5 * torch::logdet(A).item<double>());
  CHECK(free_field_exact({n}, m2).free_energy == Approx(F).epsilon(1e-12));
  auto cov = torch::inverse(A) / 2;  // <phi phi^T> = A^{-1}/2
  CHECK(free_field_exact({n}, m2).phi2 == Approx(cov.trace().item<double>() / n).epsilon(1e-12));
}
