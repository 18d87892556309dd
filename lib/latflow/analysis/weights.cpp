// SPDX-License-Identifier: MIT
// Importance-weight statistics (docs/physics.md "Importance weights"). Weights are handled as log w and
// exponentiated only after shifting by max log w: log w of a lattice model is O(volume) and exp would
// overflow or underflow.
#include "latflow/analysis/weights.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "latflow/core/error.hpp"

namespace latflow::analysis {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Throws unless log_w has at least `min_size` entries, none NaN or +inf, and at least one is finite.
// -inf is allowed: it is a zero weight (e.g. a configuration the target excludes).
void check_log_weights(const std::vector<double>& log_w, std::size_t min_size, const char* who) {
  const std::string w = std::string(who) + ": ";
  if (log_w.size() < min_size) {
    throw Error(w + "needs at least " + std::to_string(min_size) + " log-weights, got " + std::to_string(log_w.size()));
  }
  bool any_finite = false;
  for (std::size_t i = 0; i < log_w.size(); ++i) {
    if (std::isnan(log_w[i]) || log_w[i] == kInf) {
      throw NumericalError(w + "log-weight " + std::to_string(i) + " is " + std::to_string(log_w[i]));
    }
    any_finite = any_finite || std::isfinite(log_w[i]);
  }
  if (!any_finite) throw NumericalError(w + "all weights are zero (every log-weight is -inf)");
}

// w_i / max_j w_j, in [0, 1].
std::vector<double> relative_weights(const std::vector<double>& log_w) {
  const double m = *std::max_element(log_w.begin(), log_w.end());
  std::vector<double> u(log_w.size());
  for (std::size_t i = 0; i < log_w.size(); ++i) u[i] = std::exp(log_w[i] - m);
  return u;
}

}  // namespace

double logsumexp(const std::vector<double>& x) {
  if (x.empty()) throw Error("logsumexp: empty input");
  double m = -kInf;
  for (double v : x) {
    if (std::isnan(v)) throw NumericalError("logsumexp: NaN in input");
    m = std::max(m, v);
  }
  // All -inf: the sum of zeros; a +inf entry dominates. Either way x - m would be NaN.
  if (std::isinf(m)) return m;
  double s = 0;
  for (double v : x) s += std::exp(v - m);  // exp(-inf) = 0; the largest term is 1, so s in [1, n]
  return m + std::log(s);
}

double kish_ess_fraction(const std::vector<double>& log_w) {
  check_log_weights(log_w, 1, "kish_ess_fraction");
  std::vector<double> twice(log_w.size());
  for (std::size_t i = 0; i < log_w.size(); ++i) twice[i] = 2 * log_w[i];
  // (sum w)^2 / (N sum w^2) = exp(2 lse(lw) - lse(2 lw)) / N.
  const double ess = std::exp(2 * logsumexp(log_w) - logsumexp(twice));
  return ess / static_cast<double>(log_w.size());
}

FreeEnergy free_energy(const std::vector<double>& log_w) {
  check_log_weights(log_w, 2, "free_energy");
  const double n = static_cast<double>(log_w.size());
  FreeEnergy out;
  out.F = -(logsumexp(log_w) - std::log(n));
  // Delta method: delta ln(mean w) = sqrt(Var(w) / N) / E[w]; the common factor exp(max lw) cancels.
  const std::vector<double> u = relative_weights(log_w);
  double mean = 0;
  for (double v : u) mean += v;
  mean /= n;
  double var = 0;
  for (double v : u) var += (v - mean) * (v - mean);
  var /= n - 1;
  out.error = std::sqrt(var / n) / mean;
  return out;
}

Estimate reweighted_mean(const std::vector<double>& obs, const std::vector<double>& log_w) {
  if (obs.size() != log_w.size()) {
    throw Error("reweighted_mean: " + std::to_string(obs.size()) + " observables but " + std::to_string(log_w.size()) +
                " log-weights");
  }
  check_log_weights(log_w, 2, "reweighted_mean");
  for (std::size_t i = 0; i < obs.size(); ++i) {
    if (!std::isfinite(obs[i])) {
      throw NumericalError("reweighted_mean: observable " + std::to_string(i) + " is not finite");
    }
  }
  const std::vector<double> u = relative_weights(log_w);
  double su = 0;
  double suo = 0;
  for (std::size_t i = 0; i < u.size(); ++i) {
    su += u[i];
    suo += u[i] * obs[i];
  }
  Estimate out;
  out.value = suo / su;
  // Delta method for the ratio sum(w O) / sum(w): its linearisation is sum_i w_i (O_i - value) / sum w.
  double s2 = 0;
  for (std::size_t i = 0; i < u.size(); ++i) {
    const double d = u[i] * (obs[i] - out.value);
    s2 += d * d;
  }
  out.error = std::sqrt(s2) / su;
  return out;
}

AcceptanceTau acceptance_tau(const std::vector<std::uint8_t>& accepted) {
  if (accepted.empty()) throw Error("acceptance_tau: empty acceptance sequence");
  const std::size_t n = accepted.size();
  AcceptanceTau out;
  std::size_t n_acc = 0;
  for (std::uint8_t a : accepted) n_acc += a != 0;
  out.acceptance = static_cast<double>(n_acc) / static_cast<double>(n);

  // Position i counts for lag t when steps i+1..i+t are all rejected, i.e. when the run of rejections
  // starting at step j = i+1 is at least t long (such a run lies inside the chain, so i + t < n holds
  // automatically). A histogram of run lengths r_j, j = 1..n-1, gives every lag in O(n):
  //   rho_acc(t) = #{j >= 1 : r_j >= t} / (n - t).
  std::vector<std::size_t> hist(1, 0);  // hist[r] = #{j >= 1 : r_j = r}
  std::size_t run = 0;                  // r_j, computed from the end of the chain backwards
  for (std::size_t j = n - 1; j >= 1; --j) {
    run = accepted[j] ? 0 : run + 1;
    if (run >= hist.size()) hist.resize(run + 1, 0);
    ++hist[run];
  }
  const std::size_t t_max = hist.size() - 1;             // the longest run; rho_acc(t) = 0 beyond it
  std::vector<std::size_t> runs_at_least(t_max + 2, 0);  // #{j >= 1 : r_j >= t}
  for (std::size_t t = t_max + 1; t-- > 0;) runs_at_least[t] = runs_at_least[t + 1] + hist[t];

  out.rho_acc.assign(t_max + 1, 0.0);
  out.rho_acc[0] = 1;
  out.tau_acc = 0.5;
  for (std::size_t t = 1; t <= t_max; ++t) {
    out.rho_acc[t] = static_cast<double>(runs_at_least[t]) / static_cast<double>(n - t);
    out.tau_acc += out.rho_acc[t];
  }
  return out;
}

double lognormal_ess_fraction(double s2) {
  if (!(s2 >= 0) || !std::isfinite(s2)) {
    throw Error("lognormal_ess_fraction: variance must be finite and >= 0, got " + std::to_string(s2));
  }
  // E[w]^2 / E[w^2] = exp(2 mu + s^2) / exp(2 mu + 2 s^2).
  return std::exp(-s2);
}

double lognormal_acceptance(double s2) {
  if (!(s2 >= 0) || !std::isfinite(s2)) {
    throw Error("lognormal_acceptance: variance must be finite and >= 0, got " + std::to_string(s2));
  }
  // At equilibrium the current log w ~ N(mu + s^2, s^2) (tilted by w), the proposal's ~ N(mu, s^2), so
  // D = lw' - lw ~ N(-s^2, 2 s^2) and E[min(1, e^D)] = 2 Phi(-s / sqrt(2)) = erfc(s / 2).
  return std::erfc(std::sqrt(s2) / 2);
}

double imh_acceptance_estimate(const std::vector<double>& log_w) {
  const std::size_t n = log_w.size();
  if (n < 2) throw Error("imh_acceptance_estimate: needs at least two log-weights");
  std::vector<double> lw(log_w);
  std::sort(lw.begin(), lw.end());
  const double mx = lw.back();
  // In ascending order w_(k) is the smaller of the pair for the n - 1 - k partners above it, twice (i,j),
  // (j,i).
  double pairs = 0, total = 0;
  for (std::size_t k = 0; k < n; ++k) {
    const double w = std::exp(lw[k] - mx);
    pairs += 2.0 * static_cast<double>(n - 1 - k) * w;
    total += w;
  }
  return pairs / (static_cast<double>(n - 1) * total);
}

}  // namespace latflow::analysis
