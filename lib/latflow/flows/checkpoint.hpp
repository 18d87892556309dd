// SPDX-License-Identifier: MIT
// Checkpoints: model, optimizer state, step, training history and the identity of the run, in one LibTorch
// archive written atomically (temporary file, fsync, rename, fsync of the directory), so a reader sees either
// the previous complete checkpoint or the new one. The data of step s is drawn from the stream
// (seed, "train", s), so model + optimizer + step is the whole state: a resumed run continues exactly.
#pragma once
#include <torch/torch.h>

#include <optional>
#include <string>

#include "latflow/flows/flow.hpp"
#include "latflow/jobs.hpp"

namespace latflow {

struct CheckpointMeta {
  std::string model_identity, training_identity;
  std::int64_t step = 0;
  double train_seconds = 0;
  TrainHistory history;
};

void save_checkpoint(const std::string& path, FlowModel& model, torch::optim::Optimizer* opt,
                     const CheckpointMeta& meta);
// Loads into `model` (and `opt` if given); throws IoError naming the file if it is missing or unreadable, and
// ConfigError naming the first differing key if the stored model identity differs from `expected_identity`
// (checked before any tensor is loaded).
CheckpointMeta load_checkpoint(const std::string& path, FlowModel& model, torch::optim::Optimizer* opt,
                               const std::string& expected_identity);
// Copies only the parameters (not the lattice-dependent mask buffers) of the checkpoint at `path` into `model`,
// after checking that its theory and flow.* keys equal those of `expected_identity` (lattice extents and
// couplings may differ). Returns the source's metadata (its training time is part of the new model's cost).
CheckpointMeta load_weights_from(const std::string& path, FlowModel& model, const std::string& expected_identity);
bool file_exists(const std::string& path);
// Creates the directory that will hold `path` if it is missing; IoError naming it if that fails.
void ensure_parent_dir(const std::string& path);
// Durable rename: fsync the file, rename over the target, fsync the directory.
void commit_file(const std::string& tmp, const std::string& path);

}  // namespace latflow
