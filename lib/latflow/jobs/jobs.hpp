// SPDX-License-Identifier: MIT
// The jobs behind the CLI's subcommands (one source file each in this folder). Torch-free interface: apps/ and
// tests call these without compiling LibTorch headers.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "latflow/core/params.hpp"
#include "latflow/flows/train_history.hpp"

namespace latflow {

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

// Median training-step time and proposal throughput of cfg's flow for each batch size, printed as a table.
void bench_job(const Config& cfg, const std::vector<std::int64_t>& batches, int repeats);
// HMC throughput on L^d lattices (d from cfg.lattice) with cfg.hmc's integrator, n_md (not tuned) and chains.
void bench_hmc_job(const Config& cfg, const std::vector<std::int64_t>& sizes, int repeats);

}  // namespace latflow
