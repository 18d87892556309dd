// SPDX-License-Identifier: MIT
// `latflow bench` and `latflow bench-hmc`: throughput of the config's flow, and of its HMC. Each figure is the median
// over `repeats` timed rounds, so a noisy shared machine disturbs it less; the rounds of all batch sizes are
// interleaved.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>

#include "latflow/core/seed.hpp"
#include "latflow/flows/adam.hpp"
#include "latflow/flows/flow.hpp"
#include "latflow/jobs/jobs.hpp"
#include "latflow/samplers/hmc.hpp"
#include "latflow/theories/theory.hpp"

namespace latflow {
namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const auto n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Seconds per round, by (fused kernels or LibTorch ops, batch size).
using Timings = std::map<std::pair<bool, std::int64_t>, std::vector<double>>;

// The table of `latflow bench`: per batch size and ConvNet implementation (fused kernels, LibTorch ops) the median
// seconds per training step (train) and per batch of proposals (prop), and the ops/fused ratios.
void print_bench_table(const Config& cfg, FlowModelImpl& model, const std::vector<std::int64_t>& batches, int repeats,
                       const Timings& train_t, const Timings& prop_t) {
  std::int64_t n_params = 0;
  for (const auto& p : model.parameters()) n_params += p.numel();
  std::string ext;
  for (std::size_t i = 0; i < cfg.lattice.extents.size(); ++i)
    ext += (i ? "x" : "") + std::to_string(cfg.lattice.extents[i]);
  std::printf("bench: %s flow, %d layers, hidden", choice_name(cfg.flow.coupling).c_str(), cfg.flow.layers);
  for (int h : cfg.flow.hidden) std::printf(" %d", h);
  std::printf(", %s, z2 %s, %s prior, lattice %s, %lld parameters, %s gradient, %d thread(s), median of %d rounds\n",
              choice_name(cfg.flow.dtype).c_str(), cfg.flow.z2 ? "on" : "off", choice_name(cfg.flow.prior).c_str(),
              ext.c_str(), static_cast<long long>(n_params), choice_name(cfg.train.gradient).c_str(), cfg.run.threads,
              repeats);
  std::printf("%8s %6s %16s %14s %18s %16s\n", "batch", "nets", "train step [ms]", "train steps/s", "train samples/s",
              "proposals/s");
  for (auto B : batches) {
    for (bool fused : {true, false}) {
      const double ts = median(train_t.at({fused, B})), ps = median(prop_t.at({fused, B}));
      std::printf("%8lld %6s %16.2f %14.1f %18.0f %16.0f\n", static_cast<long long>(B), fused ? "fused" : "ops",
                  1e3 * ts, 1 / ts, B / ts, B / ps);
    }
    std::printf("%8lld %6s %16.2fx %32s %15.2fx\n", static_cast<long long>(B), "ratio",
                median(train_t.at({false, B})) / median(train_t.at({true, B})), "",
                median(prop_t.at({false, B})) / median(prop_t.at({true, B})));
  }
}

// Times the config's model (see bench_job) and prints its table.
void bench_model(const Config& cfg, const std::vector<std::int64_t>& batches, int repeats) {
  const auto theory_ptr = make_theory(cfg);
  const Theory& theory = *theory_ptr;
  FlowModel model = make_flow(cfg);
  model->to_device(torch::Device(cfg.run.device));
  {
    // A fresh flow is the identity (zero last layers); random weights make every op do real work.
    torch::NoGradGuard g;
    for (auto& p : model->parameters()) p.normal_(0, 0.05);
  }
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(1e-4));
  // Both ConvNet implementations (flow.hpp) on the same model, interleaved round by round: "fused" (the default)
  // and "ops" (LibTorch ops, which is what a PyTorch implementation of the same model does).
  const std::vector<bool> backends{true, false};
  Timings train_t, prop_t;
  std::uint64_t counter = 0;
  // The training step of `latflow train`: its estimator (train.gradient), Adam (latflow's loop with the fused
  // nets, LibTorch's step with the ops, as a LibTorch or PyTorch implementation would).
  const bool path = cfg.train.gradient == Gradient::path;
  bool fused_now = true;
  auto train_step = [&](std::int64_t B) {
    auto z = model->draw_prior(B, derive_seed(cfg.run.seed, "bench", counter++));
    auto loss = reverse_kl_objective(*model, theory, z, path).objective.mean();
    opt.zero_grad();
    loss.backward();
    if (!fused_now || !fused_adam_step(opt)) opt.step();
  };
  auto propose = [&](std::int64_t B) {
    torch::InferenceMode im;
    auto [x, log_q] = model->sample(B, derive_seed(cfg.run.seed, "bench", counter++));
    auto xd = x.to(torch::kFloat64);
    auto lw = -(theory.action(xd) + log_q);
    theory.measure(xd);
    return lw;
  };
  // Enough samples per round that one round takes a measurable time at every batch size.
  auto steps_for = [](std::int64_t B) { return std::max<std::int64_t>(1, 4096 / B); };
  auto use = [&](bool fused) {
    fused_now = fused;
    pconv::KernelPolicy policy;
    policy.fused = fused;
    set_kernel_policy(*model, policy);
  };
  for (bool fused : backends) {  // warm-up
    use(fused);
    for (auto B : batches) {
      train_step(B);
      propose(B);
    }
  }
  for (int r = 0; r < repeats; ++r) {
    for (auto B : batches) {
      for (bool fused : backends) {
        use(fused);
        const auto n = steps_for(B);
        auto t0 = std::chrono::steady_clock::now();
        for (std::int64_t i = 0; i < n; ++i) train_step(B);
        train_t[{fused, B}].push_back(seconds_since(t0) / n);
        t0 = std::chrono::steady_clock::now();
        for (std::int64_t i = 0; i < n; ++i) propose(B);
        prop_t[{fused, B}].push_back(seconds_since(t0) / n);
      }
    }
  }
  use(true);
  print_bench_table(cfg, *model, batches, repeats, train_t, prop_t);
}

}  // namespace

void bench_job(const Config& cfg, const std::vector<std::int64_t>& batches, int repeats) {
  torch::set_num_threads(cfg.run.threads);
  bench_model(cfg, batches, repeats);
  // The same comparison for the plain architecture (no Z2 sharing of the first conv, N(0, 1) prior) that any
  // PyTorch user would write, so that the fused/ops ratios are also given for equal arithmetic.
  if (cfg.theory != TheoryId::phi4 || (!cfg.flow.z2 && cfg.flow.prior == Prior::normal)) return;
  Config plain = cfg;
  plain.flow.z2 = false;
  plain.flow.prior = Prior::normal;
  std::printf("\nthe plain architecture (--flow.z2 false --flow.prior normal):\n");
  bench_model(plain, batches, repeats);
}

void bench_hmc_job(const Config& cfg, const std::vector<std::int64_t>& sizes, int repeats) {
  torch::set_num_threads(cfg.run.threads);
  const int d = cfg.lattice.dim();
  const auto& hp = cfg.hmc;
  const bool heatbath = hp.algorithm == UpdateAlgorithm::heatbath;
  // The last column: per force evaluation (HMC) or per sweep, overrelaxation sweeps included (heat bath).
  const int forces = heatbath                                 ? 1 + hp.overrelax
                     : hp.integrator == Integrator::kLeapfrog ? hp.n_md + 1
                                                              : 2 * hp.n_md + 1;
  const std::string physics =
      cfg.theory == TheoryId::u1 ? "u1 beta = " + std::to_string(cfg.u1.beta)
      : cfg.theory == TheoryId::sun
          ? "su(" + std::to_string(cfg.sun.n) + ") beta = " + std::to_string(cfg.sun.beta)
          : "phi4 m2 = " + std::to_string(cfg.phi4.m2_nohalf) + ", lam = " + std::to_string(cfg.phi4.lam_nohalf);
  const std::string update = heatbath ? "heat bath + " + std::to_string(hp.overrelax) + " overrelaxation sweeps"
                                      : choice_name(hp.integrator) + " with n_md " + std::to_string(hp.n_md) +
                                            " fixed (" + std::to_string(forces) + " force evaluations)";
  std::printf("bench-hmc: %s, %dD L^%d, %s, %lld chains, float64, %d thread(s), median of %d rounds\n", physics.c_str(),
              d, d, update.c_str(), static_cast<long long>(hp.chains), cfg.run.threads, repeats);
  std::printf("%6s %10s %16s %18s %22s %20s\n", "L", "sites", "s/trajectory", "chain-traj/s", "chain-traj x sites/s",
              heatbath ? "ns/site/sweep" : "ns/site/force eval");
  for (auto L : sizes) {
    Config at_size = cfg;
    at_size.lattice.extents.assign(static_cast<std::size_t>(d), L);
    const auto& lat = at_size.lattice;
    const auto theory = make_theory(at_size);
    HmcChains chains(*theory, hp, cfg.run.seed, 0, hp.chains, torch::TensorOptions().dtype(torch::kFloat64));
    // Enough trajectories per round for ~10^6 / d site-updates, at least 2.
    const double sites = static_cast<double>(lat.volume());
    const auto per_round = std::max<std::int64_t>(2, static_cast<std::int64_t>(2e6 / (d * sites * hp.chains)));
    std::int64_t t = 0;
    chains.trajectory(t++);  // warm-up
    std::vector<double> secs;
    for (int r = 0; r < repeats; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      for (std::int64_t i = 0; i < per_round; ++i) chains.trajectory(t++);
      secs.push_back(seconds_since(t0) / per_round);
    }
    const double s_traj = median(secs), chain_traj = hp.chains / s_traj;
    std::printf("%6lld %10.0f %16.4g %18.4g %22.4g %20.3g\n", static_cast<long long>(L), sites, s_traj, chain_traj,
                chain_traj * sites, 1e9 * s_traj / (hp.chains * sites * forces));
    std::fflush(stdout);
  }
}

}  // namespace latflow
