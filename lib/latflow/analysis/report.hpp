// SPDX-License-Identifier: MIT
// `latflow analyze`: reads an ensemble file and computes acceptance, ESS, autocorrelations, observables with
// errors (Gamma method on the IMH chain, and the reweighted NIS estimate from all proposals), derived quantities
// and the free energy, with exact or reference values beside them. HMC ensembles (kind "hmc") get the same
// observables and derived quantities by the Gamma method over their chains as replicas, with the HMC figures
// (acceptance, <exp(-dH)>, n_md, cost) in place of NIS and the free energy. Torch-free.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "latflow/core/choices.hpp"

namespace latflow::analysis {

struct ObservableRow {
  std::string name;
  double value = 0, error = 0;        // Markov chain(s), Gamma method
  double tau_int = 0, tau_error = 0;  // in IMH steps or HMC trajectories
  bool window_found = true;
  std::int64_t window = 0;                // the Gamma method's summation window W
  std::vector<double> rho, tau_int_of_w;  // normalised autocorrelation and tau_int(W), for plots
  double nis = 0, nis_error = 0;          // self-normalised importance sampling over all proposals (IMH; HMC: nan)
  bool has_ref = false;
  double ref = 0, ref_error = 0;  // exact (ref_error = 0) or reference value
  std::string ref_kind;           // "exact" | "reference"
};

struct Report {
  std::string path, kind;
  TheoryId theory = TheoryId::phi4;
  std::vector<std::int64_t> extents;
  double m2 = 0, lam = 0;  // phi4 (no-1/2 convention)
  std::string input_convention;
  double beta = 0;  // u1, sun
  int colors = 0;   // sun: N
  // The couplings as one line, e.g. "m2 = -4, lam = 8 (no-1/2 convention; input nohalf)" or "beta = 2"; two
  // ensembles of the same theory and extents are the same physics when these are equal.
  std::string physics() const;
  std::int64_t proposals = 0, configs_stored = 0;
  double acceptance = 0, tau_acc = 0, ess_fraction = 0;
  // The delta-method errors of NIS estimates and of F collapse when a few weights dominate (they can even
  // shrink as the estimate gets worse); below kMinEffectiveSamples = N * ESS/N they are flagged as unreliable.
  static constexpr double kMinEffectiveSamples = 100;
  bool nis_reliable() const { return ess_fraction * static_cast<double>(proposals) >= kMinEffectiveSamples; }
  // Likewise a chain with fewer than kMinEffectiveSamples independent steps by its acceptance autocorrelation,
  // N / (2 tau_acc), has Gamma-method errors that cannot be trusted (the window sees only a few moves).
  bool chain_reliable() const { return static_cast<double>(proposals) / (2 * tau_acc) >= kMinEffectiveSamples; }
  // Sector changes: U(1) topological charge Q (rounded) or, for phi4, the sign of M, compared between consecutive
  // steps of each chain (IMH: along the chain; HMC: along each chain's trajectories), summed over the chains. A
  // chain that moves between sectors fewer than kMinSectorChanges times samples their relative weights from a
  // handful of visits, and the Gamma-method errors of sector-odd or sector-sensitive observables (Q, Q^2; M) are
  // then not to be trusted however many steps it has: they are flagged.
  std::string sector_observable;         // "Q" (u1) | "mag" (phi4) | "" (no sectors: SU(N) in 2D)
  std::vector<std::string> sector_rows;  // the rows flagged when the sectors are not sampled
  std::int64_t sector_changes = 0, sector_changes_min_chain = 0;
  static constexpr std::int64_t kMinSectorChanges = 100;
  bool sectors_reliable() const { return sector_observable.empty() || sector_changes >= kMinSectorChanges; }
  double free_energy = 0, free_energy_error = 0;
  bool has_free_energy_exact = false;
  double free_energy_exact = 0;
  std::int64_t train_steps = 0;
  double train_seconds = 0, sampling_seconds = 0;
  std::string weights_hash;
  // HMC ensembles: acceptance above; sampling_seconds is the whole run (thermalisation included).
  std::string integrator;
  UpdateAlgorithm algorithm = UpdateAlgorithm::hmc;  // heatbath: each "trajectory" is a sweep
  std::int64_t overrelax = 0;
  std::int64_t chains = 0, trajectories = 0, n_md = 0;
  double trajectory_length = 0, exp_mdH = 0, exp_mdH_error = 0, seconds_per_trajectory_per_site = 0;
  // Mixed chains (kind "mixed": HMC with a flow IMH step after every flow_every trajectories): the HMC figures
  // above, the flow steps' figures here, the training in train_steps / train_seconds / weights_hash.
  std::int64_t flow_every = 0, flow_proposals = 0;
  double flow_acceptance = 0, flow_seconds = 0;
  // Non-equilibrium proposals (an imh file with /ne): the protocol and the mean and spread of its work W.
  std::int64_t ne_steps = 0, ne_n_md = 0;
  std::int64_t ne_blocks = 0, ne_block_layers = 0;  // a stochastic normalizing flow's flow blocks
  std::string ne_parameter;
  double ne_start = 0, work_mean = 0, work_std = 0;
  bool chains_kind() const { return kind == "hmc" || kind == "mixed"; }  // [T, C] chains, not an IMH trail
  bool has_reversibility = false;
  double reversibility_max_dx = 0, reversibility_max_dp = 0;
  double gamma_S = 1.5;
  std::vector<ObservableRow> rows;
  const ObservableRow* row(const std::string& name) const;
};

Report analyze_ensemble(const std::string& path, double gamma_S = 1.5);
std::string format_report(const Report& r);  // the human-readable table
std::string report_json(const Report& r);

}  // namespace latflow::analysis
