// SPDX-License-Identifier: MIT
// `latflow train` (and the training half of `latflow run`): the Trainer of flows/trainer.hpp driven to
// train.steps or train.max_minutes.
#include <torch/torch.h>

#include "latflow/flows/trainer.hpp"
#include "latflow/jobs/jobs.hpp"

namespace latflow {

TrainSummary train_job(const Config& cfg) {
  // Non-equilibrium sampling starts from the flow of the protocol's start physics: that is what is trained.
  if (cfg.ne.steps > 0) return train_job(ne_stage(cfg, 0));
  torch::set_num_threads(cfg.run.threads);
  const auto& tp = cfg.train;
  Trainer trainer(cfg);
  if (trainer.resume()) return trainer.summary(/*reused=*/true);
  trainer.begin();
  // Every rank runs this loop alike: the conditions below depend only on values that all ranks share.
  while (trainer.step() < tp.steps && trainer.trainable() && !trainer.out_of_time()) {
    if (!trainer.train_step()) continue;  // skipped or rolled back
    const std::int64_t done = trainer.step();
    if (tp.eval_every > 0 && done % tp.eval_every == 0) trainer.evaluate();
    // The last step's checkpoint waits for the final evaluation, in finish().
    if (done % tp.checkpoint_every == 0 && done < tp.steps) trainer.checkpoint();
  }
  return trainer.finish();
}

}  // namespace latflow
