// SPDX-License-Identifier: MIT
// The jobs behind the CLI's subcommands. Torch-free interface: apps/ and tests call these without compiling
// LibTorch headers.
#pragma once
#include <string>
#include <vector>

#include "latflow/core/params.hpp"

namespace latflow {

struct TrainHistory {
  std::vector<double> step, loss, ess, acceptance, var_logw, lr, wall_seconds;
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

}  // namespace latflow

namespace latflow {
// Median training-step time and proposal throughput of cfg's flow for each batch size, printed as a table.
void bench_job(const Config& cfg, const std::vector<std::int64_t>& batches, int repeats);
}  // namespace latflow
