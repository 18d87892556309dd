// SPDX-License-Identifier: MIT
// HMC: reversibility of both integrators to float64 rounding, their O(dt^2) energy violation, <exp(-dH)> = 1,
// independence of a chain from how the chains are split, and physics (free field exact, tutorial reference of
// docs/physics.md) with the Gamma method over the chains as replicas; the gradient of a non-equilibrium path's work
// through flow blocks. Fixed seeds.
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <functional>

#include "latflow/analysis/gamma.hpp"
#include "latflow/flows/flow.hpp"
#include "latflow/samplers/hmc.hpp"
#include "latflow/samplers/imh.hpp"
#include "latflow/theories/phi4.hpp"
#include "latflow/theories/sun.hpp"
#include "latflow/theories/sun_exact.hpp"
#include "latflow/theories/u1.hpp"
#include "latflow/theories/u1_exact.hpp"

using namespace latflow;

namespace {

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

Phi4 make_phi4(double m2, double lam) {
  LatticeParams lattice;
  lattice.extents = {8, 8};
  Phi4Params p;
  p.m2 = m2;
  p.lam = lam;
  p.resolve(2);
  return Phi4(lattice, p);
}

HmcParams params(const std::string& integrator, std::int64_t chains) {
  HmcParams p;
  p.integrator = choice<Integrator>(integrator);
  p.chains = chains;
  return p;
}

// Thermalised configurations of the tutorial point (tuned n_md), for the integrator tests.
at::Tensor thermalised_tutorial_fields(const Phi4& theory, std::int64_t chains) {
  HmcChains hmc(theory, params("omelyan", chains), 11, 0, chains, kF64);
  hmc.thermalize(40);
  return hmc.field();
}

// Per-chain series (chains x trajectories) of the named observables and of exp(-dH), after thermalisation.
struct Run {
  std::map<std::string, std::vector<std::vector<double>>> series;
  double acceptance = 0;
  int n_md = 0;
};
Run run_chains(const Theory& theory, const HmcParams& p, std::uint64_t seed) {
  torch::InferenceMode inference;  // as latflow hmc runs
  HmcChains hmc(theory, p, seed, 0, p.chains, kF64);
  Run run;
  run.n_md = hmc.thermalize(p.thermalization);
  const auto& names = theory.observable_names();
  const auto C = static_cast<std::size_t>(p.chains);
  std::int64_t accepted = 0;
  for (std::int64_t t = 0; t < p.trajectories; ++t) {
    auto r = hmc.trajectory(p.thermalization + t);
    accepted += r.accepted.sum().item<std::int64_t>();
    auto sc = theory.measure(hmc.field()).scalars.contiguous();
    auto e = torch::exp(-r.dH).contiguous();
    for (std::size_t c = 0; c < C; ++c) {
      for (std::size_t j = 0; j < names.size(); ++j) {
        auto& s = run.series[names[j]];
        s.resize(C);
        s[c].push_back(sc.data_ptr<double>()[c * names.size() + j]);
      }
      auto& s = run.series["exp_mdH"];
      s.resize(C);
      s[c].push_back(e.data_ptr<double>()[c]);
    }
  }
  run.acceptance = static_cast<double>(accepted) / static_cast<double>(p.chains * p.trajectories);
  return run;
}

// Thermalised chains integrated 10 Omelyan steps of dt = 0.1 forward, `at_turn` run on the end point, the momenta
// flipped and integrated back: the start must come back to float64 rounding.
void check_reversible(const Theory& theory, const HmcParams& p, std::int64_t B, std::int64_t therm,
                      const std::function<void(const at::Tensor&)>& at_turn = {}) {
  HmcChains hmc(theory, p, 3, 0, B, kF64);
  hmc.thermalize(therm);
  const auto x0 = hmc.field();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
  const auto p0 = theory.draw_momenta(gen, B);
  auto x = x0.clone(), mom = p0.clone();
  const auto dt = torch::full({B}, 0.1, kF64);
  integrate(theory, Integrator::kOmelyan, x, mom, dt, 10);
  CHECK((x - x0).abs().max().item<double>() > 0.01);
  if (at_turn) at_turn(x);
  mom = -mom;
  integrate(theory, Integrator::kOmelyan, x, mom, dt, 10);
  CHECK((x - x0).abs().max().item<double>() < 1e-10);
  CHECK((mom + p0).abs().max().item<double>() < 1e-10);
}

}  // namespace

TEST_CASE("leapfrog and Omelyan are reversible to float64 rounding", "[hmc]") {
  const auto theory = make_phi4(-4.0, 8.0);
  const auto x0 = thermalised_tutorial_fields(theory, 16);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  const auto p0 = theory.draw_momenta(gen, 16);
  const auto dt = torch::linspace(0.05, 0.15, 16, kF64);  // a different step size per chain
  for (const auto integrator : {Integrator::kLeapfrog, Integrator::kOmelyan}) {
    auto x = x0.clone(), p = p0.clone();
    integrate(theory, integrator, x, p, dt, 10);
    CHECK((x - x0).abs().max().item<double>() > 0.1);  // it moved
    p = -p;
    integrate(theory, integrator, x, p, dt, 10);
    CAPTURE(choice_name(integrator));
    CHECK((x - x0).abs().max().item<double>() < 1e-10);
    CHECK((p + p0).abs().max().item<double>() < 1e-10);
  }
  // The check built into the trajectory reports the same.
  HmcChains hmc(theory, params("omelyan", 16), 3, 0, 16, kF64);
  hmc.set_field(x0);
  auto r = hmc.trajectory(0, true);
  CHECK(r.max_dx < 1e-10);
  CHECK(r.max_dp < 1e-10);
  CHECK(r.max_dx > 0);
}

TEST_CASE("energy violation of both integrators is O(dt^2) at fixed trajectory length", "[hmc]") {
  const auto theory = make_phi4(-4.0, 8.0);
  const auto x0 = thermalised_tutorial_fields(theory, 64);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(6);
  const auto p0 = theory.draw_momenta(gen, 64);
  auto rms_dh = [&](Integrator integrator, int n_md) {
    auto x = x0.clone(), p = p0.clone();
    const auto dt = torch::full({64}, 1.0 / n_md, kF64);
    const auto H0 = theory.kinetic_energy(p) + theory.action(x);
    integrate(theory, integrator, x, p, dt, n_md);
    const auto dH = theory.kinetic_energy(p) + theory.action(x) - H0;
    return std::sqrt((dH * dH).mean().item<double>());
  };
  // dt small enough for the asymptotic regime, yet dH far above rounding.
  for (const auto& [integrator, n_md] : {std::pair{Integrator::kLeapfrog, 20}, std::pair{Integrator::kOmelyan, 10}}) {
    const double coarse = rms_dh(integrator, n_md), fine = rms_dh(integrator, 2 * n_md);
    CAPTURE(choice_name(integrator), coarse, fine);
    CHECK(coarse / fine == Approx(4.0).margin(0.3));
  }
}

TEST_CASE("acceptance model: mean_dh_for_acceptance inverts erfc(sqrt(<dH>)/2)", "[hmc]") {
  for (double a : {0.05, 0.5, 0.8, 0.99}) CHECK(acceptance_for_mean_dh(mean_dh_for_acceptance(a)) == Approx(a));
}

TEST_CASE("a chain's history does not depend on how the chains are split", "[hmc]") {
  const auto theory = make_phi4(-4.0, 8.0);
  auto p = params("leapfrog", 6);
  p.n_md = 8;
  HmcChains all(theory, p, 21, 0, 6, kF64), low(theory, p, 21, 0, 2, kF64), high(theory, p, 21, 2, 4, kF64);
  for (std::int64_t t = 0; t < 5; ++t) {
    auto a = all.trajectory(t), l = low.trajectory(t), h = high.trajectory(t);
    CHECK(torch::equal(a.dH, torch::cat({l.dH, h.dH})));
  }
  CHECK(torch::equal(all.field(), torch::cat({low.field(), high.field()})));
}

TEST_CASE("HMC on the free field reproduces chi2 = 1/(2 m2) and <S>/V = 1/2; <exp(-dH)> = 1", "[hmc][physics]") {
  const auto theory = make_phi4(1.0, 0.0);
  auto p = params("omelyan", 64);
  p.thermalization = 100;
  p.trajectories = 600;
  const auto run = run_chains(theory, p, 7);
  for (const auto& [name, exact] : {std::pair{"chi2", 0.5}, std::pair{"action_density", 0.5}}) {
    const auto g = analysis::gamma_method(run.series.at(name));
    CAPTURE(name, g.mean, g.error, g.tau_int);
    CHECK(std::abs(g.mean - exact) < 3 * g.error);
  }
  const auto e = analysis::gamma_method(run.series.at("exp_mdH"));
  CAPTURE(e.mean, e.error, run.acceptance, run.n_md);
  CHECK(std::abs(e.mean - 1) < 3 * e.error);
}

TEST_CASE("HMC at the tutorial point gives chi2 = 0.7456(13); tuned to ~0.8 acceptance; <exp(-dH)> = 1",
          "[hmc][physics]") {
  const auto theory = make_phi4(-4.0, 8.0);
  for (const char* integrator : {"omelyan", "leapfrog"}) {
    auto p = params(integrator, 64);
    p.thermalization = 200;
    p.trajectories = 1500;
    const auto run = run_chains(theory, p, 1);
    const auto chi2 = analysis::gamma_method(run.series.at("chi2"));
    const auto e = analysis::gamma_method(run.series.at("exp_mdH"));
    CAPTURE(integrator, chi2.mean, chi2.error, chi2.tau_int, e.mean, e.error, run.acceptance, run.n_md);
    CHECK(std::abs(chi2.mean - 0.7456) < 3 * std::hypot(chi2.error, 0.0013));
    CHECK(std::abs(e.mean - 1) < 3 * e.error);
    CHECK(run.acceptance > 0.7);
    CHECK(run.acceptance < 0.97);
  }
}

TEST_CASE(
    "U(1) HMC at L = 8, beta = 2 reproduces the exact <cos theta_P>, <Q^2> and 2x2 loop; reversible; "
    "<exp(-dH)> = 1",
    "[hmc][physics][u1]") {
  LatticeParams lattice;
  lattice.extents = {8, 8};
  U1Params up;
  up.beta = 2.0;
  const U1 theory(lattice, up);
  auto p = params("omelyan", 32);
  p.thermalization = 100;
  p.trajectories = 800;
  const auto run = run_chains(theory, p, 5);
  const std::int64_t V = 64;
  for (const auto& [name, exact] :
       {std::pair{"plaq", u1_plaquette(V, 2.0)}, std::pair{"Q2", u1_topological_susceptibility_q2(V, 2.0)},
        std::pair{"wilson_2x2", u1_wilson_loop(V, 2.0, 4)}}) {
    const auto g = analysis::gamma_method(run.series.at(name));
    CAPTURE(name, exact, g.mean, g.error, g.tau_int);
    CHECK(std::abs(g.mean - exact) < 3 * g.error);
  }
  const auto e = analysis::gamma_method(run.series.at("exp_mdH"));
  CAPTURE(e.mean, e.error, run.acceptance, run.n_md);
  CHECK(std::abs(e.mean - 1) < 3 * e.error);

  check_reversible(theory, p, 8, 20);
}

// SU(N): cold start, Omelyan, chains as replicas. L = 8 (finite-volume effects ~ w^64, invisible) and a 2x2
// torus at beta = 6 where the finite-volume correction to the SU(2) plaquette is ~ 4% (test_sun.cpp), so the
// torus formula, not only the planar limit, is tested. Then reversibility, unitarity and det = 1 after MD.
TEST_CASE(
    "SU(N) HMC reproduces the exact plaquette, 2x2 loop and Polyakov correlator; <exp(-dH)> = 1; "
    "reversible; links stay in SU(N)",
    "[hmc][physics][sun]") {
  struct Point {
    int n;
    double beta;
    std::int64_t L, chains, trajectories;
  };
  for (const auto& pt : {Point{2, 2.0, 8, 16, 120}, Point{3, 4.0, 8, 16, 120}, Point{2, 6.0, 2, 32, 600}}) {
    LatticeParams lattice;
    lattice.extents = {pt.L, pt.L};
    SUNParams sp;
    sp.n = pt.n;
    sp.beta = pt.beta;
    const SUN theory(lattice, sp);
    auto p = params("omelyan", pt.chains);
    p.thermalization = 40;
    p.n_md = 4;  // acceptance ~0.95 at these couplings with tau = 1
    p.trajectories = pt.trajectories;
    const auto run = run_chains(theory, p, 17);
    const std::int64_t V = pt.L * pt.L;
    std::vector<std::pair<std::string, double>> refs{{"plaq", sun_plaquette(pt.n, V, pt.beta)}};
    if (pt.L >= 4) refs.emplace_back("wilson_2x2", sun_wilson_loop(pt.n, V, pt.beta, 4));
    for (const auto& [name, exact] : refs) {
      const auto g = analysis::gamma_method(run.series.at(name));
      CAPTURE(pt.n, pt.beta, pt.L, name, exact, g.mean, g.error, g.tau_int, run.acceptance, run.n_md);
      CHECK(std::abs(g.mean - exact) < 3 * g.error);
    }
    const auto e = analysis::gamma_method(run.series.at("exp_mdH"));
    CAPTURE(pt.n, pt.beta, e.mean, e.error, run.acceptance, run.n_md);
    CHECK(std::abs(e.mean - 1) < 3 * e.error);
  }

  LatticeParams lattice;
  lattice.extents = {4, 4};
  SUNParams sp;
  sp.n = 3;
  sp.beta = 4.0;
  const SUN theory(lattice, sp);
  check_reversible(theory, params("omelyan", 4), 4, 10, [](const at::Tensor& x) {
    const auto u = SUN::matrices(x);
    const auto eye = torch::eye(3, torch::TensorOptions().dtype(torch::kComplexDouble));
    CHECK((torch::matmul(u, SUN::dagger(u)) - eye).abs().max().item<double>() < 1e-13);
    CHECK((torch::linalg_det(u) - 1).abs().max().item<double>() < 1e-13);
  });
}

// ---- d = 3, 4 and the heat bath (docs/physics.md "Gauge theory in d dimensions", "Heat bath and
// overrelaxation"). Errors: Gamma method over the chains as replicas.

namespace {

HmcParams heatbath_params(std::int64_t chains, std::int64_t thermalization, std::int64_t sweeps) {
  auto p = params("omelyan", chains);
  p.algorithm = UpdateAlgorithm::heatbath;
  p.overrelax = 1;
  p.thermalization = thermalization;
  p.trajectories = sweeps;
  return p;
}

std::unique_ptr<Theory> gauge_theory(int n, std::vector<std::int64_t> extents, double beta) {
  LatticeParams lattice;
  lattice.extents = std::move(extents);
  if (n == 1) {
    U1Params up;
    up.beta = beta;
    return std::make_unique<U1>(lattice, up);
  }
  SUNParams sp;
  sp.n = n;
  sp.beta = beta;
  return std::make_unique<SUN>(lattice, sp);
}

}  // namespace

TEST_CASE("heat bath in 2D reproduces the exact plaquette and 2x2 loop of U(1), SU(2), SU(3) (3 sigma)",
          "[heatbath][physics][u1][sun]") {
  for (const auto& [n, beta] : {std::pair{1, 2.0}, std::pair{2, 2.0}, std::pair{3, 4.0}}) {
    const auto theory = gauge_theory(n, {8, 8}, beta);
    const auto run = run_chains(*theory, heatbath_params(16, 20, 300), 31);
    const std::int64_t V = 64;
    const double plaq = n == 1 ? u1_plaquette(V, beta) : sun_plaquette(n, V, beta);
    const double loop = n == 1 ? u1_wilson_loop(V, beta, 4) : sun_wilson_loop(n, V, beta, 4);
    for (const auto& [name, exact] : {std::pair{"plaq", plaq}, std::pair{"wilson_2x2", loop}}) {
      const auto g = analysis::gamma_method(run.series.at(name));
      CAPTURE(n, beta, name, exact, g.mean, g.error, g.tau_int);
      CHECK(std::abs(g.mean - exact) < 3 * g.error);
    }
    CHECK(run.acceptance == 1.0);
  }
}

TEST_CASE("HMC and heat bath agree on the plaquette and 2x2 loop in 3D and 4D (3 sigma); <exp(-dH)> = 1",
          "[heatbath][physics][u1][sun]") {
  struct Point {
    int n;
    std::vector<std::int64_t> extents;
    double beta;
    std::int64_t chains, trajectories;
  };
  // U(1) in 4D at beta = 0.8, on the confined side of the transition (beta_c ~ 1.01) away from its metastability.
  // SU(3) in 4D is in docs/validation.md (HMC from a cold start needs ~10^2 trajectories to relax there).
  for (const auto& pt :
       {Point{1, {4, 4, 4}, 1.5, 16, 300}, Point{1, {4, 4, 4, 4}, 0.8, 16, 300}, Point{2, {4, 4, 4}, 3.0, 16, 150},
        Point{2, {4, 4, 4, 4}, 2.0, 8, 100}, Point{3, {4, 4, 4}, 6.0, 8, 150}}) {
    const auto theory = gauge_theory(pt.n, pt.extents, pt.beta);
    auto hp = params("omelyan", pt.chains);
    hp.thermalization = 40;
    hp.trajectories = pt.trajectories;
    const auto hmc = run_chains(*theory, hp, 41);
    const auto hb = run_chains(*theory, heatbath_params(pt.chains, 40, pt.trajectories), 43);
    for (const char* name : {"plaq", "wilson_2x2"}) {
      const auto a = analysis::gamma_method(hmc.series.at(name)), b = analysis::gamma_method(hb.series.at(name));
      CAPTURE(pt.n, pt.extents, pt.beta, name, a.mean, a.error, a.tau_int, b.mean, b.error, b.tau_int, hmc.n_md);
      CHECK(std::abs(a.mean - b.mean) < 3 * std::hypot(a.error, b.error));
    }
    const auto e = analysis::gamma_method(hmc.series.at("exp_mdH"));
    CAPTURE(pt.n, pt.extents, e.mean, e.error, hmc.acceptance);
    CHECK(std::abs(e.mean - 1) < 3 * e.error);
  }
}

TEST_CASE("4D strong coupling: the heat-bath plaquette is the one-plaquette value u(beta) + O(u^5) (3 sigma)",
          "[heatbath][physics][u1][sun]") {
  // u = I1/I0 (U(1)), the planar-limit plaquette of SU(N); the first correction is from the cubes around a
  // plaquette, O(u^5) (below 1e-4 here, a third of the statistical error).
  for (const auto& [n, beta] : {std::pair{1, 0.2}, std::pair{2, 0.5}, std::pair{3, 1.0}}) {
    const auto theory = gauge_theory(n, {3, 3, 3, 3}, beta);
    const auto run = run_chains(*theory, heatbath_params(8, 10, 300), 51);
    const double u =
        n == 1 ? std::cyl_bessel_i(1.0, beta) / std::cyl_bessel_i(0.0, beta) : sun_wilson_loop_infinite(n, beta, 1);
    const auto g = analysis::gamma_method(run.series.at("plaq"));
    CAPTURE(n, beta, u, g.mean, g.error, g.tau_int);
    CHECK(std::abs(g.mean - u) < 3 * g.error);
    CHECK(g.error < 0.05 * u);  // the test resolves the leading order
  }
}

TEST_CASE("4D HMC is reversible; heat-bath chains do not depend on how the chains are split", "[hmc][heatbath][sun]") {
  const auto su3 = gauge_theory(3, {2, 2, 2, 2}, 5.5);
  check_reversible(*su3, params("omelyan", 2), 2, 5);
  const auto u1 = gauge_theory(1, {2, 3, 2, 2}, 1.0);
  check_reversible(*u1, params("omelyan", 2), 2, 5);
  const auto p = heatbath_params(5, 0, 0);
  HmcChains all(*su3, p, 21, 0, 5, kF64), low(*su3, p, 21, 0, 2, kF64), high(*su3, p, 21, 2, 3, kF64);
  for (std::int64_t t = 0; t < 3; ++t) {
    all.trajectory(t);
    low.trajectory(t);
    high.trajectory(t);
  }
  CHECK(torch::equal(all.field(), torch::cat({low.field(), high.field()})));
}

TEST_CASE(
    "stochastic normalizing flows: the work's gradient in the last flow block's weights equals central differences "
    "(phi4, U(1)); earlier blocks and the start receive gradients",
    "[hmc][ne]") {
  for (const char* theory : {"phi4", "u1"}) {
    Config cfg;
    cfg.theory = choice<TheoryId>(theory);
    cfg.lattice.extents = {4, 4};
    cfg.flow.layers = 0;
    cfg.flow.hidden = {4};
    cfg.flow.dtype = NetDtype::float64;
    cfg.ne.steps = 3;
    cfg.ne.blocks = 3;  // one before every update: the last one acts before the final update
    cfg.hmc.n_md = 4;
    if (cfg.theory == TheoryId::phi4) {
      cfg.phi4.m2 = -1;
      cfg.phi4.lam = 1;
      cfg.ne.parameter = NeParameter::phi4_m2;
      cfg.ne.start = 0.5;
    } else {
      cfg.u1.beta = 1;
      cfg.ne.parameter = NeParameter::u1_beta;
      cfg.ne.start = 0.3;
    }
    cfg.validate();
    torch::manual_seed(2);
    FlowModel model = make_flow(cfg);
    REQUIRE(model->num_blocks() == 3);
    CHECK(model->block_step(2) == 3);
    {
      torch::NoGradGuard g;  // fresh blocks are the identity: random weights make them real maps
      for (auto& p : model->parameters()) p.normal_(0, 0.2);
    }
    NeProtocol protocol(cfg);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
    const auto x0 = (cfg.theory == TheoryId::phi4 ? torch::randn({5, 4, 4}, gen, kF64)
                                                  : 6.283 * torch::rand({5, 2, 4, 4}, gen, kF64))
                        .requires_grad_(true);
    // The same update noise every time (seed 11): only the weights move.
    auto work = [&] {
      auto x = x0.clone();
      return anneal(*model, protocol, cfg.hmc, 11, 0, x).sum();
    };
    model->zero_grad();
    auto W = work();
    W.backward();
    REQUIRE(x0.grad().defined());
    CHECK(x0.grad().abs().max().item<double>() > 0);
    double first_block = 0;
    for (auto& p : model->block(0).parameters())
      if (p.grad().defined()) first_block += p.grad().abs().sum().item<double>();
    CHECK(first_block > 0);
    // Nothing after the last block enters W, so the objective is a smooth function of its weights there.
    torch::NoGradGuard g;
    int checked = 0;
    for (auto& p : model->block(2).parameters()) {
      auto flat = p.view(-1);
      const auto grad = p.grad().view(-1);
      const double scale = 1 + grad.abs().max().item<double>();
      for (std::int64_t i = 0; i < flat.numel(); i += std::max<std::int64_t>(1, flat.numel() / 5)) {
        const double h = 1e-5, v = flat[i].item<double>();
        flat[i].fill_(v + h);
        const double up = work().item<double>();
        flat[i].fill_(v - h);
        const double down = work().item<double>();
        flat[i].fill_(v);
        CAPTURE(theory, i, grad[i].item<double>(), (up - down) / (2 * h));
        CHECK(std::abs(grad[i].item<double>() - (up - down) / (2 * h)) < 1e-6 * scale);
        ++checked;
      }
    }
    CHECK(checked > 10);
  }
}

TEST_CASE("stochastic normalizing flows: one step's work is S_1(g(x)) - S_0(x) - log|det| of the block's Jacobian",
          "[hmc][ne]") {
  // phi4 on 3x2 (every site a variable: 6 x 6 Jacobians by autograd, float64), one step with one block.
  Config cfg;
  cfg.lattice.extents = {2, 4};
  cfg.flow.layers = 0;
  cfg.flow.hidden = {3};
  cfg.phi4.m2 = -1;
  cfg.phi4.lam = 2;
  cfg.ne.steps = 1;
  cfg.ne.blocks = 1;
  cfg.ne.parameter = NeParameter::phi4_lam;
  cfg.ne.start = 0.5;
  cfg.validate();
  torch::manual_seed(3);
  FlowModel model = make_flow(cfg);
  {
    torch::NoGradGuard g;
    for (auto& p : model->parameters()) p.normal_(0, 0.3);
  }
  NeProtocol protocol(cfg);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(6);
  const auto x0 = torch::randn({3, 2, 4}, gen, kF64);
  auto x = x0.clone();
  const auto W = anneal(*model, protocol, cfg.hmc, 1, 0, x);
  for (std::int64_t b = 0; b < 3; ++b) {
    auto xb = x0.narrow(0, b, 1).clone().requires_grad_(true);
    auto y = model->block(0).transform(xb).first.reshape(-1);
    auto J = torch::zeros({8, 8}, kF64);
    for (std::int64_t i = 0; i < 8; ++i)
      J[i] = torch::autograd::grad({y[i]}, {xb}, {}, /*retain_graph=*/true)[0].reshape(-1);
    const double log_det = std::log(std::abs(torch::linalg_det(J).item<double>()));
    const double S1 = protocol.theories[1]->action(y.detach().view({1, 2, 4})).item<double>();
    const double S0 = protocol.theories[0]->action(x0.narrow(0, b, 1)).item<double>();
    CAPTURE(b, W[b].item<double>(), S1 - S0 - log_det);
    CHECK(std::abs(W[b].item<double>() - (S1 - S0 - log_det)) < 1e-10 * (1 + std::abs(S1)));
    CHECK(std::abs(log_det) > 1e-3);  // the block is not the identity
  }
}
