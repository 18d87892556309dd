// SPDX-License-Identifier: MIT
// U(1) and SU(N) gauge theory in d = 3, 4, the heat bath and U(1) flows in d = 3, 4 (docs/physics.md "Gauge theory
// in d dimensions", "Heat bath and overrelaxation"): actions, per-plane plaquettes, Wilson loops and Polyakov loops
// against naive loops over every plane written here from the definitions; forces against central differences along
// every generator; gauge invariance of the action and of every observable; monopole charges (integers, zero in total,
// none at the cold start); the heat-bath samplers' moments against Bessel-function ratios; overrelaxation keeps
// the action; the heat bath keeps links in SU(N) and does not depend on the thread count. HMC and heat bath
// against each other and against exact and strong-coupling values are in test_hmc.cpp. U(1) coupling layers in 3D
// and 4D: log-det against the autograd Jacobian, inverse, gauge equivariance, and the whole flow's log q gauge
// invariant and translation (by 4) covariant. Fixed seeds.
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <complex>
#include <vector>

#include "latflow/core/error.hpp"
#include "latflow/core/params.hpp"
#include "latflow/flows/flow.hpp"
#include "latflow/flows/gauge.hpp"
#include "latflow/theories/heatbath.hpp"
#include "latflow/theories/sun.hpp"
#include "latflow/theories/u1.hpp"
#include "support/torch_support.hpp"

using namespace latflow;
using latflow::testing::autograd_logdet;
using latflow::testing::numerical_log_det;
using latflow::testing::randomise;

namespace {

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);
using cplx = std::complex<double>;

// Sites of a periodic lattice numbered row-major (x0 slowest), as the field tensors store them; written
// independently of heatbath::Lattice.
struct Sites {
  std::vector<std::int64_t> L;
  std::int64_t V = 1;
  explicit Sites(std::vector<std::int64_t> extents) : L(std::move(extents)) {
    for (auto l : L) V *= l;
  }
  std::vector<std::int64_t> coords(std::int64_t x) const {
    std::vector<std::int64_t> c(L.size());
    for (int k = static_cast<int>(L.size()) - 1; k >= 0; --k) {
      c[k] = x % L[k];
      x /= L[k];
    }
    return c;
  }
  std::int64_t index(const std::vector<std::int64_t>& c) const {
    std::int64_t x = 0;
    for (std::size_t k = 0; k < L.size(); ++k) x = x * L[k] + ((c[k] % L[k]) + L[k]) % L[k];
    return x;
  }
  // x + n e_mu
  std::int64_t step(std::int64_t x, int mu, std::int64_t n) const {
    auto c = coords(x);
    c[mu] += n;
    return index(c);
  }
};

U1 make_u1(std::vector<std::int64_t> extents, double beta) {
  LatticeParams lattice;
  lattice.extents = std::move(extents);
  U1Params p;
  p.beta = beta;
  return U1(lattice, p);
}

SUN make_sun(int n, std::vector<std::int64_t> extents, double beta) {
  LatticeParams lattice;
  lattice.extents = std::move(extents);
  SUNParams p;
  p.n = n;
  p.beta = beta;
  return SUN(lattice, p);
}

std::vector<std::int64_t> with_batch(std::int64_t B, std::vector<std::int64_t> shape) {
  shape.insert(shape.begin(), B);
  return shape;
}

at::Tensor random_sun(const SUN& th, std::int64_t B, std::uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto shape = with_batch(B, th.field_shape());
  shape.resize(shape.size() - 3);  // without N, N, 2
  return SUN::storage(SUN::haar(th.colors(), shape, gen));
}

int column(const Theory& th, const std::string& name) {
  const auto& names = th.observable_names();
  for (std::size_t k = 0; k < names.size(); ++k)
    if (names[k] == name) return static_cast<int>(k);
  FAIL("no observable " << name);
  return -1;
}

const std::vector<std::vector<std::int64_t>> kShapes{{3, 4, 2}, {4, 4, 4}, {2, 3, 2, 3}, {4, 4, 4, 4}};

}  // namespace

TEST_CASE("U(1) in d = 3, 4: action, plaquettes, Wilson and Polyakov loops, monopoles equal naive loops", "[u1][nd]") {
  torch::manual_seed(1);
  for (const auto& L : kShapes) {
    const Sites s(L);
    const int d = static_cast<int>(L.size());
    const auto th = make_u1(L, 1.3);
    auto theta = 2 * M_PI * torch::rand(with_batch(2, th.field_shape()), kF64) - M_PI;
    const auto S = th.action(theta);
    const auto m = th.measure(theta);
    const auto flat = theta.reshape({2, d, s.V});
    for (std::int64_t b = 0; b < 2; ++b) {
      auto t = [&](int mu, std::int64_t x) { return flat[b][mu][x].item<double>(); };
      double total = 0;
      int plane = 0;
      std::vector<double> loop2(1, 0.0);
      cplx poly = 0;
      double monopoles = 0;
      for (int mu = 0; mu < d; ++mu)
        for (int nu = mu + 1; nu < d; ++nu, ++plane) {
          double sum = 0, w2 = 0;
          for (std::int64_t x = 0; x < s.V; ++x) {
            sum += std::cos(t(mu, x) + t(nu, s.step(x, mu, 1)) - t(mu, s.step(x, nu, 1)) - t(nu, x));
            double a = 0;  // the 2 x 2 loop's angle, link by link around it
            for (int k = 0; k < 2; ++k) {
              a += t(mu, s.step(x, mu, k)) + t(nu, s.step(s.step(x, mu, 2), nu, k));
              a -= t(mu, s.step(s.step(x, nu, 2), mu, k)) + t(nu, s.step(x, nu, k));
            }
            w2 += std::cos(a);
          }
          total += sum;
          loop2[0] += w2;
          CAPTURE(L, mu, nu);
          CHECK(std::abs(m.scalars[b][column(th, "plaq_" + std::to_string(mu) + std::to_string(nu))].item<double>() -
                         sum / s.V) < 1e-12);
        }
      const double planes = d * (d - 1) / 2.0;
      CAPTURE(L);
      CHECK(std::abs(S[b].item<double>() + 1.3 * total) < 1e-10);
      CHECK(std::abs(m.scalars[b][column(th, "plaq")].item<double>() - total / (s.V * planes)) < 1e-12);
      CHECK(std::abs(m.scalars[b][column(th, "action_density")].item<double>() + 1.3 * total / s.V) < 1e-12);
      if (*std::min_element(L.begin(), L.end()) >= 4)
        CHECK(std::abs(m.scalars[b][column(th, "wilson_2x2")].item<double>() - loop2[0] / (s.V * planes)) < 1e-12);
      // Polyakov loops along the last direction: the sites with x_{d-1} = 0 start one each.
      std::vector<cplx> P;
      for (std::int64_t x = 0; x < s.V; ++x) {
        if (s.coords(x)[d - 1] != 0) continue;
        double a = 0;
        for (std::int64_t k = 0; k < L[d - 1]; ++k) a += t(d - 1, s.step(x, d - 1, k));
        P.push_back(std::polar(1.0, a));
        poly += P.back();
      }
      CHECK(std::abs(m.scalars[b][column(th, "poly")].item<double>() - std::abs(poly) / P.size()) < 1e-12);
      // Correlator at distance 1 along x0: pairs (x, x + e0) of Polyakov loops.
      double c1 = 0;
      for (std::int64_t x = 0, k = 0; x < s.V; ++x) {
        if (s.coords(x)[d - 1] != 0) continue;
        auto y = s.step(x, 0, 1);
        std::int64_t j = 0;
        for (std::int64_t z = 0; z < y; ++z) j += s.coords(z)[d - 1] == 0;
        c1 += std::real(P[k++] * std::conj(P[j]));
      }
      CHECK(std::abs(m.correlator[b][1].item<double>() - c1 / P.size()) < 1e-12);
      // Monopoles (DeGrand-Toussaint): reduced face angles around each 3-cube.
      auto reduced = [&](int mu, int nu, std::int64_t x) {
        const double p = t(mu, x) + t(nu, s.step(x, mu, 1)) - t(mu, s.step(x, nu, 1)) - t(nu, x);
        return p - 2 * M_PI * std::floor((p + M_PI) / (2 * M_PI));
      };
      for (int mu = 0; mu < d; ++mu)
        for (int nu = mu + 1; nu < d; ++nu)
          for (int rho = nu + 1; rho < d; ++rho)
            for (std::int64_t x = 0; x < s.V; ++x) {
              const double q = reduced(nu, rho, s.step(x, mu, 1)) - reduced(nu, rho, x) -
                               reduced(mu, rho, s.step(x, nu, 1)) + reduced(mu, rho, x) +
                               reduced(mu, nu, s.step(x, rho, 1)) - reduced(mu, nu, x);
              monopoles += std::abs(std::round(q / (2 * M_PI)));
            }
      const double cubes = s.V * d * (d - 1) * (d - 2) / 6.0;
      CHECK(std::abs(m.scalars[b][column(th, "monopole")].item<double>() - monopoles / cubes) < 1e-12);
    }
    // Monopole charges: integers, zero in total for each cube orientation (a lattice divergence on a torus), none
    // at the cold start.
    auto q = U1::monopole_charges(theta);
    CHECK((q - torch::round(q)).abs().max().item<double>() < 1e-9);
    CHECK(torch::round(q).flatten(2).sum(2).abs().max().item<double>() == 0);
    CHECK(torch::round(q).abs().sum().item<double>() > 0);
    CHECK(U1::monopole_charges(th.cold_start(1, kF64)).abs().max().item<double>() == 0);
  }
}

TEST_CASE("U(1) in d = 3, 4: force is -dS/dtheta by central differences; action and observables gauge invariant",
          "[u1][nd]") {
  torch::manual_seed(2);
  for (const auto& L : kShapes) {
    const auto th = make_u1(L, 0.9);
    auto theta = 2 * M_PI * torch::rand(with_batch(1, th.field_shape()), kF64);
    const auto F = th.force(theta).flatten();
    auto flat = theta.flatten();
    const double eps = 1e-6;
    for (std::int64_t k = 0; k < flat.numel(); k += 7) {
      auto S_at = [&](double h) {
        auto t = flat.clone();
        t[k] += h;
        return th.action(t.view_as(theta)).item<double>();
      };
      CAPTURE(L, k);
      CHECK(std::abs((S_at(eps) - S_at(-eps)) / (2 * eps) + F[k].item<double>()) < 1e-7);
    }
    auto a = 2 * M_PI * torch::rand(with_batch(1, L), kF64);
    const auto g = U1::gauge_transform(theta, a);
    CHECK(std::abs(th.action(g).item<double>() - th.action(theta).item<double>()) < 1e-10);
    const auto m0 = th.measure(theta), m1 = th.measure(g);
    CHECK((m0.scalars - m1.scalars).abs().max().item<double>() < 1e-10);
    CHECK((m0.correlator - m1.correlator).abs().max().item<double>() < 1e-10);
  }
}

TEST_CASE("SU(N) in d = 3, 4: action, plaquettes, Wilson and Polyakov loops equal ordered link products", "[sun][nd]") {
  for (int n : {2, 3}) {
    for (const auto& L : kShapes) {
      const Sites s(L);
      const int d = static_cast<int>(L.size());
      const auto th = make_sun(n, L, 2.7);
      auto x = random_sun(th, 1, 3 + n);
      const auto S = th.action(x);
      const auto m = th.measure(x);
      const auto u = SUN::matrices(x).reshape({d, s.V, n, n});
      auto U = [&](int mu, std::int64_t y) { return u[mu][y]; };
      double total = 0, loop2 = 0;
      for (int mu = 0; mu < d; ++mu)
        for (int nu = mu + 1; nu < d; ++nu) {
          double sum = 0;
          for (std::int64_t y = 0; y < s.V; ++y) {
            auto P = torch::mm(torch::mm(U(mu, y), U(nu, s.step(y, mu, 1))),
                               torch::mm(SUN::dagger(U(mu, s.step(y, nu, 1))), SUN::dagger(U(nu, y))));
            sum += torch::real(P.trace()).item<double>();
            if (*std::min_element(L.begin(), L.end()) < 4) continue;
            auto W = torch::eye(n, torch::TensorOptions().dtype(torch::kComplexDouble));
            for (int k = 0; k < 2; ++k) W = torch::mm(W, U(mu, s.step(y, mu, k)));
            for (int k = 0; k < 2; ++k) W = torch::mm(W, U(nu, s.step(s.step(y, mu, 2), nu, k)));
            for (int k = 1; k >= 0; --k) W = torch::mm(W, SUN::dagger(U(mu, s.step(s.step(y, nu, 2), mu, k))));
            for (int k = 1; k >= 0; --k) W = torch::mm(W, SUN::dagger(U(nu, s.step(y, nu, k))));
            loop2 += torch::real(W.trace()).item<double>();
          }
          total += sum;
          CAPTURE(n, L, mu, nu);
          CHECK(std::abs(m.scalars[0][column(th, "plaq_" + std::to_string(mu) + std::to_string(nu))].item<double>() -
                         sum / (s.V * n)) < 1e-12);
        }
      const double planes = d * (d - 1) / 2.0;
      CAPTURE(n, L);
      CHECK(std::abs(S[0].item<double>() + 2.7 / n * total) < 1e-10);
      CHECK(std::abs(m.scalars[0][column(th, "plaq")].item<double>() - total / (s.V * n * planes)) < 1e-12);
      if (*std::min_element(L.begin(), L.end()) >= 4)
        CHECK(std::abs(m.scalars[0][column(th, "wilson_2x2")].item<double>() - loop2 / (s.V * n * planes)) < 1e-12);
      // Staples close the plaquettes: sum_{mu, x} Re tr U A = 4 sum_P Re tr U_P.
      auto ua = torch::matmul(SUN::matrices(x), SUN::staples(SUN::matrices(x)));
      CHECK(std::abs(torch::real(ua.diagonal(0, -2, -1).sum(-1)).sum().item<double>() - 4 * total) < 1e-9);
      // Polyakov loops: ordered products along the last direction from the sites with x_{d-1} = 0.
      cplx poly = 0;
      std::int64_t count = 0;
      for (std::int64_t y = 0; y < s.V; ++y) {
        if (s.coords(y)[d - 1] != 0) continue;
        auto P = torch::eye(n, torch::TensorOptions().dtype(torch::kComplexDouble));
        for (std::int64_t k = 0; k < L[d - 1]; ++k) P = torch::mm(P, U(d - 1, s.step(y, d - 1, k)));
        poly += static_cast<cplx>(P.trace().item<c10::complex<double>>());
        ++count;
      }
      CHECK(std::abs(m.scalars[0][column(th, "poly")].item<double>() - std::abs(poly) / (count * n)) < 1e-12);
    }
  }
}

TEST_CASE("SU(N) in d = 3, 4: force is -dS/dt along exp(t T_a) on every generator; gauge invariance", "[sun][nd]") {
  for (int n : {2, 3}) {
    const std::vector<std::int64_t> L{3, 2, 3, 2};
    const Sites s(L);
    const auto th = make_sun(n, L, 3.1);
    auto x = random_sun(th, 1, 40 + n);
    const auto F = th.force(x).reshape({4, s.V, n * n - 1});
    const auto gens = th.generators();
    const double eps = 1e-5;
    for (int mu = 0; mu < 4; ++mu)
      for (std::int64_t y : {std::int64_t{0}, std::int64_t{13}, s.V - 1})
        for (int a = 0; a < n * n - 1; ++a) {
          auto S_at = [&](double t) {
            auto u = SUN::matrices(x).clone().reshape({4, s.V, n, n});
            u[mu][y] = torch::mm(torch::matrix_exp(t * gens[a]), u[mu][y]);
            return th.action(SUN::storage(u.reshape(SUN::matrices(x).sizes()))).item<double>();
          };
          CAPTURE(n, mu, y, a);
          CHECK(std::abs((S_at(eps) - S_at(-eps)) / (2 * eps) + F[mu][y][a].item<double>()) < 1e-7);
        }
    auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
    const auto g = SUN::haar(n, with_batch(1, L), gen);
    const auto xg = SUN::storage(SUN::gauge_transform(SUN::matrices(x), g));
    CHECK(std::abs(th.action(xg).item<double>() - th.action(x).item<double>()) < 1e-10);
    const auto m0 = th.measure(x), m1 = th.measure(xg);
    CHECK((m0.scalars - m1.scalars).abs().max().item<double>() < 1e-12);
    CHECK((m0.correlator - m1.correlator).abs().max().item<double>() < 1e-12);
  }
}

TEST_CASE("heat-bath samplers: von Mises and SU(2) x0 moments equal Bessel-function ratios (4 sigma)",
          "[nd][heatbath]") {
  SplitMix64 rng(12345);
  const int N = 200000;
  // kappa < 1 uses uniform proposals, kappa >= 1 Best-Fisher: both sides of the switch.
  for (double kappa : {0.0, 0.3, 0.999, 1.0, 4.0, 60.0}) {
    double c = 0, c2 = 0, sn = 0;
    for (int i = 0; i < N; ++i) {
      const double phi = heatbath::von_mises(kappa, rng);
      REQUIRE(std::abs(phi) <= M_PI);
      c += std::cos(phi);
      c2 += std::cos(2 * phi);
      sn += std::sin(phi);
    }
    const double i0 = std::cyl_bessel_i(0.0, kappa);
    const double tol = 4.0 / std::sqrt(N);  // |cos|, |sin| <= 1: sigma <= 1/sqrt(N)
    CAPTURE(kappa, c / N, c2 / N, sn / N);
    CHECK(std::abs(c / N - std::cyl_bessel_i(1.0, kappa) / i0) < tol);
    CHECK(std::abs(c2 / N - std::cyl_bessel_i(2.0, kappa) / i0) < tol);
    CHECK(std::abs(sn / N) < tol);
  }
  // Density sqrt(1 - x^2) e^{ax}: <x> = I2(a)/I1(a), <x^2> = (I2(a)/a + I3(a))/I1(a) (1/4 at a = 0). Creutz below
  // a = 2, Kennedy-Pendleton above.
  for (double a : {0.0, 0.7, 1.999, 2.0, 8.0, 80.0}) {
    double m1 = 0, m2 = 0;
    for (int i = 0; i < N; ++i) {
      const double x = heatbath::su2_x0(a, rng);
      REQUIRE(std::abs(x) <= 1.0);
      m1 += x;
      m2 += x * x;
    }
    const double i1 = std::cyl_bessel_i(1.0, a);
    const double e1 = a > 0 ? std::cyl_bessel_i(2.0, a) / i1 : 0.0;
    const double e2 = a > 0 ? (std::cyl_bessel_i(2.0, a) / a + std::cyl_bessel_i(3.0, a)) / i1 : 0.25;
    const double sd1 = std::sqrt(e2 - e1 * e1), tol1 = 4 * sd1 / std::sqrt(N), tol2 = 4 * sd1 * 2 / std::sqrt(N);
    CAPTURE(a, m1 / N, e1, m2 / N, e2);
    CHECK(std::abs(m1 / N - e1) < tol1);
    CHECK(std::abs(m2 / N - e2) < tol2);
  }
}

TEST_CASE("overrelaxation keeps the action; heat bath keeps SU(N) links and is thread-count independent",
          "[nd][heatbath]") {
  const std::vector<std::int64_t> L{4, 3, 4};
  const heatbath::Lattice lattice(L);
  SECTION("U(1)") {
    const auto th = make_u1(L, 1.1);
    auto theta = (2 * M_PI * torch::rand(with_batch(1, th.field_shape()), kF64)).contiguous();
    SplitMix64 rng(5);
    const double S0 = th.action(theta).item<double>();
    heatbath::u1_sweep(theta.data_ptr<double>(), lattice, 1.1, heatbath::Move::kOverrelax, rng);
    CHECK(std::abs(th.action(theta).item<double>() - S0) < 1e-10);
    heatbath::u1_sweep(theta.data_ptr<double>(), lattice, 1.1, heatbath::Move::kHeatBath, rng);
    CHECK(std::abs(th.action(theta).item<double>() - S0) > 1e-3);
  }
  for (int n : {2, 3}) {
    const auto th = make_sun(n, L, 4.0);
    auto x = random_sun(th, 3, 60 + n).contiguous();
    auto* u = reinterpret_cast<cplx*>(x.data_ptr<double>());
    SplitMix64 rng(6);
    const auto S0 = th.action(x);
    heatbath::sun_sweep(u, lattice, n, 4.0, heatbath::Move::kOverrelax, rng);
    CAPTURE(n);
    CHECK((th.action(x) - S0).abs().max().item<double>() < 1e-9);
    // 100 compound sweeps: unitarity and det = 1 drift only by rounding.
    std::vector<std::uint64_t> streams{1, 2, 3};
    for (int k = 0; k < 50; ++k) th.heatbath_sweep(x, streams, 1);
    const auto m = SUN::matrices(x);
    const auto eye = torch::eye(n, torch::TensorOptions().dtype(torch::kComplexDouble));
    CHECK((torch::matmul(m, SUN::dagger(m)) - eye).abs().max().item<double>() < 1e-12);
    CHECK((torch::linalg_det(m) - 1).abs().max().item<double>() < 1e-12);
    // One and two threads: the same fields bitwise (each chain has its own stream).
    auto y1 = random_sun(th, 3, 70).contiguous(), y2 = y1.clone();
    at::set_num_threads(1);
    th.heatbath_sweep(y1, streams, 2);
    at::set_num_threads(2);
    th.heatbath_sweep(y2, streams, 2);
    at::set_num_threads(1);
    CHECK(torch::equal(y1, y2));
  }
}

namespace {

FlowParams u1_flow_params(const std::string& kernel) {
  FlowParams p;
  p.coupling = choice<Coupling>(kernel);
  p.hidden = {4};
  p.dtype = NetDtype::float64;
  p.activation = Activation::tanh;
  p.spline_bins = 4;
  p.ncp_components = 3;
  p.kernel = 3;
  p.prior = Prior::haar;
  return p;
}

torch::Tensor circle_distance(const torch::Tensor& a, const torch::Tensor& b) {
  auto d = torch::remainder(a - b, 2 * M_PI);
  return torch::minimum(d, 2 * M_PI - d);
}

}  // namespace

TEST_CASE("U(1) coupling layers in 3D and 4D: log-det equals the autograd Jacobian's, inverse, gauge equivariant",
          "[u1][nd][flows]") {
  torch::manual_seed(8);
  struct Case {
    std::vector<std::int64_t> extents;
    int mu, nu, offset;
    std::string kernel;
  };
  for (const auto& c : {Case{{4, 4, 4}, 0, 2, 1, "ncp"}, Case{{4, 4, 4}, 2, 1, 3, "spline"},
                        Case{{4, 4, 4, 4}, 3, 0, 2, "ncp"}, Case{{4, 4, 4, 4}, 1, 3, 0, "spline"}}) {
    CAPTURE(c.extents, c.mu, c.nu, c.offset, c.kernel);
    GaugeCoupling layer(c.mu, c.nu, c.offset, c.extents, u1_flow_params(c.kernel));
    layer.to(torch::kFloat64);
    // Weights of N(0, 0.1^2): the 3D/4D nets' fan-in (2 d(d-1)/2 channels x 3^d taps) is 10-50x the 2D one, and
    // larger weights make the spline and NCP inverses ill-conditioned (slopes near their 1e-3 floor), which would
    // test conditioning rather than correctness.
    randomise(layer, 0.1);
    auto x = 2 * M_PI *
             torch::rand(with_batch(1,
                                    [&] {
                                      std::vector<std::int64_t> f{static_cast<std::int64_t>(c.extents.size())};
                                      f.insert(f.end(), c.extents.begin(), c.extents.end());
                                      return f;
                                    }()),
                         kF64);
    auto [y, ld] = layer.forward(x);
    // Only links of direction mu at x_nu = offset mod 4 move.
    auto moved = circle_distance(y, x) > 1e-12;
    CHECK(circle_distance(y, x).max().item<double>() > 1e-3);
    CHECK(moved.select(1, c.mu).sum().item<std::int64_t>() == moved.sum().item<std::int64_t>());
    const double ref = autograd_logdet([&](const torch::Tensor& v) { return layer.forward(v).first; }, x);
    CHECK(ld.item<double>() == Approx(ref).margin(1e-9));
    auto [xi, ldi] = layer.inverse(y.detach());
    CHECK(circle_distance(xi, x).max().item<double>() < 1e-10);
    CHECK(ldi.item<double>() == Approx(-ld.item<double>()).margin(1e-9));
    // Gauge equivariance: f(g x) = g f(x), log-det invariant.
    auto a = 2 * M_PI * torch::rand(with_batch(1, c.extents), kF64);
    auto [gy, gld] = layer.forward(U1::gauge_transform(x, a));
    CHECK(circle_distance(gy, U1::gauge_transform(y, a)).max().item<double>() < 1e-10);
    CHECK(gld.item<double>() == Approx(ld.item<double>()).margin(1e-10));
  }
}

TEST_CASE("U(1) flows in 4D: identity when fresh; log q gauge invariant, translation covariant by 4, invertible",
          "[u1][nd][flows]") {
  torch::manual_seed(9);
  LatticeParams lattice;
  lattice.extents = {4, 4, 4, 8};
  auto p = u1_flow_params("ncp");
  p.layers = 12;  // every ordered pair (mu, nu) once
  auto fresh = std::make_shared<U1FlowImpl>(lattice, p, 1.0);
  auto z = fresh->draw_prior(2, 5);
  auto [x0, lq0] = fresh->forward(z);
  CHECK(circle_distance(x0, z).max().item<double>() < 1e-12);
  auto model = std::make_shared<U1FlowImpl>(lattice, p, 1.0);
  randomise(*model, 0.05);  // see above: twelve layers compound the conditioning
  auto [x, lq] = model->forward(z);
  CHECK(circle_distance(x, z).max().item<double>() > 1e-3);
  auto [lq_back, z_back] = model->log_prob(x);
  CHECK(circle_distance(z_back, z).max().item<double>() < 1e-9);
  CHECK((lq_back - lq).abs().max().item<double>() < 1e-9);
  auto a = 2 * M_PI * torch::rand({2, 4, 4, 4, 8}, kF64);
  auto [lq_g, zg] = model->log_prob(U1::gauge_transform(x, a));
  CHECK((lq_g - lq).abs().max().item<double>() < 1e-9);
  // Shifting the field by 4 sites along x3 maps the masks onto themselves.
  auto [lq_t, zt] = model->log_prob(torch::roll(x, {4}, {5}));
  CHECK((lq_t - lq).abs().max().item<double>() < 1e-9);
  // Refusals: the 2x1 loop features, an extent not a multiple of 4, SU(N) coupling layers in 4D.
  auto bad = p;
  bad.loops = true;
  CHECK_THROWS_AS(GaugeCoupling(0, 1, 0, {4, 4, 4}, bad), ConfigError);
  CHECK_THROWS_AS(GaugeCoupling(0, 1, 0, {4, 6, 4}, p), ConfigError);
}

TEST_CASE(
    "SU(2) and SU(3) spectral layers in 3D and 4D: log-det equals a numerical Jacobian (not 4D SU(3)), "
    "inverse, gauge "
    "equivariant, only the chosen links move",
    "[sun][nd][flows]") {
  torch::NoGradGuard no_grad;
  struct Case {
    int n;
    std::vector<std::int64_t> extents;
    int mu, nu, offset;
  };
  for (const auto& c : {Case{2, {4, 4, 4}, 2, 0, 1}, Case{3, {4, 4, 4}, 0, 1, 3}, Case{2, {4, 4, 4, 4}, 3, 1, 0},
                        Case{3, {4, 4, 4, 4}, 1, 3, 2}}) {
    CAPTURE(c.n, c.extents, c.mu, c.nu, c.offset);
    auto p = u1_flow_params("spectral");
    p.coupling = Coupling::spectral;
    torch::manual_seed(10 + c.n);
    SpectralCoupling layer(c.n, c.mu, c.nu, c.offset, c.extents, p);
    layer.to(torch::kFloat64);
    randomise(layer, 0.1);  // as for U(1): the 3D/4D fan-in is larger
    const auto th = make_sun(c.n, c.extents, 2.0);
    auto x = random_sun(th, 1, 70 + c.n);
    auto [y, ld] = layer.forward(x);
    const auto d = static_cast<std::int64_t>(c.extents.size());
    auto moved = (y - x).abs().flatten(d + 2).amax(-1) > 1e-12;  // [1, d, L0, ...]
    CHECK((y - x).abs().max().item<double>() > 1e-3);
    CHECK(moved.select(1, c.mu).sum().item<std::int64_t>() == moved.sum().item<std::int64_t>());
    auto [back, ldi] = layer.inverse(y);
    CHECK((back - x).abs().max().item<double>() < 1e-10);
    CHECK(ldi.item<double>() == Approx(-ld.item<double>()).margin(1e-10));
    auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
    const auto g = SUN::haar(c.n, with_batch(1, c.extents), gen);
    auto gauge = [&](const torch::Tensor& f) { return SUN::storage(SUN::gauge_transform(SUN::matrices(f), g)); };
    auto [yg, ldg] = layer.forward(gauge(x));
    CHECK((yg - gauge(y)).abs().max().item<double>() < 1e-11);
    CHECK(ldg.item<double>() == Approx(ld.item<double>()).margin(1e-11));
    if (d == 3 || c.n == 2) {  // 4D SU(3) would be an 8192 x 8192 Jacobian; 4D SU(2) is 3072 (17 s)
      const double num = numerical_log_det(
          th, [&](const torch::Tensor& v) { return layer.forward(v).first; }, x);
      CHECK(std::abs(num - ld.item<double>()) < 1e-6);
    }
  }
}
