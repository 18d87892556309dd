// SPDX-License-Identifier: MIT
// Reverse-KL training of a flow with checkpoints, resume and a numerical guard (docs/design.md "Training").
//
// Data-parallel over the MPI ranks: every rank holds the whole model, makes its share of the batch, and the
// gradients are summed with one MPI_Allreduce per step, so the ranks apply the same update and stay identical
// (checked by a weight hash at every checkpoint). Only the root writes checkpoints and prints. Every member
// function that takes part in a collective must be called on all ranks alike, in the same order; the decisions
// between them are made from values that every rank shares (summed losses and gradients, broadcast clocks).
//
// train_job (jobs/train.cpp) drives it:
//   Trainer t(cfg);
//   if (t.resume()) return t.summary(true);   // the checkpoint is complete
//   t.begin();
//   while (t.step() < steps && t.trainable() && !t.out_of_time())
//     if (t.train_step()) { evaluate / checkpoint when due }
//   return t.finish();
#pragma once
#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "latflow/core/params.hpp"
#include "latflow/flows/checkpoint.hpp"
#include "latflow/flows/flow.hpp"
#include "latflow/flows/train_history.hpp"
#include "latflow/theories/theory.hpp"

namespace latflow {

class Trainer {
 public:
  // What the objective adds to log q(x) for the flow's samples x ([n, field...], float64, with graph): by default
  // the action S(x); a stochastic normalizing flow's is S_0(x) + W of the protocol that the samples then go
  // through (samplers/imh.hpp, anneal). Its random numbers come from `stream` for sample `first` + i (the
  // global index in the batch), so that the data do not depend on the ranks.
  using PathAction =
      std::function<torch::Tensor(FlowModelImpl& model, torch::Tensor& x, std::uint64_t stream, std::int64_t first)>;
  // The theory, the model with its initial weights (from the run seed) and the optimizer. ConfigError if
  // train.batch is smaller than the number of ranks it is split over.
  explicit Trainer(const Config& cfg, PathAction path_action = {});
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Continues the checkpoint (unless train.restart) or starts from train.init_from's weights. Returns true if
  // the checkpoint is complete, its final evaluation included: then there is nothing to train. ConfigError if
  // the checkpoint was made with other parameters.
  bool resume();
  // Logs what is trained and starts this session's training clock.
  void begin();

  std::int64_t step() const { return step_; }
  // False for a model without parameters (flow.layers = 0 with a fixed prior): it is checkpointed as it is.
  bool trainable() const { return n_params_ > 0; }
  // Whether train.max_minutes is spent (the root's clock decides for all ranks, which must stop at the same
  // step); logs the stop.
  bool out_of_time();
  // One training step: the batch, the gradients summed over the ranks, the guarded update, the history and the
  // progress line. Advances step(). Returns false if the step's update was skipped or rolled back.
  bool train_step();
  // Kish ESS and the IMH acceptance estimate on train.eval_samples fresh proposals at step(), into the history
  // (not counted as training time).
  void evaluate();
  // Writes the checkpoint of step() (the root does), rolling back first if a weight is not finite.
  // NumericalError if the ranks' weights differ.
  void checkpoint();
  // After the last step: the final evaluation and checkpoint if still missing, the closing log line.
  TrainSummary finish();
  TrainSummary summary(bool reused);

 private:
  double elapsed() const;  // this session's training seconds, evaluations excluded
  KLObjective path_objective(const torch::Tensor& z, std::uint64_t stream);
  std::vector<double> evaluation_log_weights();
  void check_training_identity(const CheckpointMeta& stored) const;
  void skip_bad_step();
  void record_batch(double loss, const torch::Tensor& log_weights);
  bool close_interval(double lr);
  void show_progress(bool log_line);
  void roll_back();

  const Config& cfg_;
  const TrainParams& tp_;
  const int ranks_, rank_;
  const bool root_;
  const std::int64_t lo_, hi_;  // this rank's share [lo, hi) of each batch
  const std::unique_ptr<Theory> theory_;
  PathAction path_action_;
  FlowModel model_;
  torch::optim::Adam opt_;
  const std::string ckpt_;
  CheckpointMeta meta_;  // the checkpoint's state: step, lr scale, history and its interval sums
  std::vector<torch::Tensor> params_;
  std::vector<double> grad_buffer_;  // the gradients summed over the ranks (allreduce_gradients)
  std::int64_t n_params_ = 0;
  std::int64_t step_ = 0;
  std::chrono::steady_clock::time_point t0_;
  double base_seconds_ = 0;  // training time of earlier sessions (and of the train.init_from source)
  double eval_seconds_ = 0;  // evaluations are not training: the clock excludes them
  // Where this session's training steps spend their time (this rank's clock): the batch's prior draws, the
  // objective with its backward pass, the gradient allreduce (including the wait for the slowest rank), the
  // update, and the history and progress bookkeeping. Logged by finish().
  struct StepPhases {
    double draw = 0, forward_backward = 0, allreduce = 0, update = 0, bookkeeping = 0;
    std::int64_t steps = 0;
  } phases_;
  void log_phases() const;
  // The step of this session's last evaluation, on every rank (the history is kept by the root only, so it
  // cannot decide for the others whether the final evaluation is due: a collective that all ranks must join).
  std::int64_t last_eval_step_ = -1;
  std::string good_state_;  // model and optimizer at the last finite logging point, the roll-back target
  std::int64_t bad_in_a_row_ = 0;
  int rollbacks_in_a_row_ = 0;  // without a good step in between
};

}  // namespace latflow
