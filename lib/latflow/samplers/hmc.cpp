// SPDX-License-Identifier: MIT
#include "latflow/samplers/hmc.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>

#include "latflow/core/error.hpp"
#include "latflow/core/seed.hpp"
#include "latflow/flows/flow.hpp"
#include "latflow/parallel/mpi.hpp"
#include "latflow/theories/theory.hpp"

namespace latflow {

void integrate(const Theory& theory, Integrator integrator, at::Tensor& x, at::Tensor& p, const at::Tensor& dt_in,
               int n_md) {
  // One step size per configuration, broadcast over the field's sites.
  std::vector<std::int64_t> shape(static_cast<std::size_t>(p.dim()), 1);
  shape[0] = p.size(0);
  const auto dt = dt_in.to(p.options()).view(shape);
  if (integrator == Integrator::kLeapfrog) {
    // p(dt/2) x(dt) p(dt/2), the closing and opening half-kicks of consecutive steps merged.
    const auto half = 0.5 * dt;
    p = p + half * theory.force(x);
    for (int i = 0; i < n_md; ++i) {
      x = theory.update_field(x, p, dt);
      p = p + (i + 1 == n_md ? half : dt) * theory.force(x);
    }
    return;
  }
  // 2MN: p(lambda dt) x(dt/2) p((1 - 2 lambda) dt) x(dt/2) p(lambda dt).
  const auto edge = kOmelyanLambda * dt, mid = (1.0 - 2.0 * kOmelyanLambda) * dt, drift = 0.5 * dt, joined = 2.0 * edge;
  p = p + edge * theory.force(x);
  for (int i = 0; i < n_md; ++i) {
    x = theory.update_field(x, p, drift);
    p = p + mid * theory.force(x);
    x = theory.update_field(x, p, drift);
    p = p + (i + 1 == n_md ? edge : joined) * theory.force(x);
  }
}

std::uint64_t chain_stream(std::uint64_t seed, const char* purpose, std::int64_t chain, std::int64_t trajectory) {
  return derive_seed(derive_seed(seed, purpose, static_cast<std::uint64_t>(chain)), purpose,
                     static_cast<std::uint64_t>(trajectory));
}

double acceptance_for_mean_dh(double mean_dh) { return std::erfc(std::sqrt(std::max(mean_dh, 0.0)) / 2.0); }

double mean_dh_for_acceptance(double acceptance) {
  // erfc(y) is decreasing on [0, inf): bisect for erfc(y) = acceptance, capped at y = 6 (acceptance ~ 2e-17).
  double lo = 0.0, hi = 6.0;
  for (int i = 0; i < 100; ++i) {
    const double mid = 0.5 * (lo + hi);
    (std::erfc(mid) > acceptance ? lo : hi) = mid;
  }
  const double y = 0.5 * (lo + hi);
  return 4.0 * y * y;
}

HmcChains::HmcChains(const Theory& theory, const HmcParams& params, std::uint64_t seed, std::int64_t first_chain,
                     std::int64_t n_chains, const at::TensorOptions& options)
    : theory_(theory),
      params_(params),
      integrator_(params.integrator),
      seed_(seed),
      first_chain_(first_chain),
      n_chains_(n_chains),
      options_(options),
      n_md_(params.n_md),
      x_(theory.cold_start(n_chains, options)) {}

TrajectoryResult HmcChains::trajectory(std::int64_t t, bool check_reversibility) {
  torch::NoGradGuard no_grad;
  const auto B = n_chains_;
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  if (params_.algorithm == UpdateAlgorithm::heatbath) {
    // Exact local updates instead of a trajectory: nothing to accept or reject.
    std::vector<std::uint64_t> streams;
    for (std::int64_t b = 0; b < B; ++b) streams.push_back(chain_stream(seed_, "heatbath", first_chain_ + b, t));
    auto x = x_.to(torch::kCPU, torch::kFloat64).contiguous().clone();
    theory_.heatbath_sweep(x, streams, params_.overrelax);
    x_ = x.to(options_);
    return {torch::zeros({B}, f64), torch::ones({B}, torch::kBool)};
  }
  std::vector<at::Tensor> ps;
  std::vector<double> dts(static_cast<std::size_t>(B)), log_u(static_cast<std::size_t>(B));
  const double dt0 = params_.trajectory_length / n_md_;
  for (std::int64_t b = 0; b < B; ++b) {
    const std::int64_t c = first_chain_ + b;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(chain_stream(seed_, "hmc_momentum", c, t));
    ps.push_back(theory_.draw_momenta(gen, 1));
    // Jittered step size with n_md fixed: the trajectory length varies too, which breaks the resonances of
    // free modes whose period divides tau (Mackenzie, PLB 226 (1989) 369).
    const double j = uniform01(chain_stream(seed_, "hmc_jitter", c, t));
    dts[static_cast<std::size_t>(b)] = dt0 * (1.0 + params_.jitter * (2.0 * j - 1.0));
    log_u[static_cast<std::size_t>(b)] = std::log(uniform01(chain_stream(seed_, "hmc_accept", c, t)));
  }
  auto p0 = torch::cat(ps).to(options_);
  const auto dt = torch::tensor(dts, f64).to(options_.device());
  auto x = x_.clone(), p = p0.clone();
  const auto H0 = (theory_.kinetic_energy(p0) + theory_.action(x_)).to(torch::kFloat64);
  integrate(theory_, integrator_, x, p, dt, n_md_);
  const auto H1 = (theory_.kinetic_energy(p) + theory_.action(x)).to(torch::kFloat64);

  TrajectoryResult r;
  r.dH = (H1 - H0).to(torch::kCPU);
  // Metropolis: accept with probability min(1, exp(-dH)); a NaN dH compares false and is rejected.
  r.accepted = torch::tensor(log_u, f64).lt(-r.dH);
  if (check_reversibility) {
    const auto c0 = std::chrono::steady_clock::now();
    auto xr = x.clone(), pr = -p;
    integrate(theory_, integrator_, xr, pr, dt, n_md_);
    r.max_dx = (xr - x_).abs().max().item<double>();
    r.max_dp = (pr + p0).abs().max().item<double>();
    r.check_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - c0).count();
  }
  std::vector<std::int64_t> shape(static_cast<std::size_t>(x.dim()), 1);
  shape[0] = B;
  x_ = torch::where(r.accepted.to(options_.device()).view(shape), x, x_);
  return r;
}

int HmcChains::thermalize(std::int64_t n) {
  if (params_.algorithm == UpdateAlgorithm::heatbath) {  // no step size to tune
    for (std::int64_t t = 0; t < n; ++t) trajectory(t);
    return n_md_;
  }
  const std::int64_t tune_until = 3 * n / 4;
  // Under MPI the chains are split over the ranks: the tuning sees all of them, summed in global chain order on
  // the root, so every rank takes the same n_md decisions as a single rank would.
  double all_chains = static_cast<double>(n_chains_);
  mpi::allreduce_sum(&all_chains, 1);
  const auto total = static_cast<std::int64_t>(all_chains);
  // Blocks of ~320 acceptance probabilities (at least 2 trajectories) keep the rescaling noise below ~10%.
  const std::int64_t block = std::max<std::int64_t>(2, (320 + total - 1) / total);
  const double target_dh = mean_dh_for_acceptance(params_.target_acceptance);
  std::map<int, std::pair<double, std::int64_t>> seen;  // n_md -> (sum of acceptance probabilities, count)
  double sum_p = 0;
  std::int64_t count = 0;
  std::int64_t t_frozen = tune_until;
  for (std::int64_t t = 0; t < n; ++t) {
    auto r = trajectory(t);
    if (t >= t_frozen) continue;
    // A diverged trajectory (dH NaN from inf - inf) was rejected: acceptance probability 0, not NaN (a NaN here
    // would read as <dH> = 0 and halve n_md, the wrong way).
    const auto pc = torch::nan_to_num(torch::clamp_max(torch::exp(-r.dH), 1.0), 0.0).contiguous();
    const auto all = mpi::gather(std::vector<double>(pc.data_ptr<double>(), pc.data_ptr<double>() + pc.numel()));
    double p = 0;
    for (double v : all) p += v;
    mpi::broadcast(&p, 1);
    sum_p += p;
    count += total;
    // The first quarter of the tuning window still relaxes from the cold start: it steers but is not kept.
    if (4 * t >= tune_until) {
      seen[n_md_].first += p;
      seen[n_md_].second += total;
    }
    if ((t + 1) % block != 0) continue;
    // <dH> ~ V dt^4 for second-order integrators at fixed tau predicts n_md ~ <dH>^(1/4). Near the stability
    // limit of the integrator the acceptance falls much faster than that (measured at the tutorial point:
    // Omelyan n_md 6, 5, 4 give 0.93, 0.83, 0.59), and the full step oscillates around the target: take half
    // of it (geometrically), and at most a factor 2 per block. Rounding away from the current value makes
    // n_md move at small n_md too, so the tuning brackets the target and the freeze below picks from both
    // sides.
    const double mean_dh = mean_dh_for_acceptance(sum_p / static_cast<double>(count));
    const double factor = std::clamp(std::pow(mean_dh / target_dh, 0.125), 0.5, 2.0);
    const double next = n_md_ * factor;
    n_md_ = std::max(1, static_cast<int>(factor > 1 ? std::ceil(next) : std::floor(next)));
    sum_p = 0;
    count = 0;
    if (t + 1 + block > tune_until) {
      // End of tuning: freeze the cheapest n_md whose measured acceptance reached the target (the last
      // proposal if none did); the remaining thermalisation runs with it.
      for (const auto& [n_md, stat] : seen)
        if (stat.first >= params_.target_acceptance * static_cast<double>(stat.second)) {
          n_md_ = n_md;
          break;
        }
      t_frozen = t + 1;
    }
  }
  return n_md_;
}

std::vector<std::uint8_t> flow_step(FlowModelImpl& model, const Theory& theory, at::Tensor& x, std::uint64_t seed,
                                    std::int64_t first, std::int64_t n, std::int64_t t) {
  std::vector<torch::Tensor> zs;
  std::vector<double> log_u(static_cast<std::size_t>(n));
  for (std::int64_t b = 0; b < n; ++b) {
    zs.push_back(model.draw_prior(1, chain_stream(seed, "mixed_propose", first + b, t)));
    log_u[static_cast<std::size_t>(b)] = std::log(uniform01(chain_stream(seed, "mixed_accept", first + b, t)));
  }
  auto [y_model, log_q_y] = model.forward(torch::cat(zs));
  const auto y = y_model.to(x.options());  // exact: the flow's dtype is float32 or float64
  const auto log_q_x = model.log_prob(x).first.to(torch::kCPU);
  const auto log_w_y = (-theory.action(y).to(torch::kCPU, torch::kFloat64) - log_q_y.to(torch::kCPU));
  const auto log_w_x = (-theory.action(x).to(torch::kCPU, torch::kFloat64) - log_q_x);
  // A NaN log-weight compares false: the proposal is rejected. The current weight is finite: HMC fields have
  // finite action, and a flow (a diffeomorphism of a prior with full support) has log q > -inf everywhere.
  const auto accept = torch::tensor(log_u, torch::kFloat64).lt(log_w_y - log_w_x);
  std::vector<std::int64_t> shape(static_cast<std::size_t>(x.dim()), 1);
  shape[0] = n;
  x = torch::where(accept.to(x.device()).view(shape), y, x);
  const auto a = accept.to(torch::kUInt8).contiguous();
  return {a.data_ptr<std::uint8_t>(), a.data_ptr<std::uint8_t>() + n};
}

}  // namespace latflow
