// SPDX-License-Identifier: MIT
#include "latflow/samplers/hmc.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <optional>

#include "latflow/analysis/gamma.hpp"
#include "latflow/core/error.hpp"
#include "latflow/core/log.hpp"
#include "latflow/core/provenance.hpp"
#include "latflow/core/seed.hpp"
#include "latflow/flows/checkpoint.hpp"
#include "latflow/io/ensemble.hpp"
#include "latflow/jobs.hpp"
#include "latflow/parallel/mpi.hpp"
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
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
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
  const std::int64_t tune_until = 3 * n / 4;
  // Blocks of ~320 acceptance probabilities (at least 2 trajectories) keep the rescaling noise below ~10%.
  const std::int64_t block = std::max<std::int64_t>(2, (320 + n_chains_ - 1) / n_chains_);
  const double target_dh = mean_dh_for_acceptance(params_.target_acceptance);
  std::map<int, std::pair<double, std::int64_t>> seen;  // n_md -> (sum of acceptance probabilities, count)
  double sum_p = 0;
  std::int64_t count = 0;
  std::int64_t t_frozen = tune_until;
  for (std::int64_t t = 0; t < n; ++t) {
    auto r = trajectory(t);
    if (t >= t_frozen) continue;
    const double p = torch::clamp_max(torch::exp(-r.dH), 1.0).sum().item<double>();
    sum_p += p;
    count += n_chains_;
    // The first quarter of the tuning window still relaxes from the cold start: it steers but is not kept.
    if (4 * t >= tune_until) {
      seen[n_md_].first += p;
      seen[n_md_].second += n_chains_;
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

// Row buffers of the extendible [T, ...] datasets, appended a chunk at a time (h5.hpp: each append reopens
// the dataset, and whole chunks avoid recompressing a partial one).
struct RowBuffer {
  explicit RowBuffer(std::string name = {}) : dset(std::move(name)) {}
  std::string dset;
  std::vector<double> f64;
  std::vector<std::uint8_t> u8;
  std::uint64_t rows = 0;
  void flush(io::File& f) {
    if (rows == 0) return;
    if (u8.empty())
      f.append(dset, f64.data(), rows);
    else
      f.append(dset, u8.data(), rows);
    f64.clear();
    u8.clear();
    rows = 0;
  }
};

}  // namespace

std::string hmc_job(const Config& cfg, const std::string& command_line) {
  const std::string& out = cfg.run.output;
  if (mpi::size() > 1)
    throw ConfigError(
        "latflow hmc runs on one MPI rank (its chains are the batch); hmc.chains sets their number");
  if (file_exists(out) && !cfg.run.overwrite)
    throw IoError(out + ": exists; refusing to overwrite (pass --overwrite or set run.output)");
  torch::set_num_threads(cfg.run.threads);
  torch::InferenceMode inference;
  const auto& hp = cfg.hmc;
  const auto theory_ptr = make_theory(cfg);
  const Theory& theory = *theory_ptr;
  const auto options = torch::TensorOptions().dtype(torch::kFloat64).device(torch::Device(cfg.run.device));
  HmcChains chains(theory, hp, cfg.run.seed, 0, hp.chains, options);

  const auto C = static_cast<std::uint64_t>(hp.chains);
  const auto L0 = static_cast<std::uint64_t>(cfg.lattice.extents[0]);
  const std::int64_t V = cfg.lattice.volume();
  const auto& names = theory.observable_names();
  const std::size_t k = names.size();
  const std::uint64_t chunk = std::max<std::uint64_t>(1, std::min<std::uint64_t>(256, 16384 / (C * L0)));

  ensure_parent_dir(out);
  const std::string partial = out + ".partial";
  std::optional<io::File> file = io::File::create(partial, true);
  io::File& f = *file;
  io::write_header(f, cfg, Provenance::collect(command_line), "hmc");
  io::write_references(f, cfg);
  std::vector<RowBuffer> obs(k);
  for (std::size_t j = 0; j < k; ++j) {
    obs[j].dset = "/chains/observables/" + names[j];
    f.create_extendible(obs[j].dset, io::DType::F64, {C}, chunk);
  }
  RowBuffer corr("/chains/observables/correlator"), dH("/chains/dH"), acc("/chains/accepted");
  f.create_extendible(corr.dset, io::DType::F64, {C, L0}, chunk);
  f.create_extendible(dH.dset, io::DType::F64, {C}, chunk);
  f.create_extendible(acc.dset, io::DType::U8, {C}, chunk);
  f.write_attr("/chains/observables", "names", [&] {
    std::string s;
    for (const auto& n : names) s += (s.empty() ? "" : " ") + n;
    return s;
  }());
  std::vector<std::uint64_t> config_row{C};
  for (auto e : theory.field_shape()) config_row.push_back(static_cast<std::uint64_t>(e));
  if (hp.save_every > 0) {
    f.create_extendible("/configs/field", io::DType::F64, config_row, 4);
    f.create_extendible("/configs/trajectory", io::DType::I64, {}, 64);
  }

  log::info("hmc: " + std::to_string(hp.chains) + " chains, " + hp.integrator +
            ", tau = " + std::to_string(hp.trajectory_length) + ", " + std::to_string(hp.thermalization) +
            " thermalisation + " + std::to_string(hp.trajectories) + " trajectories each");
  const auto t0 = std::chrono::steady_clock::now();
  const int n_md = chains.thermalize(hp.thermalization);
  log::info("hmc: thermalised; n_md = " + std::to_string(n_md) +
            " (dt = " + std::to_string(hp.trajectory_length / n_md) + ")");

  std::vector<double> exp_mdh;
  std::int64_t n_acc = 0;
  double max_dx = 0, max_dp = 0, check_seconds = 0;
  auto flush_all = [&] {
    for (auto& b : obs) b.flush(f);
    corr.flush(f);
    dH.flush(f);
    acc.flush(f);
  };
  for (std::int64_t i = 0; i < hp.trajectories; ++i) {
    auto r = chains.trajectory(hp.thermalization + i, hp.check_reversibility);
    max_dx = std::max(max_dx, r.max_dx);
    max_dp = std::max(max_dp, r.max_dp);
    check_seconds += r.check_seconds;
    const auto x = chains.field().to(torch::kCPU).contiguous();
    auto m = theory.measure(x);
    auto sc = m.scalars.contiguous();
    auto cr = m.correlator.contiguous();
    const double* s = sc.data_ptr<double>();
    for (std::size_t j = 0; j < k; ++j) {
      for (std::uint64_t c = 0; c < C; ++c) obs[j].f64.push_back(s[c * k + j]);
      ++obs[j].rows;
    }
    corr.f64.insert(corr.f64.end(), cr.data_ptr<double>(), cr.data_ptr<double>() + C * L0);
    ++corr.rows;
    const double* d = r.dH.data_ptr<double>();
    const auto a = r.accepted.to(torch::kUInt8).contiguous();
    dH.f64.insert(dH.f64.end(), d, d + C);
    ++dH.rows;
    acc.u8.insert(acc.u8.end(), a.data_ptr<std::uint8_t>(), a.data_ptr<std::uint8_t>() + C);
    ++acc.rows;
    for (std::uint64_t c = 0; c < C; ++c) {
      n_acc += a.data_ptr<std::uint8_t>()[c];
      exp_mdh.push_back(std::exp(-d[c]));
    }
    if (corr.rows == chunk) flush_all();
    if (hp.save_every > 0 && (i + 1) % hp.save_every == 0) {
      f.append("/configs/field", x.data_ptr<double>(), 1);
      const std::int64_t traj = hp.thermalization + i;
      f.append("/configs/trajectory", &traj, 1);
    }
  }
  flush_all();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // <exp(-dH)> with the Gamma method over the chains (replicas): exp_mdh is stored trajectory-major.
  const auto T = static_cast<std::size_t>(hp.trajectories);
  std::vector<std::vector<double>> replicas(C, std::vector<double>(T));
  for (std::size_t t = 0; t < T; ++t)
    for (std::size_t c = 0; c < C; ++c) replicas[c][t] = exp_mdh[t * C + c];
  const auto e = analysis::gamma_method(replicas);
  const double acceptance = static_cast<double>(n_acc) / static_cast<double>(T * C);
  // Cost of one trajectory of one chain per lattice site, everything but the optional reversibility check.
  const double per_site =
      (seconds - check_seconds) / (static_cast<double>(hp.thermalization + hp.trajectories) * hp.chains * V);

  f.create_group("/hmc");
  f.write_attr("/hmc", "integrator", hp.integrator);
  if (hp.integrator == "omelyan") f.write_attr("/hmc", "omelyan_lambda", kOmelyanLambda);
  f.write_attr("/hmc", "n_md", static_cast<std::int64_t>(n_md));
  f.write_attr("/hmc", "n_md_initial", static_cast<std::int64_t>(hp.n_md));
  f.write_attr("/hmc", "trajectory_length", hp.trajectory_length);
  f.write_attr("/hmc", "jitter", hp.jitter);
  f.write_attr("/hmc", "target_acceptance", hp.target_acceptance);
  f.write_attr("/hmc", "chains", hp.chains);
  f.write_attr("/hmc", "thermalization", hp.thermalization);
  f.write_attr("/hmc", "trajectories", hp.trajectories);
  f.write_attr("/hmc", "save_every", hp.save_every);
  f.write_attr("/hmc", "acceptance", acceptance);
  f.write_attr("/hmc", "exp_mdH", e.mean);
  f.write_attr("/hmc", "exp_mdH_error", e.error);
  f.write_attr("/hmc", "seconds", seconds);
  f.write_attr("/hmc", "seconds_per_trajectory_per_site", per_site);
  if (hp.check_reversibility) {
    f.write_attr("/hmc", "reversibility_max_dx", max_dx);
    f.write_attr("/hmc", "reversibility_max_dp", max_dp);
  }
  f.write_attr("/", "finished", iso_time_utc());
  f.write_attr("/", "status", "complete");
  f.flush();
  file.reset();
  commit_file(partial, out);
  char b[256];
  std::snprintf(b, sizeof b,
                "hmc: %lld x %lld trajectories in %s, acceptance %.4f, <exp(-dH)> = %.4f +- %.4f, %.3g s per "
                "trajectory per site, wrote %s",
                static_cast<long long>(hp.chains), static_cast<long long>(hp.trajectories),
                log::format_seconds(seconds).c_str(), acceptance, e.mean, e.error, per_site, out.c_str());
  log::info(b);
  return out;
}

}  // namespace latflow
