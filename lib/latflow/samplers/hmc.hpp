// SPDX-License-Identifier: MIT
// Hybrid Monte Carlo (Duane, Kennedy, Pendleton, Roweth, PLB 195 (1987) 216) over the Theory interface, with
// B independent chains in the batch dimension: the exact baseline the flow sampler is compared against
// (docs/physics.md "HMC baseline").
//
// Every random number of chain c in trajectory t comes from a stream keyed by (seed, purpose, c, t): the
// momenta, the step-size jitter and the Metropolis uniform. A chain's history therefore does not depend on
// which other chains share its batch, process or device.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "latflow/core/params.hpp"
#include "latflow/theories/theory.hpp"

namespace latflow {

// Omelyan, Mryglod, Folk, CPC 151 (2003) 272: the second-order minimum-norm scheme (2MN) with the lambda that
// minimises the norm of its leading error term.
constexpr double kOmelyanLambda = 0.1932;

// Integrates dx/dt = p, dp/dt = F(x) in place over n_md steps of size dt ([B] float64, one step size per
// configuration). Both schemes are symmetric and symplectic, hence reversible and area-preserving, with an
// energy violation of O(dt^2) over a fixed trajectory length. Force evaluations: leapfrog n_md + 1, Omelyan
// 2 n_md + 1 (adjacent momentum half-steps of consecutive MD steps are merged).
void integrate(const Theory& theory, Integrator integrator, at::Tensor& x, at::Tensor& p, const at::Tensor& dt,
               int n_md);

// The stream seed of (seed, purpose, global chain index, trajectory index).
std::uint64_t chain_stream(std::uint64_t seed, const char* purpose, std::int64_t chain, std::int64_t trajectory);

// Mean Metropolis acceptance <min(1, exp(-dH))> at equilibrium for Gaussian dH, whose mean and variance are
// then tied by <exp(-dH)> = 1: P_acc = erfc(sqrt(<dH>) / 2) (Gupta, Irback, Karsch, Petersson, PLB 242 (1990)
// 437). mean_dh_for_acceptance is its inverse.
double acceptance_for_mean_dh(double mean_dh);
double mean_dh_for_acceptance(double acceptance);

struct TrajectoryResult {
  at::Tensor dH;        // [B] float64: H(end of trajectory) - H(start)
  at::Tensor accepted;  // [B] bool
  // Reversibility check (when asked): integrate forward, flip p, integrate back with the same step sizes;
  // the largest deviation from the start over all chains and sites, and the seconds the check took.
  double max_dx = 0, max_dp = 0, check_seconds = 0;
};

class HmcChains {
 public:
  // Chains first_chain .. first_chain + n_chains - 1 (global indices), cold start, fields of `options`
  // (float64 is what the tests and the baseline use).
  HmcChains(const Theory& theory, const HmcParams& params, std::uint64_t seed, std::int64_t first_chain,
            std::int64_t n_chains, const at::TensorOptions& options);

  // One trajectory with global index t for every chain: momentum refresh, MD, Metropolis accept/reject.
  TrajectoryResult trajectory(std::int64_t t, bool check_reversibility = false);
  // Runs trajectories 0 .. n - 1 and discards them. During the first 3/4 (in blocks of a few trajectories)
  // n_md is rescaled toward params.target_acceptance using <dH> ~ n_md^-4 and the relation above (damped);
  // then the cheapest n_md seen whose measured acceptance reached the target is frozen. Returns it.
  int thermalize(std::int64_t n);

  const at::Tensor& field() const { return x_; }
  void set_field(const at::Tensor& x) { x_ = x; }
  int n_md() const { return n_md_; }
  void set_n_md(int n_md) { n_md_ = n_md; }
  std::int64_t n_chains() const { return n_chains_; }

 private:
  const Theory& theory_;
  HmcParams params_;
  Integrator integrator_;
  std::uint64_t seed_;
  std::int64_t first_chain_, n_chains_;
  at::TensorOptions options_;
  int n_md_;
  at::Tensor x_;
};

class FlowModelImpl;  // flows/flow.hpp

// Mixed chains: one independence-Metropolis step for each of chains first .. first + n - 1 (global indices) at
// trajectory t, with a proposal of the flow. Chain c's proposal is drawn from the stream (seed, "mixed_propose",
// c, t) and its uniform from (seed, "mixed_accept", c, t), as HMC's momenta are: the chain does not depend on
// which chains share its batch or rank. The step accepts y with probability min(1, w(y) / w(x)),
// w = exp(-S) / q, which with HMC's kernel composes a chain that leaves exp(-S) invariant
// (docs/physics.md "Mixed chains"). log q(x) of the current field x comes from the flow's inverse, in the flow's
// dtype. Returns [n] 1/0 (accepted/rejected); x is replaced where accepted.
std::vector<std::uint8_t> flow_step(FlowModelImpl& model, const Theory& theory, at::Tensor& x, std::uint64_t seed,
                                    std::int64_t first, std::int64_t n, std::int64_t t);

}  // namespace latflow
