// SPDX-License-Identifier: MIT
// What training records and reports: the history that checkpoints and ensemble files store, and the summary that
// train_job returns. Torch-free, so that jobs/jobs.hpp (the CLI's interface) can include it.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

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
    return {{"step", &step},
            {"loss", &loss},
            {"ess", &ess},
            {"acceptance", &acceptance},
            {"var_logw", &var_logw},
            {"lr", &lr},
            {"wall_seconds", &wall_seconds},
            {"eval_step", &eval_step},
            {"eval_wall_seconds", &eval_wall_seconds},
            {"eval_ess", &eval_ess},
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

}  // namespace latflow
