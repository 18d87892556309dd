// SPDX-License-Identifier: MIT
// `latflow hmc`: HMC (or heat-bath, or mixed flow + HMC) chains (samplers/hmc.hpp) split over the MPI ranks, and
// their crash-safe ensemble file (samplers/hmc_store.hpp).
#include <torch/torch.h>

#include <chrono>
#include <complex>
#include <cstdio>

#include "latflow/core/error.hpp"
#include "latflow/core/faults.hpp"
#include "latflow/core/log.hpp"
#include "latflow/core/provenance.hpp"
#include "latflow/flows/checkpoint.hpp"
#include "latflow/io/ensemble.hpp"
#include "latflow/io/gauge_formats.hpp"
#include "latflow/jobs/jobs.hpp"
#include "latflow/parallel/mpi.hpp"
#include "latflow/samplers/hmc.hpp"
#include "latflow/samplers/hmc_store.hpp"
#include "latflow/theories/theory.hpp"

namespace latflow {
namespace {

std::vector<double> to_vector(const torch::Tensor& t) {
  const auto c = t.to(torch::kCPU, torch::kFloat64).contiguous();
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

// Mixed chains: the trained flow of the checkpoint (its identity must match the config's model keys).
FlowModel mixed_flow(const Config& cfg, CheckpointMeta& meta) {
  if (!checkpoint_exists(cfg.checkpoint_path()))
    throw ConfigError("hmc.flow_every = " + std::to_string(cfg.hmc.flow_every) + ": no trained flow at " +
                      cfg.checkpoint_path() + " (run latflow train first, or set run.checkpoint)");
  FlowModel model = make_flow(cfg);
  meta = load_checkpoint(cfg.checkpoint_path(), model, nullptr, model_identity(cfg));
  model->to_device(torch::Device(cfg.run.device));
  model->eval();
  return model;
}

HmcLayout hmc_layout(const Config& cfg, const Theory& theory, const std::string& weights_hash) {
  HmcLayout layout;
  layout.observable_names = theory.observable_names();
  layout.L0 = cfg.lattice.extents[0];
  const auto field_dims = theory.field_shape();
  layout.V = 1;  // numbers per configuration
  for (auto e : field_dims) layout.V *= e;
  layout.field_shape.assign(field_dims.begin(), field_dims.end());
  layout.identity = hmc_identity(cfg, weights_hash);
  layout.flow_steps = cfg.hmc.flow_every > 0;
  return layout;
}

void log_start(const Config& cfg, const std::string& weights_hash) {
  const auto& hp = cfg.hmc;
  const bool mixed = hp.flow_every > 0;
  const std::string update = hp.algorithm == UpdateAlgorithm::heatbath
                                 ? "heat bath + " + std::to_string(hp.overrelax) + " overrelaxation sweep(s)"
                                 : choice_name(hp.integrator) + ", tau = " + std::to_string(hp.trajectory_length);
  log::info("hmc: " + std::to_string(hp.chains) + " chains on " + std::to_string(mpi::size()) + " rank(s), " + update +
            ", " + std::to_string(hp.thermalization) + " thermalisation + " + std::to_string(hp.trajectories) +
            " trajectories each" +
            (mixed ? ", a flow step (model " + weights_hash + ") after every " + std::to_string(hp.flow_every) : ""));
}

// The chains' state before the kept trajectories: restored from the store after a resume, otherwise thermalised
// (from hmc.start's configuration if given, else from the cold start) and committed to the store.
void start_chains(HmcChains& chains, HmcStore& store, const Config& cfg, const Theory& theory,
                  const torch::TensorOptions& options) {
  const auto& hp = cfg.hmc;
  const auto field_dims = theory.field_shape();
  std::vector<std::int64_t> field_shape{chains.n_chains()};
  field_shape.insert(field_shape.end(), field_dims.begin(), field_dims.end());
  if (!hp.start.empty() && !store.thermalized()) {
    // Every chain starts from the imported configuration (verified on read; docs/file-format.md).
    const auto u = io::read_gauge_file(hp.start);
    if (u.extents != cfg.lattice.extents)
      throw ConfigError("hmc.start = " + hp.start + ": its lattice is not lattice.extents");
    const auto links =
        torch::view_as_real(torch::from_blob(const_cast<std::complex<double>*>(u.links.data()),
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
    if (hp.algorithm != UpdateAlgorithm::heatbath)
      log::info("hmc: thermalised; n_md = " + std::to_string(n_md) +
                " (dt = " + std::to_string(hp.trajectory_length / n_md) + ")");
  }
}

// Kept trajectory i of this rank's chains [c0, c0 + nc), followed in a mixed chain by a flow step every
// hmc.flow_every trajectories (model: the flow, nullptr for pure HMC), measured.
HmcRow kept_trajectory(HmcChains& chains, FlowModel& model, const Theory& theory, const Config& cfg, std::int64_t c0,
                       std::int64_t i) {
  const auto& hp = cfg.hmc;
  const std::int64_t nc = chains.n_chains(), t = hp.thermalization + i;
  auto r = chains.trajectory(t, hp.check_reversibility);
  HmcRow row;
  if (hp.flow_every > 0) {
    row.flow_accepted.assign(static_cast<std::size_t>(nc), kNoFlowStep);
    if ((i + 1) % hp.flow_every == 0) {
      const auto f0 = std::chrono::steady_clock::now();
      auto x = chains.field();
      row.flow_accepted = flow_step(*model, theory, x, cfg.run.seed, c0, nc, t);
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
  return row;
}

// The /hmc group: the update's parameters and the run's totals (over all sessions of a resumed run).
void write_hmc_group(io::File& f, const HmcParams& hp, const HmcTotals& t, double per_site) {
  f.create_group("/hmc");
  if (hp.algorithm == UpdateAlgorithm::heatbath) {  // only heat-bath files carry these, so HMC files stay as they were
    f.write_attr("/hmc", "algorithm", choice_name(hp.algorithm));
    f.write_attr("/hmc", "overrelax", static_cast<std::int64_t>(hp.overrelax));
  }
  f.write_attr("/hmc", "integrator", choice_name(hp.integrator));
  if (hp.integrator == Integrator::kOmelyan) f.write_attr("/hmc", "omelyan_lambda", kOmelyanLambda);
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
  if (hp.flow_every > 0) {
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
}

void log_totals(const HmcParams& hp, const HmcTotals& t, double per_site, const std::string& out) {
  char b[256];
  if (hp.algorithm == UpdateAlgorithm::heatbath)
    std::snprintf(b, sizeof b,
                  "heatbath: %lld x %lld sweeps (heat bath + %d overrelaxation), %.3g s per sweep per "
                  "site, wrote %s",
                  static_cast<long long>(hp.chains), static_cast<long long>(hp.trajectories), hp.overrelax, per_site,
                  out.c_str());
  else
    std::snprintf(b, sizeof b,
                  "hmc: %lld x %lld trajectories, acceptance %.4f, <exp(-dH)> = %.4f +- %.4f, %.3g s per "
                  "trajectory per site, wrote %s",
                  static_cast<long long>(hp.chains), static_cast<long long>(hp.trajectories), t.acceptance, t.exp_mdH,
                  t.exp_mdH_error, per_site, out.c_str());
  log::info(b);
  if (hp.flow_every > 0) {
    std::snprintf(b, sizeof b, "hmc: %lld flow proposals, flow acceptance %.4f, %.1f s in flow steps (%.0f%%)",
                  static_cast<long long>(t.flow_proposals), t.flow_acceptance, t.flow_seconds,
                  100 * t.flow_seconds / t.seconds);
    log::info(b);
  }
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

  const bool mixed = hp.flow_every > 0;
  FlowModel model{nullptr};
  CheckpointMeta meta;
  std::string hash;
  if (mixed) {
    model = mixed_flow(cfg, meta);
    hash = model->weights_hash();
  }
  HmcStore store(cfg, hmc_layout(cfg, theory, hash), c0, nc, [&](io::File& f) {
    io::write_header(f, cfg, Provenance::collect(command_line, mpi::size()), mixed ? "mixed" : "hmc");
    io::write_references(f, cfg);
    if (mixed) write_model_group(f, cfg, meta, hash);
  });
  if (store.complete()) return out;

  log_start(cfg, hash);
  start_chains(chains, store, cfg, theory, options);
  for (std::int64_t i = store.next_trajectory(); i < hp.trajectories; ++i) {
    // A crashed node, as the tests simulate it (LATFLOW_FAULT_TRAJECTORY, LATFLOW_FAULT_RANK).
    if (faults::fail_before_trajectory(i, rank))
      throw Error("injected failure before trajectory " + std::to_string(i) + " (LATFLOW_FAULT_TRAJECTORY)");
    store.add(kept_trajectory(chains, model, theory, cfg, c0, i));
  }
  const std::int64_t V = cfg.lattice.volume();
  store.finish([&](io::File& f, const HmcTotals& t) {
    // Cost of one trajectory of one chain per lattice site, everything but the optional reversibility check and
    // a mixed chain's flow steps (over all sessions of a resumed run).
    const double per_site = (t.seconds - t.check_seconds - t.flow_seconds) /
                            (static_cast<double>(hp.thermalization + hp.trajectories) * hp.chains * V);
    write_hmc_group(f, hp, t, per_site);
    log_totals(hp, t, per_site, out);
  });
  return out;
}

}  // namespace latflow
