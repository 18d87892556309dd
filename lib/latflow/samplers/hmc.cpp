// SPDX-License-Identifier: MIT
#include "latflow/samplers/hmc.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <map>
#include <optional>

#include "latflow/analysis/gamma.hpp"
#include "latflow/core/error.hpp"
#include "latflow/core/log.hpp"
#include "latflow/core/provenance.hpp"
#include "latflow/core/seed.hpp"
#include "latflow/flows/checkpoint.hpp"
#include "latflow/io/ensemble.hpp"
#include "latflow/io/gauge_formats.hpp"
#include "latflow/jobs.hpp"
#include "latflow/parallel/mpi.hpp"
#include "latflow/samplers/hmc_store.hpp"
#include "latflow/theories/theory.hpp"

namespace latflow {

Integrator integrator_from_name(const std::string& name) {
  if (name == "leapfrog") return Integrator::kLeapfrog;
  if (name == "omelyan") return Integrator::kOmelyan;
  throw ConfigError("hmc.integrator = " + name + ": must be leapfrog or omelyan");
}

std::string integrator_name(Integrator integrator) {
  return integrator == Integrator::kLeapfrog ? "leapfrog" : "omelyan";
}

void integrate(const Theory& theory, Integrator integrator, at::Tensor& x, at::Tensor& p,
               const at::Tensor& dt_in, int n_md) {
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
  const auto edge = kOmelyanLambda * dt, mid = (1.0 - 2.0 * kOmelyanLambda) * dt, drift = 0.5 * dt,
             joined = 2.0 * edge;
  p = p + edge * theory.force(x);
  for (int i = 0; i < n_md; ++i) {
    x = theory.update_field(x, p, drift);
    p = p + mid * theory.force(x);
    x = theory.update_field(x, p, drift);
    p = p + (i + 1 == n_md ? edge : joined) * theory.force(x);
  }
}

std::uint64_t chain_stream(std::uint64_t seed, const char* purpose, std::int64_t chain,
                           std::int64_t trajectory) {
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

HmcChains::HmcChains(const Theory& theory, const HmcParams& params, std::uint64_t seed,
                     std::int64_t first_chain, std::int64_t n_chains, const at::TensorOptions& options)
    : theory_(theory),
      params_(params),
      integrator_(integrator_from_name(params.integrator)),
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
  if (params_.algorithm == "heatbath") {
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
  if (params_.algorithm == "heatbath") {  // no step size to tune
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

namespace {

std::vector<double> to_vector(const torch::Tensor& t) {
  const auto c = t.to(torch::kCPU, torch::kFloat64).contiguous();
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

// Fault injection for tests: LATFLOW_FAULT_TRAJECTORY=i makes rank LATFLOW_FAULT_RANK (default 0) fail before
// kept trajectory i, as a crashed node would.
void fault_point(std::int64_t i) {
  static const char* env = std::getenv("LATFLOW_FAULT_TRAJECTORY");
  static const char* rank = std::getenv("LATFLOW_FAULT_RANK");
  if (env != nullptr && std::to_string(i) == env && mpi::rank() == (rank ? std::atoi(rank) : 0))
    throw Error("injected failure before trajectory " + std::to_string(i) + " (LATFLOW_FAULT_TRAJECTORY)");
}

// Mixed chains: one independence-Metropolis step for each of chains first .. first + n - 1 (global indices) at
// trajectory t, with a proposal of the flow. Chain c's proposal is drawn from the stream (seed, "mixed_propose",
// c, t) and its uniform from (seed, "mixed_accept", c, t), as HMC's momenta are: the chain does not depend on
// which chains share its batch or rank. The step accepts y with probability min(1, w(y) / w(x)),
// w = exp(-S) / q, which with HMC's kernel composes a chain that leaves exp(-S) invariant
// (docs/physics.md "Mixed chains"). log q(x) of the current field x comes from the flow's inverse, in the flow's
// dtype. Returns [n] 1/0 (accepted/rejected); x is replaced where accepted.
std::vector<std::uint8_t> flow_step(FlowModel& model, const Theory& theory, at::Tensor& x, std::uint64_t seed,
                                    std::int64_t first, std::int64_t n, std::int64_t t) {
  std::vector<torch::Tensor> zs;
  std::vector<double> log_u(static_cast<std::size_t>(n));
  for (std::int64_t b = 0; b < n; ++b) {
    zs.push_back(model->draw_prior(1, chain_stream(seed, "mixed_propose", first + b, t)));
    log_u[static_cast<std::size_t>(b)] = std::log(uniform01(chain_stream(seed, "mixed_accept", first + b, t)));
  }
  auto [y_model, log_q_y] = model->forward(torch::cat(zs));
  const auto y = y_model.to(x.options());  // exact: the flow's dtype is float32 or float64
  const auto log_q_x = model->log_prob(x).first.to(torch::kCPU);
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

}  // namespace

std::string hmc_job(const Config& cfg, const std::string& command_line) {
  const std::string& out = cfg.run.output;
  const auto& hp = cfg.hmc;
  const int R = mpi::size(), rank = mpi::rank();
  if (hp.chains < R)
    throw ConfigError("hmc.chains = " + std::to_string(hp.chains) + ": fewer chains than the " + std::to_string(R) +
                      " MPI ranks they are split over");
  torch::set_num_threads(cfg.run.threads);
  torch::InferenceMode inference;
  const auto theory_ptr = make_theory(cfg);
  const Theory& theory = *theory_ptr;
  const auto options = torch::TensorOptions().dtype(torch::kFloat64).device(torch::Device(cfg.run.device));
  // Contiguous ranges of global chain indices; chain c's random streams are keyed by c, not by the rank.
  const std::int64_t c0 = hp.chains * rank / R, nc = hp.chains * (rank + 1) / R - c0;
  HmcChains chains(theory, hp, cfg.run.seed, c0, nc, options);

  // Mixed chains: the trained flow of the checkpoint (its identity must match the config's model keys).
  const bool mixed = hp.flow_every > 0;
  FlowModel model{nullptr};
  CheckpointMeta meta;
  std::string hash;
  if (mixed) {
    if (!checkpoint_exists(cfg.checkpoint_path()))
      throw ConfigError("hmc.flow_every = " + std::to_string(hp.flow_every) + ": no trained flow at " +
                        cfg.checkpoint_path() + " (run latflow train first, or set run.checkpoint)");
    model = make_flow(cfg);
    meta = load_checkpoint(cfg.checkpoint_path(), model, nullptr, model_identity(cfg));
    model->to_device(torch::Device(cfg.run.device));
    model->eval();
    hash = model->weights_hash();
  }

  HmcLayout layout;
  layout.observable_names = theory.observable_names();
  layout.L0 = cfg.lattice.extents[0];
  const auto field_dims = theory.field_shape();
  layout.V = 1;  // numbers per configuration
  for (auto e : field_dims) layout.V *= e;
  layout.field_shape.assign(field_dims.begin(), field_dims.end());
  layout.identity = hmc_identity(cfg, hash);
  layout.flow_steps = mixed;
  HmcStore store(cfg, layout, c0, nc, [&](io::File& f) {
    io::write_header(f, cfg, Provenance::collect(command_line, mpi::size()), mixed ? "mixed" : "hmc");
    io::write_references(f, cfg);
    if (mixed) write_model_group(f, cfg, meta, hash);
  });
  if (store.complete()) return out;

  const bool heatbath = hp.algorithm == "heatbath";
  const std::string update = heatbath ? "heat bath + " + std::to_string(hp.overrelax) + " overrelaxation sweep(s)"
                                      : hp.integrator + ", tau = " + std::to_string(hp.trajectory_length);
  log::info("hmc: " + std::to_string(hp.chains) + " chains on " + std::to_string(R) + " rank(s), " + update + ", " +
            std::to_string(hp.thermalization) +
            " thermalisation + " + std::to_string(hp.trajectories) + " trajectories each" +
            (mixed ? ", a flow step (model " + hash + ") after every " + std::to_string(hp.flow_every) : ""));
  const std::vector<std::int64_t> field_shape = [&] {
    std::vector<std::int64_t> s{nc};
    s.insert(s.end(), field_dims.begin(), field_dims.end());
    return s;
  }();
  if (!hp.start.empty() && !store.thermalized()) {
    // Every chain starts from the imported configuration (verified on read; docs/file-format.md).
    const auto u = io::read_gauge_file(hp.start);
    if (u.extents != cfg.lattice.extents)
      throw ConfigError("hmc.start = " + hp.start + ": its lattice is not lattice.extents");
    const auto links = torch::view_as_real(
        torch::from_blob(const_cast<std::complex<double>*>(u.links.data()),
                         {static_cast<std::int64_t>(u.links.size())}, torch::kComplexDouble));
    chains.set_field(links.reshape(field_dims).unsqueeze(0).expand(field_shape).contiguous().to(options));
  }
  if (store.thermalized()) {
    auto x = store.resume_field();
    chains.set_field(torch::tensor(x, torch::kFloat64).view(field_shape).to(options));
    chains.set_n_md(store.n_md());
  } else {
    const int n_md = chains.thermalize(hp.thermalization);
    store.set_thermalized(n_md, to_vector(chains.field()));
    if (!heatbath)
      log::info("hmc: thermalised; n_md = " + std::to_string(n_md) +
                " (dt = " + std::to_string(hp.trajectory_length / n_md) + ")");
  }

  for (std::int64_t i = store.next_trajectory(); i < hp.trajectories; ++i) {
    fault_point(i);
    const std::int64_t t = hp.thermalization + i;
    auto r = chains.trajectory(t, hp.check_reversibility);
    HmcRow row;
    if (mixed) {
      row.flow_accepted.assign(static_cast<std::size_t>(nc), kNoFlowStep);
      if ((i + 1) % hp.flow_every == 0) {
        const auto f0 = std::chrono::steady_clock::now();
        auto x = chains.field();
        row.flow_accepted = flow_step(model, theory, x, cfg.run.seed, c0, nc, t);
        chains.set_field(x);
        row.flow_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - f0).count();
      }
    }
    const auto x = chains.field().to(torch::kCPU).contiguous();
    auto m = theory.measure(x);
    const auto a = r.accepted.to(torch::kUInt8).contiguous();
    row.scalars = to_vector(m.scalars);
    row.correlator = to_vector(m.correlator);
    row.dH = to_vector(r.dH);
    row.accepted.assign(a.data_ptr<std::uint8_t>(), a.data_ptr<std::uint8_t>() + a.numel());
    row.x = to_vector(x);
    row.max_dx = r.max_dx;
    row.max_dp = r.max_dp;
    row.check_seconds = r.check_seconds;
    store.add(row);
  }
  const std::int64_t V = cfg.lattice.volume();
  store.finish([&](io::File& f, const HmcTotals& t) {
    // Cost of one trajectory of one chain per lattice site, everything but the optional reversibility check and
    // a mixed chain's flow steps (over all sessions of a resumed run).
    const double per_site = (t.seconds - t.check_seconds - t.flow_seconds) /
                            (static_cast<double>(hp.thermalization + hp.trajectories) * hp.chains * V);
    f.create_group("/hmc");
    if (heatbath) {  // only heat-bath files carry these, so HMC files stay as they were
      f.write_attr("/hmc", "algorithm", hp.algorithm);
      f.write_attr("/hmc", "overrelax", static_cast<std::int64_t>(hp.overrelax));
    }
    f.write_attr("/hmc", "integrator", hp.integrator);
    if (hp.integrator == "omelyan") f.write_attr("/hmc", "omelyan_lambda", kOmelyanLambda);
    f.write_attr("/hmc", "n_md", static_cast<std::int64_t>(t.n_md));
    f.write_attr("/hmc", "n_md_initial", static_cast<std::int64_t>(hp.n_md));
    f.write_attr("/hmc", "trajectory_length", hp.trajectory_length);
    f.write_attr("/hmc", "jitter", hp.jitter);
    f.write_attr("/hmc", "target_acceptance", hp.target_acceptance);
    f.write_attr("/hmc", "chains", hp.chains);
    f.write_attr("/hmc", "thermalization", hp.thermalization);
    f.write_attr("/hmc", "trajectories", hp.trajectories);
    f.write_attr("/hmc", "save_every", hp.save_every);
    f.write_attr("/hmc", "acceptance", t.acceptance);
    f.write_attr("/hmc", "exp_mdH", t.exp_mdH);
    f.write_attr("/hmc", "exp_mdH_error", t.exp_mdH_error);
    f.write_attr("/hmc", "seconds", t.seconds);
    f.write_attr("/hmc", "seconds_per_trajectory_per_site", per_site);
    if (mixed) {
      // Cost split of the mixed chain: seconds (above) is the whole run; flow_seconds its flow steps; training
      // is in /model.
      f.write_attr("/hmc", "flow_every", hp.flow_every);
      f.write_attr("/hmc", "flow_proposals", t.flow_proposals);
      f.write_attr("/hmc", "flow_acceptance", t.flow_acceptance);
      f.write_attr("/hmc", "flow_seconds", t.flow_seconds);
    }
    if (hp.check_reversibility) {
      f.write_attr("/hmc", "reversibility_max_dx", t.max_dx);
      f.write_attr("/hmc", "reversibility_max_dp", t.max_dp);
    }
    char b[256];
    if (heatbath)
      std::snprintf(b, sizeof b, "heatbath: %lld x %lld sweeps (heat bath + %d overrelaxation), %.3g s per sweep per "
                    "site, wrote %s", static_cast<long long>(hp.chains), static_cast<long long>(hp.trajectories),
                    hp.overrelax, per_site, out.c_str());
    else
      std::snprintf(b, sizeof b,
                  "hmc: %lld x %lld trajectories, acceptance %.4f, <exp(-dH)> = %.4f +- %.4f, %.3g s per "
                  "trajectory per site, wrote %s",
                  static_cast<long long>(hp.chains), static_cast<long long>(hp.trajectories), t.acceptance,
                  t.exp_mdH, t.exp_mdH_error, per_site, out.c_str());
    log::info(b);
    if (mixed) {
      std::snprintf(b, sizeof b, "hmc: %lld flow proposals, flow acceptance %.4f, %.1f s in flow steps (%.0f%%)",
                    static_cast<long long>(t.flow_proposals), t.flow_acceptance, t.flow_seconds,
                    100 * t.flow_seconds / t.seconds);
      log::info(b);
    }
  });
  return out;
}

}  // namespace latflow
