// SPDX-License-Identifier: MIT
// Gamma method of U. Wolff, "Monte Carlo errors with less errors", CPC 156 (2004) 143, for primary
// observables and for derived quantities f(<A_1>, ..., <A_k>) (by projecting the fluctuations on grad f),
// over one or more replicas (independent Markov chains of the same physics, possibly of different lengths).
#pragma once
#include <functional>
#include <vector>

namespace latflow::analysis {

struct GammaOptions {
  double S = 1.5;               // Wolff's S_tau for the automatic window (pyerrors uses 2.0)
  long max_window = -1;         // largest lag; -1: half the shortest replica (capped below the longest)
  bool bias_correction = true;  // correct the estimate of C_F by (1 + (2W+1)/N)
};

struct GammaResult {
  double mean = 0;   // estimate (for a derived quantity: f of the means)
  double error = 0;  // standard error of the mean, including autocorrelation
  // Error of `error`: error * sqrt((W + 1/2) / N), i.e. half the relative error of tau_int (Wolff eq. 42).
  double error_of_error = 0;
  double tau_int = 0.5;      // integrated autocorrelation time at the chosen window, in units of one step
  double tau_int_error = 0;  // tau_int * sqrt(2 (2W + 1) / N)
  // Chosen summation window W. 0 for constant data, and as a conservative fallback (the naive error) when
  // C_F(W) <= 0, which only strongly anticorrelated data give.
  long window = 0;
  // false: no window met Wolff's criterion before max_window (W = max_window; the error is a lower bound).
  bool window_found = true;
  long n = 0;  // total number of measurements over all replicas
  // Gamma(0): the variance of one measurement (of the projected series for a derived quantity), including the
  // bias correction + C_F/N when that is enabled.
  double variance = 0;
  // Normalised autocorrelation rho(t) and tau_int(W) = 1/2 + sum_{t=1}^{W} rho(t) (from the bias-corrected
  // Gamma when enabled) for t, W = 0..min(max_window, 2 W + 20), or up to max_window when no window was
  // found, so that plots show the plateau. Constant data: rho = {1}, tau_int_of_w = {0.5}.
  std::vector<double> rho;
  std::vector<double> tau_int_of_w;
};

// One primary observable. `replicas[r][i]` is measurement i of replica r; replica lengths may differ.
// Throws latflow::Error for no data or an empty replica, NumericalError for a non-finite value. Cost O(N W),
// or O(N log N) by FFT once the window search passes 128 lags.
GammaResult gamma_method(const std::vector<std::vector<double>>& replicas, const GammaOptions& opt = {});
GammaResult gamma_method(const std::vector<double>& series, const GammaOptions& opt = {});

// A derived quantity f(a) of the means a_alpha = <A_alpha>. `data[alpha][r][i]` holds observable alpha,
// replica r, measurement i (all observables share the replica layout). The gradient of f is taken numerically
// (central differences with steps h_alpha = sqrt(Gamma_alpha(0) / N), as in Wolff's paper), the replica
// series are projected on it, and the projection is analysed like a primary observable. Throws latflow::Error
// when the observables' replica layouts differ.
using DerivedFn = std::function<double(const std::vector<double>&)>;
GammaResult gamma_method_derived(const std::vector<std::vector<std::vector<double>>>& data, const DerivedFn& f,
                                 const GammaOptions& opt = {});

}  // namespace latflow::analysis
