// SPDX-License-Identifier: MIT
// `latflow sample` (and the sampling half of `latflow run`): flow proposals (samplers/imh.hpp) fed to the
// distributed IMH chain and its ensemble file (samplers/imh_chain.hpp).
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <optional>

#include "latflow/core/error.hpp"
#include "latflow/core/faults.hpp"
#include "latflow/core/log.hpp"
#include "latflow/core/provenance.hpp"
#include "latflow/flows/checkpoint.hpp"
#include "latflow/io/ensemble.hpp"
#include "latflow/jobs/jobs.hpp"
#include "latflow/parallel/mpi.hpp"
#include "latflow/samplers/imh.hpp"
#include "latflow/samplers/imh_chain.hpp"
#include "latflow/theories/theory.hpp"

namespace latflow {
namespace {

// The flow of cfg (with a protocol: of its start physics, and its flow blocks) with the checkpoint's weights,
// ready for inference.
FlowModel trained_flow(const Config& cfg, CheckpointMeta& meta) {
  FlowModel model = make_flow(cfg);
  // A model without parameters (flow.layers = 0 and a fixed prior) is its prior: it needs no checkpoint.
  if (!model->parameters().empty() || checkpoint_exists(cfg.checkpoint_path()))
    meta = load_checkpoint(cfg.checkpoint_path(), model, nullptr, model_identity(cfg));
  model->to_device(torch::Device(cfg.run.device));
  model->eval();
  return model;
}

ImhLayout imh_layout(const Config& cfg, const Theory& theory, const std::string& weights_hash) {
  const bool ne = cfg.ne.steps > 0;
  ImhLayout layout;
  const auto field_dims = theory.field_shape();
  layout.observable_names = theory.observable_names();
  layout.L0 = cfg.lattice.extents[0];
  layout.V = 1;  // numbers per configuration
  for (auto e : field_dims) layout.V *= e;
  layout.field_shape.assign(field_dims.begin(), field_dims.end());
  // Annealed fields are float64 (HMC's); the flow's float32 fields are stored exactly as float32.
  layout.float32_fields = cfg.flow.dtype == NetDtype::float32 && !ne;
  layout.work = ne;
  layout.identity = sample_identity(cfg, weights_hash);
  return layout;
}

// The /ne group of a non-equilibrium ensemble: the protocol and its HMC (or heat-bath) steps.
void write_ne_group(io::File& f, const Config& cfg) {
  f.create_group("/ne");
  f.write_attr("/ne", "steps", cfg.ne.steps);
  f.write_attr("/ne", "parameter", choice_name(cfg.ne.parameter));
  f.write_attr("/ne", "start", cfg.ne.start);
  f.write_attr("/ne", "integrator", choice_name(cfg.hmc.integrator));
  f.write_attr("/ne", "trajectory_length", cfg.hmc.trajectory_length);
  f.write_attr("/ne", "n_md", static_cast<std::int64_t>(cfg.hmc.n_md));
  f.write_attr("/ne", "jitter", cfg.hmc.jitter);
  if (cfg.hmc.algorithm != UpdateAlgorithm::hmc) {  // each step's update: a heat-bath sweep + overrelax sweeps
    f.write_attr("/ne", "algorithm", choice_name(cfg.hmc.algorithm));
    f.write_attr("/ne", "overrelax", static_cast<std::int64_t>(cfg.hmc.overrelax));
  }
  if (cfg.ne.blocks > 0) {  // a stochastic normalizing flow: its flow blocks (their weights are the model's)
    f.write_attr("/ne", "blocks", cfg.ne.blocks);
    f.write_attr("/ne", "block_layers", static_cast<std::int64_t>(cfg.ne.block_layers));
  }
}

// The acceptance of the protocol's HMC steps over all ranks (a collective), logged by the root.
void log_ne_acceptance(const Config& cfg, const NeProtocol& protocol) {
  double counts[2] = {static_cast<double>(protocol.hmc_accepted), static_cast<double>(protocol.hmc_trajectories)};
  mpi::allreduce_sum(counts, 2);
  char b[256];
  std::snprintf(b, sizeof b,
                "sampling: %lld non-equilibrium steps per proposal (%s from %g, %lld flow blocks), %s acceptance %.4f",
                static_cast<long long>(cfg.ne.steps), choice_name(cfg.ne.parameter).c_str(), cfg.ne.start,
                static_cast<long long>(cfg.ne.blocks),
                cfg.hmc.algorithm == UpdateAlgorithm::heatbath ? "heat-bath" : "HMC",
                counts[1] > 0 ? counts[0] / counts[1] : 0.0);
  log::info(b);
}

}  // namespace

std::string sample_job(const Config& cfg, const std::string& command_line) {
  const std::string& out = cfg.run.output;
  torch::set_num_threads(cfg.run.threads);
  const auto theory_ptr = make_theory(cfg);
  const Theory& theory = *theory_ptr;
  // Non-equilibrium proposals start from the flow of the protocol's start physics.
  const bool ne = cfg.ne.steps > 0;
  std::optional<NeProtocol> protocol;
  if (ne) protocol.emplace(cfg);
  CheckpointMeta meta;
  FlowModel model = trained_flow(cfg, meta);
  const std::string hash = model->weights_hash();
  torch::InferenceMode inference;

  const std::int64_t N = cfg.sample.proposals;
  ImhChain chain(cfg, imh_layout(cfg, theory, hash), [&](io::File& f) {
    io::write_header(f, cfg, Provenance::collect(command_line, mpi::size()), "imh");
    io::write_references(f, cfg);
    write_model_group(f, cfg, meta, hash);
    if (ne) write_ne_group(f, cfg);
  });
  const int R = mpi::size();
  log::info("sampling: " + std::to_string(N) + " proposals in " + std::to_string(chain.n_blocks()) + " blocks on " +
            std::to_string(R) + " rank(s), model " + hash);
  const auto t0 = std::chrono::steady_clock::now();
  while (!chain.done()) {
    const std::int64_t b = chain.next_block() + mpi::rank();
    // A crashed node, as the tests simulate it: the run stops with MPI_Abort and the output stays resumable.
    if (faults::fail_before_block(b))
      throw Error("injected failure before block " + std::to_string(b) + " (LATFLOW_FAULT_BLOCK)");
    chain.add_round(b < chain.n_blocks() ? make_block(model, theory, protocol ? &*protocol : nullptr, cfg, b)
                                         : ImhBlock{});
  }
  const double acceptance = chain.finish();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::int64_t made = N - chain.resumed_from();
  if (made > 0)
    log::info("sampling: " + std::to_string(made) + " proposals in " + log::format_seconds(seconds) + " (" +
              std::to_string(static_cast<long>(made / seconds)) + "/s), acceptance " + std::to_string(acceptance) +
              ", wrote " + out);
  if (ne) log_ne_acceptance(cfg, *protocol);
  mpi::barrier();
  return out;
}

}  // namespace latflow
