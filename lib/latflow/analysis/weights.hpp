// SPDX-License-Identifier: MIT
// Statistics of importance weights log w = -S - log q (docs/physics.md "Importance weights"), all computed in
// log space.
#pragma once
#include <cstdint>
#include <vector>

namespace latflow::analysis {

// ln sum_i exp(x_i), shifted by max x: -inf entries are zero terms (all -inf gives -inf). Throws
// latflow::Error on empty input, NumericalError on NaN.
double logsumexp(const std::vector<double>& x);

// Kish effective sample size fraction ESS/N = (sum w)^2 / (N sum w^2), in [1/N, 1]. Biased high for small N.
double kish_ess_fraction(const std::vector<double>& log_w);

// Absolute free energy F = -ln Z = -ln E_q[w] from i.i.d. proposals, with its delta-method standard error
// sqrt(Var(w)/N)/E[w] (exact for the estimator's leading order, computed stably after shifting by max log w).
// Needs N >= 2. In all weight functions log w = -inf is a zero weight; NaN or +inf, or all weights zero,
// throw.
struct FreeEnergy {
  double F = 0;
  double error = 0;
};
FreeEnergy free_energy(const std::vector<double>& log_w);

// Self-normalised importance sampling (NIS) estimate sum_i w_i O_i / sum_i w_i of <O>_p from i.i.d.
// proposals, with the delta-method error sqrt(sum_i w_i^2 (O_i - est)^2) / sum_i w_i. Needs N >= 2 and equal
// sizes.
struct Estimate {
  double value = 0;
  double error = 0;
};
Estimate reweighted_mean(const std::vector<double>& obs, const std::vector<double>& log_w);

// Acceptance-based autocorrelation of an independence Metropolis chain (Albergo et al. 2019, eq. 11):
// rho_acc(t) = fraction of chain positions i (with i + t inside the chain) followed by t rejections in a row,
// tau_acc = 1/2 + sum_{t >= 1} rho_acc(t). `accepted[i]` is nonzero when step i accepted its proposal; the
// sum runs up to the longest run of rejections, beyond which rho_acc(t) = 0. O(n); throws on an empty
// sequence.
struct AcceptanceTau {
  double acceptance = 0;
  double tau_acc = 0.5;
  std::vector<double> rho_acc;  // rho_acc[0] = 1
};
AcceptanceTau acceptance_tau(const std::vector<std::uint8_t>& accepted);

// Expected IMH acceptance estimated from i.i.d. proposals: E_{x~p, x'~q}[min(1, w'/w)]
//   = sum_{i != j} min(w_i, w_j) / ((N - 1) sum_i w_i),
// consistent for the stationary chain (the current state is p-distributed, i.e. a q draw reweighted by w).
// O(N log N) by sorting; used to monitor training without running a chain.
double imh_acceptance_estimate(const std::vector<double>& log_w);

// If log w ~ Normal(mu, s^2) under q: ESS/N = exp(-s^2), IMH acceptance = erfc(s / 2).
double lognormal_ess_fraction(double s2);
double lognormal_acceptance(double s2);

}  // namespace latflow::analysis
