// SPDX-License-Identifier: MIT
// Fault injection for the tests (tests/test_cli.cpp): environment variables that make a run fail on purpose at a
// chosen point, so that the recovery paths (skipped steps, roll-backs, rank failures, resumes) are exercised
// through the real binary. Each variable is read once, at its first query; unset, every query answers "no fault".
//   LATFLOW_FAULT_NAN_STEPS="a,b-c"   training steps whose loss becomes NaN
//   LATFLOW_FAULT_NAN_WEIGHT_STEP=s   a weight becomes NaN right after the update of training step s
//   LATFLOW_FAULT_TRAJECTORY=i        hmc: rank LATFLOW_FAULT_RANK (default 0) fails before kept trajectory i
//   LATFLOW_FAULT_BLOCK=b             sample: the rank about to make proposal block b fails
#pragma once
#include <cstdint>

namespace latflow::faults {

// Whether the loss of training step `step` is to be poisoned with NaN (LATFLOW_FAULT_NAN_STEPS).
bool poisoned_loss(std::int64_t step);
// The training step after whose update a weight becomes NaN, or -1 (LATFLOW_FAULT_NAN_WEIGHT_STEP).
std::int64_t nan_weight_step();
// Whether MPI rank `rank` is to fail before kept HMC trajectory i (LATFLOW_FAULT_TRAJECTORY, LATFLOW_FAULT_RANK).
bool fail_before_trajectory(std::int64_t i, int rank);
// Whether the rank about to make IMH proposal block b is to fail (LATFLOW_FAULT_BLOCK).
bool fail_before_block(std::int64_t b);

}  // namespace latflow::faults
