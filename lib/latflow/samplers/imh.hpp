// SPDX-License-Identifier: MIT
// The proposals of independence Metropolis (IMH) over a flow, treated as data (docs/design.md "The IMH chain as
// data").
//
// Proposals are made in blocks; block b draws its prior noise from the stream (seed, "propose", b), and IMH step i
// decides with the counter-based uniform of (seed, "accept", i). Blocks are dealt round-robin to the MPI ranks;
// the root receives each block's log-weights in block order and runs the serial accept/reject sequence. Hence the
// ensemble does not depend on the number of ranks. The distribution and the crash-safe file protocol are in
// imh_chain.hpp; sample_job (jobs/sample.cpp) joins the two.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "latflow/core/params.hpp"
#include "latflow/flows/flow.hpp"
#include "latflow/samplers/imh_chain.hpp"
#include "latflow/theories/theory.hpp"

namespace latflow {

// The theories of a non-equilibrium protocol, points 0 .. ne.steps (docs/physics.md "Non-equilibrium
// proposals"), and the acceptance count of its HMC steps on this rank.
struct NeProtocol {
  explicit NeProtocol(const Config& cfg);
  std::vector<std::unique_ptr<Theory>> theories;
  std::uint64_t seed = 0;  // of its HMC steps' streams
  std::int64_t hmc_accepted = 0, hmc_trajectories = 0;
};

// Moves x_0 ([n, field...], float64, CPU) through the protocol, in place: for k = 1 .. ne.steps the coupling steps
// from c_{k-1} to c_k; the flow block of step k, if `model` has one, maps x to y = g_k(x); then one update that
// leaves exp(-S_k) invariant (an HMC trajectory or a heat-bath sweep) makes x_k from y. Returns the work
//   W = sum_k [S_k(y_k) - S_{k-1}(x_{k-1}) - log|det dg_k/dx (x_{k-1})|]   (y_k = x_{k-1} where step k has no block)
// [n] float64 (docs/physics.md "Stochastic normalizing flows"): a proposal's log-weight is -S_0(x_0) - log q(x_0) - W.
// With autograd it is differentiable in x_0 and in the blocks' weights, the updates' outputs held constant (their
// randomness is noise, their accept/reject step is not differentiable). The updates of sample i draw from the
// streams keyed by (seed, first + i, k).
torch::Tensor anneal(FlowModelImpl& model, NeProtocol& protocol, const HmcParams& hmc, std::uint64_t seed,
                     std::int64_t first, torch::Tensor& x);

// Block b of proposals with its log-densities, actions, observables and fields (float64, exact for float32),
// drawn from `model`. With a protocol the proposals are moved through it, and their log-weights and work are
// filled in too.
ImhBlock make_block(FlowModel& model, const Theory& theory, NeProtocol* protocol, const Config& cfg, std::int64_t b);

}  // namespace latflow
