// SPDX-License-Identifier: MIT
// 2D U(1): action, force and observables against naive loops and finite differences, integer topological charge,
// gauge invariance, exact finite-volume references; the gauge-equivariant flow: log-det against the autograd
// Jacobian (float64), invertibility on the circle (wrap-around), gauge equivariance of the map and invariance of
// log q, identity at initialisation, mask checks.
// torch (through glog) defines CHECK; include it first so that Catch's CHECK wins.
#include <torch/torch.h>

#include <catch2/catch.hpp>

#include <unistd.h>
#include <cmath>
#include <filesystem>
#include "support/torch_support.hpp"

#include "latflow/core/error.hpp"
#include "latflow/flows/checkpoint.hpp"
#include "latflow/flows/gauge.hpp"
#include "latflow/theories/u1.hpp"
#include "latflow/theories/u1_exact.hpp"

using namespace latflow;

namespace {

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

U1 make_u1(std::int64_t L0, std::int64_t L1, double beta) {
  LatticeParams lattice;
  lattice.extents = {L0, L1};
  U1Params p;
  p.beta = beta;
  return U1(lattice, p);
}

torch::Tensor random_links(std::int64_t B, std::int64_t L0, std::int64_t L1) {
  return 2 * M_PI * torch::rand({B, 2, L0, L1}, kF64);
}

// Distance on the circle, elementwise.
torch::Tensor circle_distance(const torch::Tensor& a, const torch::Tensor& b) {
  auto d = torch::remainder(a - b, 2 * M_PI);
  return torch::minimum(d, 2 * M_PI - d);
}

// Naive plaquette angle with explicit periodic indices.
double naive_plaquette(const torch::Tensor& th, std::int64_t x0, std::int64_t x1) {
  const auto L0 = th.size(1), L1 = th.size(2);
  auto t = [&](int mu, std::int64_t a, std::int64_t b) { return th[mu][(a + L0) % L0][(b + L1) % L1].item<double>(); };
  return t(0, x0, x1) + t(1, x0 + 1, x1) - t(0, x0, x1 + 1) - t(1, x0, x1);
}

FlowParams flow_params(const std::string& kernel, bool loops) {
  FlowParams p;
  p.coupling = choice<Coupling>(kernel);
  p.layers = 8;
  p.hidden = {4};
  p.dtype = NetDtype::float64;
  p.activation = Activation::tanh;
  p.spline_bins = 4;
  p.ncp_components = 3;
  p.loops = loops;
  return p;
}

using testing::autograd_logdet;
using testing::randomise;
using testing::use_fused;

const std::vector<std::pair<std::string, bool>> kKernels{
    {"ncp", false}, {"ncp", true}, {"spline", false}, {"spline", true}};

}  // namespace

TEST_CASE("U(1) action and observables equal naive loops; Q is an integer", "[u1]") {
  torch::manual_seed(1);
  const auto theory = make_u1(4, 8, 1.3);
  auto th = random_links(3, 4, 8);
  auto S = theory.action(th);
  auto m = theory.measure(th);
  const auto& names = theory.observable_names();
  REQUIRE(names == std::vector<std::string>{"plaq", "action_density", "Q", "Q2", "wilson_2x2"});
  for (int b = 0; b < 3; ++b) {
    double s = 0, q = 0, w2 = 0;
    for (int x0 = 0; x0 < 4; ++x0)
      for (int x1 = 0; x1 < 8; ++x1) {
        const double p = naive_plaquette(th[b], x0, x1);
        s += -1.3 * std::cos(p);
        q += std::remainder(p, 2 * M_PI);
        double box = 0;
        for (int a = 0; a < 2; ++a)
          for (int c = 0; c < 2; ++c) box += naive_plaquette(th[b], x0 + a, x1 + c);
        w2 += std::cos(box);
      }
    CHECK(S[b].item<double>() == Approx(s).epsilon(1e-13));
    CHECK(m.scalars[b][0].item<double>() == Approx(-s / 1.3 / 32).epsilon(1e-13));
    CHECK(m.scalars[b][1].item<double>() == Approx(s / 32).epsilon(1e-13));
    const double unrounded = theory.topological_charge(th).index({b}).item<double>();
    CHECK(std::abs(unrounded - std::round(unrounded)) < 1e-10);
    CHECK(m.scalars[b][2].item<double>() == std::round(q / (2 * M_PI)));
    CHECK(m.scalars[b][3].item<double>() == std::pow(m.scalars[b][2].item<double>(), 2));
    CHECK(m.scalars[b][4].item<double>() == Approx(w2 / 32).epsilon(1e-12));
    // Polyakov-loop correlator along x0 at t = 0 is |P|^2 = 1.
    CHECK(m.correlator[b][0].item<double>() == Approx(1.0).epsilon(1e-14));
  }
}

TEST_CASE("U(1) configurations of constant field strength have Q = q", "[u1]") {
  const std::int64_t L0 = 8, L1 = 4, V = L0 * L1;
  const auto theory = make_u1(L0, L1, 1.0);
  for (int q : {1, -2, 3}) {
    // theta_1(x) = a x0 and theta_0(L0 - 1, x1) = -a L0 x1 with a = 2 pi q / V: every plaquette angle is a.
    const double a = 2 * M_PI * q / V;
    auto th = torch::zeros({1, 2, L0, L1}, kF64);
    for (int x0 = 0; x0 < L0; ++x0)
      for (int x1 = 0; x1 < L1; ++x1) th[0][1][x0][x1] = a * x0;
    for (int x1 = 0; x1 < L1; ++x1) th[0][0][L0 - 1][x1] = -a * L0 * x1;
    auto P = torch::remainder(U1::plaquettes(th) - a, 2 * M_PI);
    CHECK(torch::minimum(P, 2 * M_PI - P).max().item<double>() < 1e-12);
    CHECK(theory.measure(th).scalars[0][2].item<double>() == q);
  }
}

TEST_CASE("U(1) force equals -dS/dtheta by autograd and by finite differences", "[u1]") {
  torch::manual_seed(2);
  const auto theory = make_u1(4, 4, 2.7);
  auto th = random_links(2, 4, 4).requires_grad_(true);
  auto grad = torch::autograd::grad({theory.action(th).sum()}, {th})[0];
  auto F = theory.force(th.detach());
  CHECK((F + grad).abs().max().item<double>() < 1e-12);
  auto x = th.detach();
  for (int mu = 0; mu < 2; ++mu) {
    const double h = 1e-5;
    auto up = x.clone(), dn = x.clone();
    up[0][mu][1][2] += h;
    dn[0][mu][1][2] -= h;
    const double fd = -(theory.action(up)[0] - theory.action(dn)[0]).item<double>() / (2 * h);
    CHECK(F[0][mu][1][2].item<double>() == Approx(fd).epsilon(1e-8));
  }
}

TEST_CASE("U(1) with a defect plaquette: action and density against naive loops, force against autograd (2D, 3D)",
          "[u1][ne]") {
  torch::manual_seed(21);
  for (const std::vector<std::int64_t>& extents :
       {std::vector<std::int64_t>{4, 6}, std::vector<std::int64_t>{3, 4, 5}}) {
    const auto d = static_cast<std::int64_t>(extents.size());
    LatticeParams lattice;
    lattice.extents = extents;
    std::vector<std::int64_t> shape{2, d};
    shape.insert(shape.end(), extents.begin(), extents.end());
    auto th = 2 * M_PI * torch::rand(shape, kF64);
    double V = 1;
    for (auto l : extents) V *= static_cast<double>(l);
    // The (0, 1) plaquette at x* = (L0 - 1, ..., L_{d-1} - 1) from explicit link indices.
    auto link = [&](std::int64_t b, std::int64_t mu, std::int64_t x0, std::int64_t x1) {
      std::vector<at::indexing::TensorIndex> idx{b, mu, x0, x1};
      for (std::int64_t k = 2; k < d; ++k) idx.emplace_back(extents[k] - 1);
      return th.index(idx).item<double>();
    };
    const std::int64_t L0 = extents[0], L1 = extents[1];
    const double beta = 1.7;
    U1Params periodic_params;
    periodic_params.beta = beta;
    const U1 periodic(lattice, periodic_params);
    for (double c : {0.0, 0.37, 2.5}) {
      CAPTURE(d, c);
      U1Params params = periodic_params;
      params.defect = c;
      const U1 theory(lattice, params);
      auto S = theory.action(th);
      auto density = theory.measure(th).scalars.select(1, 1);
      auto S1 = periodic.action(th);
      for (std::int64_t b = 0; b < 2; ++b) {
        const double p =
            link(b, 0, L0 - 1, L1 - 1) + link(b, 1, 0, L1 - 1) - link(b, 0, L0 - 1, 0) - link(b, 1, L0 - 1, L1 - 1);
        CHECK(U1::defect_plaquette(th)[b].item<double>() == Approx(p).epsilon(1e-14));
        const double expected = S1[b].item<double>() - (c - 1) * beta * std::cos(p);
        CHECK(S[b].item<double>() == Approx(expected).epsilon(1e-13));
        CHECK(density[b].item<double>() == Approx(expected / V).epsilon(1e-13));
      }
      auto x = th.clone().requires_grad_(true);
      auto grad = torch::autograd::grad({theory.action(x).sum()}, {x})[0];
      CHECK((theory.force(th) + grad).abs().max().item<double>() < 1e-12);
      // The defect touches four links only.
      auto moved = (theory.force(th) - periodic.force(th)).abs().gt(1e-14).sum().item<std::int64_t>();
      CHECK(moved == (c == 1 ? 0 : 8));  // 4 links x 2 configurations
    }
  }
}

TEST_CASE("U(1) plaquette prior is exact at defect 0: -S_0 - log q is one constant", "[u1][ne][prior]") {
  // The prior draws the V - 1 plaquettes other than P(L0 - 1, L1 - 1) from exp(beta cos) independently; the theory
  // whose defect plaquette has coupling 0 is exactly that (docs/physics.md "Switching on a defect").
  LatticeParams lattice;
  lattice.extents = {8, 4};
  const double beta = 2.5;
  auto fp = flow_params("ncp", false);
  fp.prior = Prior::plaquette;
  FlowModel flow(std::shared_ptr<FlowModelImpl>(std::make_shared<U1FlowImpl>(lattice, fp, beta)));
  auto z = flow->draw_prior(16, 5);
  auto lq = flow->prior_log_prob(z);
  U1Params params;
  params.beta = beta;
  params.defect = 0;
  auto log_w0 = -U1(lattice, params).action(z) - lq;
  CHECK((log_w0 - log_w0[0]).abs().max().item<double>() < 1e-9);
  params.defect = 1;  // the periodic theory: the weights vary
  auto log_w1 = -U1(lattice, params).action(z) - lq;
  CHECK((log_w1 - log_w1[0]).abs().max().item<double>() > 0.1);
}

TEST_CASE("U(1) action and observables are gauge invariant", "[u1]") {
  torch::manual_seed(3);
  const auto theory = make_u1(8, 8, 2.0);
  auto th = random_links(4, 8, 8);
  auto g = U1::gauge_transform(th, 2 * M_PI * torch::rand({4, 8, 8}, kF64));
  CHECK((theory.action(g) - theory.action(th)).abs().max().item<double>() < 1e-11);
  auto a = theory.measure(th), b = theory.measure(g);
  CHECK(torch::equal(a.scalars.select(1, 2), b.scalars.select(1, 2)));  // Q, exactly
  CHECK((a.scalars - b.scalars).abs().max().item<double>() < 1e-11);
  CHECK((a.correlator - b.correlator).abs().max().item<double>() < 1e-11);
}

TEST_CASE("U(1) exact references: docs/physics.md table, infinite-volume limit, sum rules", "[u1][exact]") {
  CHECK(u1_plaquette(64, 2.0) == Approx(0.697775).margin(5e-7));
  CHECK(u1_topological_susceptibility_q2(64, 2.0) == Approx(1.23930).margin(5e-6));
  CHECK(u1_plaquette(64, 1.0) == Approx(0.446390).margin(5e-7));
  CHECK(u1_topological_susceptibility_q2(64, 1.0) == Approx(2.60072).margin(5e-6));
  // Large volume: <cos theta_P> -> I_1/I_0; <Q^2>/V -> <p^2>_vonMises / (4 pi^2).
  const double beta = 3.0;
  CHECK(u1_plaquette(4096, beta) == Approx(std::cyl_bessel_i(1.0, beta) / std::cyl_bessel_i(0.0, beta)).epsilon(1e-9));
  double num = 0, den = 0;
  for (int i = 0; i < 200000; ++i) {
    const double p = -M_PI + (i + 0.5) * 2 * M_PI / 200000, w = std::exp(beta * std::cos(p));
    num += p * p * w;
    den += w;
  }
  CHECK(u1_topological_susceptibility_q2(4096, beta) / 4096 == Approx(num / den / (4 * M_PI * M_PI)).epsilon(1e-4));
  // A loop of area 0 or V is trivial; the plaquette is the loop of area 1; d ln Z / d beta = V <cos>.
  CHECK(u1_wilson_loop(64, 2.0, 0) == Approx(1.0));
  CHECK(u1_wilson_loop(64, 2.0, 64) == Approx(1.0));
  const double h = 1e-5;
  const double dF = (u1_free_energy(64, 2.0 + h) - u1_free_energy(64, 2.0 - h)) / (2 * h);
  CHECK(-dF == Approx(64 * u1_plaquette(64, 2.0)).epsilon(1e-7));
  CHECK(u1_free_energy(16, 0.0) == Approx(-32 * std::log(2 * M_PI)).epsilon(1e-14));
}

TEST_CASE("gauge coupling layers: log-det equals the autograd Jacobian's, inverse on the circle", "[u1][flows]") {
  torch::manual_seed(4);
  for (const auto& [kernel, loops] : kKernels) {
    for (int mu = 0; mu < 2; ++mu) {
      for (int offset : {0, 3}) {
        CAPTURE(kernel, loops, mu, offset);
        GaugeCoupling layer(mu, 1 - mu, offset, {4, 8}, flow_params(kernel, loops));
        layer.to(torch::kFloat64);
        randomise(layer, 0.4);
        auto x = random_links(1, 4, 8);
        auto [y, ld] = layer.forward(x);
        const double ref = autograd_logdet([&](const torch::Tensor& v) { return layer.forward(v).first; }, x);
        CHECK(ld.item<double>() == Approx(ref).margin(1e-9));
        CHECK(circle_distance(y, x).max().item<double>() > 1e-3);  // it moved
        auto [xi, ldi] = layer.inverse(y.detach());
        CHECK(circle_distance(xi, x).max().item<double>() < 1e-10);
        CHECK(ldi.item<double>() == Approx(-ld.item<double>()).margin(1e-9));
      }
    }
  }
}

TEST_CASE("gauge coupling layers handle the wrap-around: angles at 0, 2 pi and plaquettes at +-pi", "[u1][flows]") {
  torch::manual_seed(5);
  for (const auto& [kernel, loops] : kKernels) {
    CAPTURE(kernel, loops);
    GaugeCoupling layer(0, 1, 1, {4, 4}, flow_params(kernel, loops));
    layer.to(torch::kFloat64);
    randomise(layer, 0.4);
    auto x = random_links(2, 4, 4);
    x[0].fill_(0.0);                   // all plaquettes 0
    x[1].fill_(2 * M_PI - 1e-13);      // angles just below 2 pi
    x.index_put_({0, 0, 0, 1}, M_PI);  // one plaquette at exactly +-pi
    auto [y, ld] = layer.forward(x);
    CHECK(torch::isfinite(y).all().item<bool>());
    CHECK(torch::isfinite(ld).all().item<bool>());
    CHECK(y.min().item<double>() >= 0);
    CHECK(y.max().item<double>() < 2 * M_PI);
    auto [xi, ldi] = layer.inverse(y);
    CHECK(circle_distance(xi, x).max().item<double>() < 1e-9);
    CHECK((ldi + ld).abs().max().item<double>() < 1e-9);
  }
}

TEST_CASE(
    "U(1) inference kernels equal the LibTorch formulas layer by layer and for the whole flow, also at the "
    "wrap-around and for unreduced angles",
    "[u1][flows]") {
  // Without autograd the layers run kernels/gauge_kernels.cpp; use_fused(layer, false) gives the LibTorch ops. Every
  // instruction set the kernels are compiled for that this CPU has; a 4 x 12 lattice of 3 samples besides 8 x 8 of
  // 4, so that the spline's 8 lanes of active sites end in a partial block (36 rows) and cross samples.
  torch::NoGradGuard ng;
  torch::manual_seed(8);
  for (const auto& [kernel, loops] : kKernels)
    for (bool f64 : {true, false}) {
      CAPTURE(kernel, loops, f64);
      const auto dtype = f64 ? torch::kFloat64 : torch::kFloat32;
      // float64: rounding (the NCP inverse's bisection and Newton step: 1e-11). float32: the kernels work in float64
      // from float32 angles and net outputs, so they are compared with the same layer's ops in float64 (float32
      // weights and angles are exact there): what is left is the float32 rounding of the nets' outputs and of the
      // result (up to 4.4e-4 at these points: the inverses amplify it where a slope is small).
      const double tol = f64 ? 1e-11 : 1e-3;
      auto x8 = random_links(4, 8, 8);
      x8[1].fill_(0.0);                                            // all plaquettes 0
      x8[2].fill_(2 * M_PI - 1e-13);                               // angles just below 2 pi
      x8.index_put_({2, 0, 0, 1}, M_PI);                           // a plaquette at exactly +-pi
      x8[3] += 2 * M_PI * torch::randint(-3, 4, {2, 8, 8}, kF64);  // unreduced angles
      auto x12 = random_links(3, 4, 12);
      x12[1] += 2 * M_PI * torch::randint(-3, 4, {2, 4, 12}, kF64);
      auto dist = [](const torch::Tensor& a, const torch::Tensor& b) {
        return circle_distance(a.to(torch::kFloat64), b.to(torch::kFloat64)).max().item<double>();
      };
      for (auto isa : {pconv::Isa::baseline, pconv::Isa::x86_64_v3, pconv::Isa::x86_64_v4})
        for (const auto& x_case : {x8, x12})
          for (int mu = 0; mu < 2; ++mu)
            for (int offset : {0, 3}) {
              if (!pconv::isa_supported(isa)) continue;
              const auto x = x_case.to(dtype);
              CAPTURE(pconv::isa_name(isa), x.sizes(), mu, offset);
              GaugeCoupling layer(mu, 1 - mu, offset, {x.size(2), x.size(3)}, flow_params(kernel, loops));
              randomise(layer, 0.4);
              layer.to(dtype);
              use_fused(layer, true, true, isa);
              CHECK(layer.runs_in_place(x));
              for (bool inv : {false, true}) {
                CAPTURE(inv);
                auto fused = inv ? layer.inverse(x) : layer.forward(x);
                use_fused(layer, false);
                layer.to(torch::kFloat64);
                const auto x64 = x.to(torch::kFloat64);
                auto ops = inv ? layer.inverse(x64) : layer.forward(x64);
                layer.to(dtype);
                use_fused(layer, true, true, isa);
                CHECK(dist(fused.first, ops.first) < tol);
                CHECK(fused.first.min().item<double>() >= 0);
                CHECK(fused.first.max().item<double>() < 2 * M_PI);
                CHECK((fused.second.to(torch::kFloat64) - ops.second).abs().max().item<double>() < (f64 ? 1e-9 : 1e-3));
                CHECK(dist(fused.first, x) > 1e-2);
              }
            }
      LatticeParams lattice;
      lattice.extents = {8, 8};
      auto fp = flow_params(kernel, loops);
      fp.dtype = f64 ? NetDtype::float64 : NetDtype::float32;
      FlowModel model(std::shared_ptr<FlowModelImpl>(std::make_shared<U1FlowImpl>(lattice, fp)));
      randomise(*model, 0.15);
      auto z = model->draw_prior(4, 21);
      const int threads = at::get_num_threads();
      at::set_num_threads(1);
      auto fused = model->forward(z);
      auto fused_lp = model->log_prob(fused.first);
      at::set_num_threads(2);  // the kernels split the batch over threads: the same bits
      auto two = model->forward(z);
      at::set_num_threads(threads);
      CHECK(torch::equal(two.first, fused.first));
      CHECK(torch::equal(two.second, fused.second));
      use_fused(*model, false);
      auto ops = model->forward(z);
      auto ops_lp = model->log_prob(fused.first);
      use_fused(*model, true);
      CHECK(dist(fused.first, ops.first) < (f64 ? 1e-10 : 1e-3));
      CHECK((fused.second - ops.second).abs().max().item<double>() < (f64 ? 1e-8 : 1e-2));
      CHECK((fused_lp.first - ops_lp.first).abs().max().item<double>() < (f64 ? 1e-8 : 1e-2));
      CHECK((fused_lp.first - fused.second).abs().max().item<double>() < (f64 ? 1e-8 : 1e-2));
    }
}

TEST_CASE(
    "U(1) training nodes (flows/gauge_nodes.hpp) equal autograd through the LibTorch formulas: values and the "
    "gradients with respect to the links and every weight",
    "[u1][flows]") {
  // With autograd the 2D layers run three nodes (context, net at the active sites, update) over hand-written
  // backward kernels; use_fused(layer, false) gives the LibTorch ops, differentiated by autograd. A random linear
  // functional of (y, log|det|) pulls back to the links and to every weight of the net.
  // Every instruction set the kernels are compiled for that this CPU has; 3 samples of 8 x 4, so that for mu = 1
  // (4 active sites a sample) the spline's blocks of 8 rows cross samples and the last is partial; then 4 samples
  // in float32 on AVX-512 (the net's hidden convs on sample pairs; the fourth is the first translated, so that the
  // draw's conditioning is that of the three: the float64 inverse's gradients reach 1e-12 only for well-conditioned
  // draws).
  torch::manual_seed(9);
  const std::vector<std::vector<int>> nets{{}, {4}, {8}, {5, 3}};  // (8: the vectorised backward)
  for (std::int64_t batch : {3, 4})
    for (auto isa : {pconv::Isa::baseline, pconv::Isa::x86_64_v3, pconv::Isa::x86_64_v4})
      for (const auto& [kernel, loops] : kKernels)
        for (const auto& hidden : nets)
          for (bool f64 : {true, false}) {
            if (!pconv::isa_supported(isa) || (batch == 4 && (f64 || isa != pconv::Isa::x86_64_v4))) continue;
            CAPTURE(pconv::isa_name(isa), kernel, loops, hidden, f64, batch);
            const auto dtype = f64 ? torch::kFloat64 : torch::kFloat32;
            auto x0 = random_links(3, 8, 4);
            x0[1] += 2 * M_PI * torch::randint(-2, 3, {2, 8, 4}, kF64);            // unreduced angles
            if (batch == 4) x0 = torch::cat({x0, x0.narrow(0, 0, 1).roll(1, 2)});  // (sample 0 translated)
            x0 = x0.to(dtype);
            for (int mu = 0; mu < 2; ++mu)
              for (bool inv : {false, true}) {
                CAPTURE(mu, inv);
                auto fp = flow_params(kernel, loops);
                fp.hidden = hidden;
                GaugeCoupling layer(mu, 1 - mu, mu ? 1 : 2, {8, 4}, fp);
                randomise(layer, 0.4);
                layer.to(dtype);
                const auto wy = torch::randn({batch, 2, 8, 4}, kF64).to(dtype), wl = torch::randn({batch}, kF64);
                auto run = [&](bool fused) {
                  use_fused(layer, fused, true, isa);
                  auto x = x0.clone().requires_grad_(true);
                  auto [y, ld] = inv ? layer.inverse(x) : layer.forward(x);
                  auto loss = (wy * y).sum().to(torch::kFloat64) + (wl * ld.to(torch::kFloat64)).sum();
                  std::vector<torch::Tensor> wrt{x};
                  for (const auto& p : layer.parameters()) wrt.push_back(p);
                  auto grads = torch::autograd::grad({loss}, wrt);
                  grads.insert(grads.begin(), {y.detach(), ld.detach()});
                  return grads;
                };
                const auto fused = run(true), ops = run(false);
                use_fused(layer, true);
                // float64: to rounding, relative to the largest component; float32: the kernels work in float64 from
                // float32 inputs, the ops in float32.
                const double tol = f64 ? 1e-12 : 2e-3;
                CHECK(circle_distance(fused[0].to(torch::kFloat64), ops[0].to(torch::kFloat64)).max().item<double>() <
                      tol);
                for (std::size_t k = 1; k < fused.size(); ++k) {
                  CAPTURE(k);
                  const auto a = fused[k].to(torch::kFloat64), b = ops[k].to(torch::kFloat64);
                  const double scale = 1 + b.abs().max().item<double>();
                  CHECK((a - b).abs().max().item<double>() < tol * scale);
                }
                CHECK(fused[3].abs().max().item<double>() > 1e-3);  // the weights' gradients are not all zero
              }
          }
}

TEST_CASE("U(1) flow: gauge equivariant, log q gauge invariant, invertible, identity when fresh", "[u1][flows]") {
  torch::manual_seed(6);
  LatticeParams lattice;
  lattice.extents = {8, 4};
  for (const auto& [kernel, loops] : kKernels) {
    CAPTURE(kernel, loops);
    auto fp = flow_params(kernel, loops);
    FlowModel fresh(std::shared_ptr<FlowModelImpl>(std::make_shared<U1FlowImpl>(lattice, fp)));
    auto z = fresh->draw_prior(3, 17);
    auto [x0, lq0] = fresh->forward(z);
    CHECK(circle_distance(x0, z).max().item<double>() < 1e-12);
    CHECK((lq0 + 64 * std::log(2 * M_PI)).abs().max().item<double>() < 1e-9);

    FlowModel model(std::shared_ptr<FlowModelImpl>(std::make_shared<U1FlowImpl>(lattice, fp)));
    // Moderate weights: with large random ones the composed spline inverse is ill-conditioned (slopes down to 1e-3
    // per layer), which would test conditioning rather than correctness.
    randomise(*model, 0.15);
    auto [x, log_q] = model->forward(z);
    auto [lq_inv, z_back] = model->log_prob(x);
    CHECK(circle_distance(z_back, z).max().item<double>() < 1e-9);
    CHECK((lq_inv - log_q).abs().max().item<double>() < 1e-8);
    // Gauge transformation: f(g z) = g f(z), and log q(g x) = log q(x).
    auto alpha = 2 * M_PI * torch::rand({3, 8, 4}, kF64);
    auto [gx, glog_q] = model->forward(U1::gauge_transform(z, alpha));
    CHECK(circle_distance(gx, U1::gauge_transform(x, alpha)).max().item<double>() < 1e-9);
    CHECK((glog_q - log_q).abs().max().item<double>() < 1e-9);
    auto [lq_g, zg] = model->log_prob(U1::gauge_transform(x, alpha));
    CHECK((lq_g - log_q).abs().max().item<double>() < 1e-8);
    // q is a density on the torus: angles shifted by multiples of 2 pi (HMC's unwrapped fields in a mixed chain)
    // have the same log q.
    const auto winds = torch::randint(-3, 4, x.sizes(), torch::TensorOptions().dtype(torch::kFloat64));
    auto [lq_w, zw] = model->log_prob(x + 2 * M_PI * winds);
    CHECK((lq_w - log_q).abs().max().item<double>() < 1e-8);
    // Translations by the mask period (4) commute with the flow.
    auto [tx, tlog_q] = model->forward(torch::roll(z, {4}, {2}));
    CHECK(circle_distance(tx, torch::roll(x, {4}, {2})).max().item<double>() < 1e-9);
    CHECK((tlog_q - log_q).abs().max().item<double>() < 1e-9);
  }
}

TEST_CASE("U(1) flows on the plaquette priors: log q gauge invariant and consistent; path gradient 0 at q = p",
          "[u1][flows][prior]") {
  torch::manual_seed(8);
  LatticeParams lattice;
  lattice.extents = {8, 4};
  const double beta = 2.5;
  auto theory = make_u1(8, 4, beta);
  const double F = u1_free_energy(32, beta);
  for (std::string prior : {"plaquette", "exact"}) {
    CAPTURE(prior);
    auto fp = flow_params("ncp", false);
    fp.prior = choice<Prior>(prior);
    FlowModel fresh(std::shared_ptr<FlowModelImpl>(std::make_shared<U1FlowImpl>(lattice, fp, beta)));
    auto z = fresh->draw_prior(4, 23);
    auto again = fresh->draw_prior(4, 23);
    CHECK(torch::equal(z, again));  // a stream's draws are reproducible
    auto lq = fresh->prior_log_prob(z);
    auto S = theory.action(z);
    if (prior == "exact") {
      CHECK((lq + S - F).abs().max().item<double>() < 1e-9);  // q = exp(-S) / Z
    } else {
      // beta (sum_P cos - cos of the defect) + const: the weight depends on the defect plaquette alone.
      auto defect = torch::cos(U1::plaquettes(z).select(1, 7).select(1, 3));
      auto log_w = -S - lq - beta * defect;
      CHECK((log_w - log_w[0]).abs().max().item<double>() < 1e-9);
    }
    auto alpha = 2 * M_PI * torch::rand({4, 8, 4}, kF64);
    CHECK((fresh->prior_log_prob(U1::gauge_transform(z, alpha)) - lq).abs().max().item<double>() < 1e-9);

    // Layers on top: the forward and inverse log q agree and are gauge invariant.
    FlowModel model(std::shared_ptr<FlowModelImpl>(std::make_shared<U1FlowImpl>(lattice, fp, beta)));
    randomise(*model, 0.15);
    auto [x, log_q] = model->forward(z);
    auto [lq_inv, z_back] = model->log_prob(x);
    CHECK((lq_inv - log_q).abs().max().item<double>() < 1e-8);
    auto [lq_g, zg] = model->log_prob(U1::gauge_transform(x, alpha));
    CHECK((lq_g - log_q).abs().max().item<double>() < 1e-8);

    // The path gradient at the fresh (identity) flow: zero when the prior is exact (log q + S is constant in x),
    // not zero for the independent plaquettes, whose defect the layers can correct.
    fresh->zero_grad();
    reverse_kl_objective(*fresh, theory, z, true).objective.sum().backward();
    double grad = 0;
    for (const auto& p : fresh->parameters())
      if (p.grad().defined()) grad = std::max(grad, p.grad().abs().max().item<double>());
    if (prior == "exact")
      CHECK(grad < 1e-9);
    else
      CHECK(grad > 1e-3);
  }
}

TEST_CASE("U(1) flow masks need extents that are multiples of 4", "[u1][flows]") {
  LatticeParams lattice;
  lattice.extents = {8, 6};
  CHECK_THROWS_AS(U1FlowImpl(lattice, flow_params("ncp", false)), ConfigError);
}

TEST_CASE("weights moved to a larger volume (train.init_from) give the same local map: f(tile(z)) = tile(f(z))",
          "[u1][flows]") {
  torch::manual_seed(7);
  Config small, large;
  for (Config* c : {&small, &large}) {
    c->theory = TheoryId::u1;
    c->flow = flow_params("spline", true);
    c->flow.kernel = 3;
  }
  small.lattice.extents = {4, 8};
  large.lattice.extents = {8, 16};
  small.u1.beta = 2.0;
  large.u1.beta = 3.0;  // couplings may differ too
  small.validate();
  large.validate();
  FlowModel m_small = make_flow(small), m_large = make_flow(large);
  randomise(*m_small, 0.3);
  const auto path =
      (std::filesystem::temp_directory_path() / ("latflow_u1_init_" + std::to_string(::getpid()))).string();
  CheckpointMeta meta;
  meta.model_identity = model_identity(small);
  meta.train_seconds = 12.5;
  save_checkpoint(path, m_small, nullptr, meta);
  auto source = load_weights_from(path, m_large, model_identity(large));
  CHECK(source.train_seconds == 12.5);
  CHECK(m_large->weights_hash() == m_small->weights_hash());
  auto z = m_small->draw_prior(2, 3);
  auto tiled = z.repeat({1, 1, 2, 2});
  auto [x_small, lq_small] = m_small->forward(z);
  auto [x_large, lq_large] = m_large->forward(tiled);
  CHECK(circle_distance(x_large, x_small.repeat({1, 1, 2, 2})).max().item<double>() < 1e-10);
  // log q of the tiled configuration: prior and log-det both scale with the number of copies.
  CHECK((lq_large - 4 * lq_small).abs().max().item<double>() < 1e-8);
  // Another architecture is refused, naming the key.
  Config other = large;
  other.flow.hidden = {8};
  FlowModel m_other = make_flow(other);
  CHECK_THROWS_WITH(load_weights_from(path, m_other, model_identity(other)), Catch::Contains("flow.hidden"));
  std::filesystem::remove(path);
}
