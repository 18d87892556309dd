// SPDX-License-Identifier: MIT
// `latflow compare`: a flow ensemble (IMH, or a mixed chain of HMC and flow steps), or a heat-bath run, against an
// HMC ensemble of the same physics. Per observable: the two estimates, their tau_int (in proposals or trajectories),
// effective samples N_eff = N / (2 tau_int) per second of generation, and the cost per effective sample, with the
// flow's training time counted separately and amortised over this ensemble; plus the break-even number of effective
// samples beyond which the flow, training included, is cheaper. Torch-free.
#pragma once
#include <string>
#include <vector>

#include "latflow/analysis/report.hpp"

namespace latflow::analysis {

struct CompareSide {
  double value = 0, error = 0, tau_int = 0, tau_error = 0;
  double n_eff = 0;               // N / (2 tau_int)
  double eff_per_second = 0;      // n_eff / generation seconds
  double cost = 0;                // generation seconds per effective sample
  double cost_with_training = 0;  // flow: (training + generation) seconds per effective sample; HMC: = cost
};

struct CompareRow {
  std::string name;
  CompareSide flow, hmc;
  double deviation_sigma = 0;  // (flow - hmc) / combined error
  double cost_ratio = 0;       // HMC cost / flow cost with training (> 1: the flow is cheaper already)
  double break_even = 0;       // effective samples after which the flow with training is cheaper; inf if never
};

struct Comparison {
  Report flow, hmc;
  std::vector<CompareRow> rows;
};

// Either argument order; throws ConfigError if the physics differs and IoError for files that are not one flow
// (IMH or mixed) and one HMC ensemble.
Comparison compare_ensembles(const std::string& a, const std::string& b, double gamma_S = 1.5);
std::string format_comparison(const Comparison& c);
std::string comparison_json(const Comparison& c);

}  // namespace latflow::analysis
