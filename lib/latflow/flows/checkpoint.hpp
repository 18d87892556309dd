// SPDX-License-Identifier: MIT
// Checkpoints: model, optimizer state, step, learning-rate scale, training history and the identity of the run,
// in one LibTorch archive. Write protocol (crash-safe, docs/design.md "Checkpoints"):
//   1. the archive is written to CKPT.tmp and fsynced; a checkpoint with a non-finite weight is never written;
//   2. backups rotate: CKPT.1 -> CKPT.2, and CKPT is hard-linked as CKPT.1 (so CKPT never disappears);
//   3. CKPT.tmp is renamed over CKPT and the directory fsynced.
// A reader therefore sees a complete checkpoint under every name at every moment; loading falls back to the
// newest readable backup, with a one-line warning, when CKPT is unreadable (truncated, corrupt, non-finite).
// The data of step s is drawn from the stream (seed, "train", s), so model + optimizer + step (+ the lr scale
// after roll-backs, + the history interval's running sums) is the whole state: a resumed run continues exactly,
// its training history included.
#pragma once
#include <torch/torch.h>

#include <optional>
#include <string>

#include "latflow/flows/flow.hpp"
#include "latflow/flows/train_history.hpp"
#include "latflow/io/durable.hpp"
#include "latflow/io/h5.hpp"

namespace latflow {

constexpr int kCheckpointBackups = 2;  // CKPT.1 (previous), CKPT.2 (the one before)

struct CheckpointMeta {
  std::string model_identity, training_identity;
  std::int64_t step = 0;
  double train_seconds = 0;
  double lr_scale = 1.0;  // learning-rate factor after NaN roll-backs (halved by each)
  TrainHistory history;
  // Running sums of the current history interval (loss, Kish ESS/N, acceptance estimate, var log w) and the
  // number of steps in them: a resume inside an interval continues them exactly, so the history does not depend
  // on where a run was interrupted.
  std::vector<double> interval_sums = std::vector<double>(4, 0.0);
  std::int64_t interval_steps = 0;
};

// CKPT.k for k >= 1, CKPT itself for k = 0.
std::string checkpoint_backup(const std::string& path, int k);
// True if CKPT or one of its backups exists.
bool checkpoint_exists(const std::string& path);

// Writes atomically with rotated backups (see above). NumericalError if a weight of the model is not finite
// (nothing is written then); IoError naming the file if writing fails (the previous checkpoint is left intact).
void save_checkpoint(const std::string& path, FlowModel& model, torch::optim::Optimizer* opt,
                     const CheckpointMeta& meta);
// Loads into `model` (and `opt` if given). Tries CKPT, then CKPT.1, CKPT.2: an unreadable one is skipped with a
// one-line warning naming it and the backup used. Throws IoError naming the file if none is readable or none
// exists, and ConfigError naming the first differing key if the stored model identity differs from
// `expected_identity` (checked before any tensor is loaded).
CheckpointMeta load_checkpoint(const std::string& path, FlowModel& model, torch::optim::Optimizer* opt,
                               const std::string& expected_identity);
// True if every parameter and buffer of the model is finite.
bool weights_finite(FlowModel& model);
// Copies only the parameters (not the lattice-dependent mask buffers) of the checkpoint at `path` into `model`,
// after checking that its theory and flow.* keys equal those of `expected_identity` (lattice extents and
// couplings may differ). Returns the source's metadata (its training time is part of the new model's cost).
CheckpointMeta load_weights_from(const std::string& path, FlowModel& model, const std::string& expected_identity);

// The /model group of an ensemble made with a trained flow (IMH samples, mixed chains): the architecture keys,
// the weights hash, the checkpoint path, and the training steps, seconds and history that the cost counts.
void write_model_group(io::File& f, const Config& cfg, const CheckpointMeta& meta, const std::string& weights_hash);

}  // namespace latflow
