// SPDX-License-Identifier: MIT
// Statistics of importance weights log w = -S - log q (PHYSICS.md section 5), all computed in log space.
#pragma once
#include <cstdint>
#include <vector>

namespace latflow::analysis {

double logsumexp(const std::vector<double>& x);

// Kish effective sample size fraction ESS/N = (sum w)^2 / (N sum w^2), in [1/N, 1]. Biased high for small N.
double kish_ess_fraction(const std::vector<double>& log_w);

// Absolute free energy F = -ln Z = -ln E_q[w] from i.i.d. proposals, with its delta-method standard error
// sqrt(Var(w)/N)/E[w] (exact for the estimator's leading order, computed stably after shifting by max log w).
struct FreeEnergy {
  double F = 0;
  double error = 0;
};
FreeEnergy free_energy(const std::vector<double>& log_w);

// Self-normalised importance sampling (NIS) estimate sum_i w_i O_i / sum_i w_i of <O>_p from i.i.d. proposals,
// with the delta-method error sqrt(sum_i w_i^2 (O_i - est)^2) / sum_i w_i.
struct Estimate {
  double value = 0;
  double error = 0;
};
Estimate reweighted_mean(const std::vector<double>& obs, const std::vector<double>& log_w);

// Acceptance-based autocorrelation of an independence Metropolis chain (Albergo et al. 2019, eq. 11):
// rho_acc(t) = fraction of chain positions i (with i + t inside the chain) followed by t rejections in a row,
// tau_acc = 1/2 + sum_{t >= 1} rho_acc(t). `accepted[i]` is 1 when step i accepted its proposal.
struct AcceptanceTau {
  double acceptance = 0;
  double tau_acc = 0.5;
  std::vector<double> rho_acc;  // rho_acc[0] = 1
};
AcceptanceTau acceptance_tau(const std::vector<std::uint8_t>& accepted);

// If log w ~ Normal(mu, s^2) under q: ESS/N = exp(-s^2), IMH acceptance = erfc(s / 2).
double lognormal_ess_fraction(double s2);
double lognormal_acceptance(double s2);

}  // namespace latflow::analysis
