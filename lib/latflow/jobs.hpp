// SPDX-License-Identifier: MIT
// The jobs behind the CLI's subcommands. Torch-free interface: apps/ and tests call these without compiling
// LibTorch headers.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "latflow/core/params.hpp"

namespace latflow {

// Training history. Per logging interval: means over the interval's steps of the loss, the batch's Kish ESS
// fraction and IMH acceptance estimate (biased high for small batches), var(log w), the learning rate, and the
// training wall time. Per evaluation (train.eval_every): Kish ESS and the acceptance estimate on
// train.eval_samples fresh proposals, the honest figures to plot against training time.
struct TrainHistory {
  std::vector<double> step, loss, ess, acceptance, var_logw, lr, wall_seconds;
  std::vector<double> eval_step, eval_wall_seconds, eval_ess, eval_acceptance;
  // (name, column) pairs in a fixed order: checkpoints and ensemble files store the history by these names.
  std::vector<std::pair<const char*, std::vector<double>*>> columns() {
    return {{"step", &step},           {"loss", &loss},
            {"ess", &ess},             {"acceptance", &acceptance},
            {"var_logw", &var_logw},   {"lr", &lr},
            {"wall_seconds", &wall_seconds}, {"eval_step", &eval_step},
            {"eval_wall_seconds", &eval_wall_seconds}, {"eval_ess", &eval_ess},
            {"eval_acceptance", &eval_acceptance}};
  }
};

struct TrainSummary {
  std::int64_t steps_done = 0;
  double train_seconds = 0;  // wall time spent training, over all sessions of this checkpoint
  bool reused = false;       // the checkpoint was already trained to train.steps
  std::string weights_hash;
  TrainHistory history;
};

// Train (or continue the checkpoint's training) to cfg.train.steps or cfg.train.max_minutes; writes the
// checkpoint atomically. Throws ConfigError if an existing checkpoint was made with other parameters.
TrainSummary train_job(const Config& cfg);

// Sample cfg.sample.proposals proposals from the trained checkpoint, run the independence Metropolis chain and
// write the ensemble to cfg.run.output (refusing to overwrite unless run.overwrite). Returns the output path.
std::string sample_job(const Config& cfg, const std::string& command_line);

// Run cfg.hmc.chains HMC chains (thermalisation with n_md tuning, then cfg.hmc.trajectories kept trajectories
// each) and write the ensemble to cfg.run.output (refusing to overwrite unless run.overwrite), the chains split
// over the MPI ranks. With cfg.hmc.flow_every > 0 a mixed chain: a flow independence-Metropolis step after every
// flow_every kept trajectories, with the trained checkpoint (kind "mixed"). Returns the output path.
std::string hmc_job(const Config& cfg, const std::string& command_line);

}  // namespace latflow

namespace latflow {
// Median training-step time and proposal throughput of cfg's flow for each batch size, printed as a table.
void bench_job(const Config& cfg, const std::vector<std::int64_t>& batches, int repeats);
// HMC throughput on L^d lattices (d from cfg.lattice) with cfg.hmc's integrator, n_md (not tuned) and chains.
void bench_hmc_job(const Config& cfg, const std::vector<std::int64_t>& sizes, int repeats);
}  // namespace latflow
