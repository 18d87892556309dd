// SPDX-License-Identifier: MIT
// Gamma method of U. Wolff, "Monte Carlo errors with less errors", CPC 156 (2004) 143, for primary observables
// and for derived quantities f(<A_1>, ..., <A_k>) (by projecting the fluctuations on grad f), over one or more
// replicas (independent Markov chains of the same physics, possibly of different lengths).
#pragma once
#include <functional>
#include <vector>

namespace latflow::analysis {

struct GammaOptions {
  double S = 1.5;              // Wolff's S_tau for the automatic window (pyerrors uses 2.0)
  long max_window = -1;        // largest lag considered; -1: min replica length / 2
  bool bias_correction = true; // correct the estimate of C_F by (1 + (2W+1)/N)
};

struct GammaResult {
  double mean = 0;            // estimate (for a derived quantity: f of the means)
  double error = 0;           // standard error of the mean, including autocorrelation
  double error_of_error = 0;  // error of `error` (Wolff eq. 42)
  double tau_int = 0.5;       // integrated autocorrelation time at the chosen window, in units of one step
  double tau_int_error = 0;   // tau_int * sqrt(2 (2W + 1) / N)
  long window = 0;            // chosen summation window W
  bool window_found = true;   // false: no window met Wolff's criterion before max_window (error is a lower bound)
  long n = 0;                 // total number of measurements over all replicas
  double variance = 0;        // Gamma(0): the variance of one measurement (of the projected series for derived)
  std::vector<double> rho;           // normalised autocorrelation rho(t), t = 0..max lag computed
  std::vector<double> tau_int_of_w;  // tau_int(W) for W = 0..max lag computed (tau_int_of_w[0] = 0.5)
};

// One primary observable. `replicas[r][i]` is measurement i of replica r; replica lengths may differ.
GammaResult gamma_method(const std::vector<std::vector<double>>& replicas, const GammaOptions& opt = {});
GammaResult gamma_method(const std::vector<double>& series, const GammaOptions& opt = {});

// A derived quantity f(a) of the means a_alpha = <A_alpha>. `data[alpha][r][i]` holds observable alpha, replica
// r, measurement i (all observables share the replica layout). The gradient of f is taken numerically (central
// differences with steps scaled by each observable's standard deviation, as in Wolff's paper).
using DerivedFn = std::function<double(const std::vector<double>&)>;
GammaResult gamma_method_derived(const std::vector<std::vector<std::vector<double>>>& data, const DerivedFn& f,
                                 const GammaOptions& opt = {});

}  // namespace latflow::analysis
