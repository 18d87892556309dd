// SPDX-License-Identifier: MIT
// Independence Metropolis (IMH) over flow proposals, treated as data (docs/design.md "The IMH chain as
// data").
//
// Proposals are made in blocks; block b draws its prior noise from the stream (seed, "propose", b), and IMH step i
// decides with the counter-based uniform of (seed, "accept", i). Blocks are dealt round-robin to the MPI ranks;
// the root receives each block's log-weights in block order and runs the serial
// accept/reject sequence. Hence the ensemble does not depend on the number of ranks. The distribution and the
// crash-safe file protocol are in imh_chain.hpp.
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>

#include "latflow/core/error.hpp"
#include "latflow/core/log.hpp"
#include "latflow/core/provenance.hpp"
#include "latflow/core/seed.hpp"
#include "latflow/flows/checkpoint.hpp"
#include "latflow/io/ensemble.hpp"
#include "latflow/jobs.hpp"
#include "latflow/parallel/mpi.hpp"
#include "latflow/samplers/hmc.hpp"
#include "latflow/samplers/imh_chain.hpp"
#include "latflow/theories/theory.hpp"

namespace latflow {
namespace {

// The theories of a non-equilibrium protocol, points 0 .. n (docs/physics.md "Non-equilibrium proposals").
struct Protocol {
  std::vector<std::unique_ptr<Theory>> theories;
  std::uint64_t seed = 0;  // of its HMC steps' streams
  std::int64_t hmc_accepted = 0, hmc_trajectories = 0;
};

// Moves proposals x_0 ~ q through the protocol: for k = 1 .. n the coupling steps from c_{k-1} to c_k, which
// does the work S_k(x_{k-1}) - S_{k-1}(x_{k-1}), and one HMC trajectory that leaves exp(-S_k) invariant makes
// x_k. Proposal i's HMC streams are keyed by (seed, global proposal index, k), like HMC chains by (chain,
// trajectory): independent of blocks and ranks. Returns W = sum of the work [n]; x becomes x_n.
torch::Tensor anneal(Protocol& protocol, const Config& cfg, torch::Tensor& x, std::int64_t first) {
  const std::int64_t n = x.size(0), steps = static_cast<std::int64_t>(protocol.theories.size()) - 1;
  auto W = torch::zeros({n}, torch::kFloat64);
  auto S_prev = protocol.theories[0]->action(x);
  for (std::int64_t k = 1; k <= steps; ++k) {
    const Theory& theory = *protocol.theories[static_cast<std::size_t>(k)];
    W += theory.action(x) - S_prev;
    HmcChains chains(theory, cfg.hmc, protocol.seed, first, n, x.options());
    chains.set_field(x);
    auto r = chains.trajectory(k);
    x = chains.field();
    protocol.hmc_accepted += r.accepted.sum().item<std::int64_t>();
    protocol.hmc_trajectories += n;
    if (k < steps) S_prev = theory.action(x);
  }
  return W;
}

// One block of proposals with its log-densities, actions, observables and fields (float64, exact for float32).
ImhBlock make_block(FlowModel& model, const Theory& theory, Protocol* protocol, const Config& cfg, std::int64_t b) {
  ImhBlock blk;
  blk.block = b;
  blk.n = std::min(cfg.sample.block, cfg.sample.proposals - b * cfg.sample.block);
  auto [x, log_q] = model->sample(blk.n, derive_seed(cfg.run.seed, "propose", static_cast<std::uint64_t>(b)));
  auto xd = x.to(torch::kCPU, torch::kFloat64).contiguous();  // exact for float32 fields
  torch::Tensor log_w, W;
  if (protocol != nullptr) {
    // log w = -S_0(x_0) - log q(x_0) - W: the flow's weight at the start coupling, times exp(-W).
    log_w = -protocol->theories[0]->action(xd) - log_q.to(torch::kCPU, torch::kFloat64);
    W = anneal(*protocol, cfg, xd, b * cfg.sample.block);
    log_w = log_w - W;
    xd = xd.contiguous();
  }
  auto S = theory.action(xd);
  auto m = theory.measure(xd);
  auto copy = [](const torch::Tensor& t, std::vector<double>& v) {
    auto c = t.to(torch::kCPU).contiguous();
    v.assign(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  };
  copy(log_q, blk.log_q);
  copy(S, blk.S);
  copy(m.scalars, blk.scalars);
  copy(m.correlator, blk.correlator);
  copy(xd, blk.x);
  if (protocol != nullptr) {
    copy(log_w, blk.log_w);
    copy(W, blk.work);
  }
  return blk;
}

// Fault injection for tests: LATFLOW_FAULT_BLOCK=b makes the rank that is about to make block b fail, as a
// crashed node would (the run stops with MPI_Abort; the output stays resumable).
void fault_point(std::int64_t b) {
  static const char* env = std::getenv("LATFLOW_FAULT_BLOCK");
  if (env != nullptr && std::to_string(b) == env)
    throw Error("injected failure before block " + std::to_string(b) + " (LATFLOW_FAULT_BLOCK)");
}

}  // namespace

std::string sample_job(const Config& cfg, const std::string& command_line) {
  const std::string& out = cfg.run.output;
  torch::set_num_threads(cfg.run.threads);
  const auto theory_ptr = make_theory(cfg);
  const Theory& theory = *theory_ptr;
  // Non-equilibrium proposals start from the flow of the protocol's start physics.
  const bool ne = cfg.ne.steps > 0;
  const Config start = ne ? ne_stage(cfg, 0) : cfg;
  std::optional<Protocol> protocol;
  if (ne) {
    protocol.emplace();
    for (std::int64_t k = 0; k <= cfg.ne.steps; ++k) protocol->theories.push_back(make_theory(ne_stage(cfg, k)));
    protocol->seed = derive_seed(cfg.run.seed, "ne_hmc", 0);
  }
  FlowModel model = make_flow(start);
  // A model without parameters (flow.layers = 0 and a fixed prior) is its prior: it needs no checkpoint.
  CheckpointMeta meta;
  if (!model->parameters().empty() || checkpoint_exists(cfg.checkpoint_path()))
    meta = load_checkpoint(cfg.checkpoint_path(), model, nullptr, model_identity(start));
  model->to_device(torch::Device(cfg.run.device));
  model->eval();
  const std::string hash = model->weights_hash();
  torch::InferenceMode inference;

  const std::int64_t N = cfg.sample.proposals;
  ImhLayout layout;
  const auto field_dims = theory.field_shape();
  layout.observable_names = theory.observable_names();
  layout.L0 = cfg.lattice.extents[0];
  layout.V = 1;  // numbers per configuration
  for (auto e : field_dims) layout.V *= e;
  layout.field_shape.assign(field_dims.begin(), field_dims.end());
  // Annealed fields are float64 (HMC's); the flow's float32 fields are stored exactly as float32.
  layout.float32_fields = cfg.flow.dtype == "float32" && !ne;
  layout.work = ne;
  layout.identity = sample_identity(cfg, hash);
  ImhChain chain(cfg, layout, [&](io::File& f) {
    io::write_header(f, cfg, Provenance::collect(command_line, mpi::size()), "imh");
    io::write_references(f, cfg);
    write_model_group(f, cfg, meta, hash);
    if (ne) {
      f.create_group("/ne");
      f.write_attr("/ne", "steps", cfg.ne.steps);
      f.write_attr("/ne", "parameter", cfg.ne.parameter);
      f.write_attr("/ne", "start", cfg.ne.start);
      f.write_attr("/ne", "integrator", cfg.hmc.integrator);
      f.write_attr("/ne", "trajectory_length", cfg.hmc.trajectory_length);
      f.write_attr("/ne", "n_md", static_cast<std::int64_t>(cfg.hmc.n_md));
      f.write_attr("/ne", "jitter", cfg.hmc.jitter);
      if (cfg.hmc.algorithm != "hmc") {  // each step's update: a heat-bath sweep + overrelax sweeps
        f.write_attr("/ne", "algorithm", cfg.hmc.algorithm);
        f.write_attr("/ne", "overrelax", static_cast<std::int64_t>(cfg.hmc.overrelax));
      }
    }
  });
  const int R = mpi::size();
  log::info("sampling: " + std::to_string(N) + " proposals in " + std::to_string(chain.n_blocks()) +
            " blocks on " + std::to_string(R) + " rank(s), model " + hash);
  const auto t0 = std::chrono::steady_clock::now();
  while (!chain.done()) {
    const std::int64_t b = chain.next_block() + mpi::rank();
    fault_point(b);
    chain.add_round(b < chain.n_blocks() ? make_block(model, theory, protocol ? &*protocol : nullptr, cfg, b)
                                         : ImhBlock{});
  }
  const double acceptance = chain.finish();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::int64_t made = N - chain.resumed_from();
  if (made > 0)
    log::info("sampling: " + std::to_string(made) + " proposals in " + log::format_seconds(seconds) + " (" +
              std::to_string(static_cast<long>(made / seconds)) + "/s), acceptance " +
              std::to_string(acceptance) + ", wrote " + out);
  if (ne) {
    double counts[2] = {static_cast<double>(protocol->hmc_accepted), static_cast<double>(protocol->hmc_trajectories)};
    mpi::allreduce_sum(counts, 2);
    char b[256];
    std::snprintf(b, sizeof b, "sampling: %lld non-equilibrium steps per proposal (%s from %g), %s acceptance %.4f",
                  static_cast<long long>(cfg.ne.steps), cfg.ne.parameter.c_str(), cfg.ne.start,
                  cfg.hmc.algorithm == "heatbath" ? "heat-bath" : "HMC", counts[1] > 0 ? counts[0] / counts[1] : 0.0);
    log::info(b);
  }
  mpi::barrier();
  return out;
}

}  // namespace latflow
