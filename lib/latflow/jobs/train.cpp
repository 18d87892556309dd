// SPDX-License-Identifier: MIT
// `latflow train` (and the training half of `latflow run`): the Trainer of flows/trainer.hpp driven to
// train.steps or train.max_minutes.
#include <torch/torch.h>

#include <optional>

#include "latflow/flows/trainer.hpp"
#include "latflow/jobs/jobs.hpp"
#include "latflow/samplers/imh.hpp"

namespace latflow {

TrainSummary train_job(const Config& cfg) {
  // Non-equilibrium sampling starts from the flow of the protocol's start physics: without flow blocks that is
  // what is trained. A stochastic normalizing flow (ne.blocks > 0) trains the flow and its blocks together, by the
  // reverse KL of the whole path: log q(x_0) + S_0(x_0) + W.
  if (cfg.ne.steps > 0 && cfg.ne.blocks == 0) return train_job(ne_stage(cfg, 0));
  torch::set_num_threads(cfg.run.threads);
  const auto& tp = cfg.train;
  std::optional<NeProtocol> protocol;
  Trainer::PathAction path_action;
  if (cfg.ne.steps > 0) {
    protocol.emplace(cfg);
    path_action = [&](FlowModelImpl& model, torch::Tensor& x, std::uint64_t stream, std::int64_t first) {
      auto S0 = protocol->theories[0]->action(x);
      return S0 + anneal(model, *protocol, cfg.hmc, stream, first, x);
    };
  }
  Trainer trainer(cfg, path_action);
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
