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
#include <cstdlib>

#include "latflow/core/error.hpp"
#include "latflow/core/log.hpp"
#include "latflow/core/provenance.hpp"
#include "latflow/core/seed.hpp"
#include "latflow/flows/checkpoint.hpp"
#include "latflow/io/ensemble.hpp"
#include "latflow/jobs.hpp"
#include "latflow/parallel/mpi.hpp"
#include "latflow/samplers/imh_chain.hpp"
#include "latflow/theories/theory.hpp"

namespace latflow {
namespace {

// One block of proposals with its log-densities, actions, observables and fields (float64, exact for float32).
ImhBlock make_block(FlowModel& model, const Theory& theory, const Config& cfg, std::int64_t b) {
  ImhBlock blk;
  blk.block = b;
  blk.n = std::min(cfg.sample.block, cfg.sample.proposals - b * cfg.sample.block);
  auto [x, log_q] = model->sample(blk.n, derive_seed(cfg.run.seed, "propose", static_cast<std::uint64_t>(b)));
  auto xd = x.to(torch::kCPU, torch::kFloat64).contiguous();  // exact for float32 fields
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
  FlowModel model = make_flow(cfg);
  auto meta = load_checkpoint(cfg.checkpoint_path(), model, nullptr, model_identity(cfg));
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
  layout.float32_fields = cfg.flow.dtype == "float32";
  layout.identity = sample_identity(cfg, hash);
  ImhChain chain(cfg, layout, [&](io::File& f) {
    io::write_header(f, cfg, Provenance::collect(command_line), "imh");
    io::write_references(f, cfg);
    write_model_group(f, cfg, meta, hash);
  });
  const int R = mpi::size();
  log::info("sampling: " + std::to_string(N) + " proposals in " + std::to_string(chain.n_blocks()) +
            " blocks on " + std::to_string(R) + " rank(s), model " + hash);
  const auto t0 = std::chrono::steady_clock::now();
  while (!chain.done()) {
    const std::int64_t b = chain.next_block() + mpi::rank();
    fault_point(b);
    chain.add_round(b < chain.n_blocks() ? make_block(model, theory, cfg, b) : ImhBlock{});
  }
  const double acceptance = chain.finish();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::int64_t made = N - chain.resumed_from();
  if (made > 0)
    log::info("sampling: " + std::to_string(made) + " proposals in " + log::format_seconds(seconds) + " (" +
              std::to_string(static_cast<long>(made / seconds)) + "/s), acceptance " +
              std::to_string(acceptance) + ", wrote " + out);
  mpi::barrier();
  return out;
}

}  // namespace latflow
