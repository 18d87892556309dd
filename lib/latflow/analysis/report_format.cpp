// SPDX-License-Identifier: MIT
// The analysis report as text (format_report) and as JSON (report_json).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "latflow/analysis/report.hpp"
#include "latflow/core/json.hpp"

namespace latflow::analysis {
namespace {

std::string fmt(double v, double e) {
  // value(error) with two significant digits of the error.
  if (!std::isfinite(v)) return "nan";
  if (!(e > 0) || !std::isfinite(e)) {
    char b[64];
    std::snprintf(b, sizeof b, "%.6g", v);
    return b;
  }
  int digits = std::max(0, 1 - static_cast<int>(std::floor(std::log10(e))));
  digits = std::min(digits, 12);
  const double scaled = std::round(e * std::pow(10.0, digits));
  char b[96];
  std::snprintf(b, sizeof b, "%.*f(%.0f)", digits, v, scaled);
  return b;
}

// The lines about how a Markov-chain ensemble (HMC, heat bath, mixed) was made.
void format_chains_header(std::ostringstream& os, const Report& r) {
  char b[512];
  if (r.algorithm == UpdateAlgorithm::heatbath) {
    std::snprintf(b, sizeof b,
                  "%lld chains x %lld sweeps (heat bath + %lld overrelaxation), stored configs %lld; %.1f s, "
                  "%.3g s per sweep per site",
                  static_cast<long long>(r.chains), static_cast<long long>(r.trajectories),
                  static_cast<long long>(r.overrelax), static_cast<long long>(r.configs_stored), r.sampling_seconds,
                  r.seconds_per_trajectory_per_site);
    os << b;
  } else {
    std::snprintf(b, sizeof b,
                  "%lld chains x %lld trajectories (%s, n_md %lld, tau %g), stored configs %lld; %.1f s, "
                  "%.3g s per trajectory per site\n"
                  "HMC acceptance %.4f   <exp(-dH)> %s",
                  static_cast<long long>(r.chains), static_cast<long long>(r.trajectories), r.integrator.c_str(),
                  static_cast<long long>(r.n_md), r.trajectory_length, static_cast<long long>(r.configs_stored),
                  r.sampling_seconds, r.seconds_per_trajectory_per_site, r.acceptance,
                  fmt(r.exp_mdH, r.exp_mdH_error).c_str());
    os << b;
    if (r.has_reversibility) {
      std::snprintf(b, sizeof b, "   reversibility max |dx| %.2g, |dp| %.2g", r.reversibility_max_dx,
                    r.reversibility_max_dp);
      os << b;
    }
    if (r.kind == "mixed") {
      std::snprintf(b, sizeof b,
                    "\nflow steps after every %lld trajectories: %lld proposals, acceptance %.4f, %.1f s (%.0f%% of "
                    "the run); training %lld steps, %.0f s (model %s)",
                    static_cast<long long>(r.flow_every), static_cast<long long>(r.flow_proposals), r.flow_acceptance,
                    r.flow_seconds, 100 * r.flow_seconds / r.sampling_seconds, static_cast<long long>(r.train_steps),
                    r.train_seconds, r.weights_hash.c_str());
      os << b;
    }
  }
}

// The lines about how an IMH ensemble was made, and its free energy.
void format_imh_header(std::ostringstream& os, const Report& r, const std::string& flag) {
  char b[512];
  std::snprintf(b, sizeof b,
                "proposals %lld, stored configs %lld; training %lld steps, %.0f s; sampling %.1f s\n"
                "IMH acceptance %.4f   tau_acc %.3f   Kish ESS/N %.4f (N = %lld)\n",
                static_cast<long long>(r.proposals), static_cast<long long>(r.configs_stored),
                static_cast<long long>(r.train_steps), r.train_seconds, r.sampling_seconds, r.acceptance, r.tau_acc,
                r.ess_fraction, static_cast<long long>(r.proposals));
  os << b;
  if (r.ne_steps > 0) {
    const std::string update = r.algorithm == UpdateAlgorithm::heatbath
                                   ? "one heat-bath sweep + " + std::to_string(r.overrelax) + " overrelaxation"
                                   : "one HMC trajectory (n_md " + std::to_string(r.ne_n_md) + ")";
    const std::string blocks = r.ne_blocks > 0 ? ", " + std::to_string(r.ne_blocks) + " flow blocks of " +
                                                     std::to_string(r.ne_block_layers) + " layers"
                                               : "";
    std::snprintf(b, sizeof b,
                  "non-equilibrium: %lld steps of %s from %g to the target, %s each%s; work W %.4g, spread %.4g\n",
                  static_cast<long long>(r.ne_steps), r.ne_parameter.c_str(), r.ne_start, update.c_str(),
                  blocks.c_str(), r.work_mean, r.work_std);
    os << b;
  }
  os << "free energy F = -ln Z   " << fmt(r.free_energy, r.free_energy_error) << flag;
  if (r.has_free_energy_exact) {
    // An exact sampler (flow.prior = exact) gives weights equal up to float64 rounding (a zero or ~1e-13
    // error): below a relative 1e-10 the difference is rounding, shown as such rather than in sigmas.
    const double rounding = 1e-10 * std::max(1.0, std::abs(r.free_energy_exact));
    if (r.free_energy_error > rounding)
      std::snprintf(b, sizeof b, "   exact %.6f   (%.1f sigma)", r.free_energy_exact,
                    (r.free_energy - r.free_energy_exact) / r.free_energy_error);
    else
      std::snprintf(b, sizeof b, "   exact %.6f   (difference %.1e; the weights are equal to rounding)",
                    r.free_energy_exact, r.free_energy - r.free_energy_exact);
    os << b;
  }
}

// The observable table.
void format_rows(std::ostringstream& os, const Report& r, const std::string& flag) {
  char b[512];
  const bool hmc = r.chains_kind();
  std::snprintf(b, sizeof b, "%-15s %-20s %-14s %-20s %-24s %s\n", "observable", hmc ? "HMC chains" : "IMH chain",
                "tau_int", hmc ? "" : "NIS (reweighted)", "exact/reference", "dev");
  os << b << std::string(104, '-') << "\n";
  for (const auto& row : r.rows) {
    std::string ref = "-", dev = "";
    if (row.has_ref) {
      ref = (row.ref_error > 0 ? fmt(row.ref, row.ref_error) : fmt(row.ref, 0)) + " " + row.ref_kind;
      const double s = std::sqrt(row.error * row.error + row.ref_error * row.ref_error);
      if (s > 0) {
        std::snprintf(b, sizeof b, "%+.1f sigma", (row.value - row.ref) / s);
        dev = b;
      }
    }
    std::string tau = fmt(row.tau_int, row.tau_error) + (row.window_found ? "" : "*");
    const bool frozen =
        !r.sectors_reliable() && std::find(r.sector_rows.begin(), r.sector_rows.end(), row.name) != r.sector_rows.end();
    std::snprintf(b, sizeof b, "%-15s %-20s %-14s %-20s %-24s %s\n", row.name.c_str(),
                  (fmt(row.value, row.error) + (frozen ? "!" : "")).c_str(), tau.c_str(),
                  hmc ? "" : (fmt(row.nis, row.nis_error) + flag).c_str(), ref.c_str(), dev.c_str());
    os << b;
  }
}

// How the errors were made, and the warnings about what is not reliable.
void format_notes(std::ostringstream& os, const Report& r) {
  char b[512];
  const bool hmc = r.chains_kind();
  if (hmc)
    std::snprintf(b, sizeof b,
                  "\nErrors: Gamma method (Wolff 2004, S = %.2f) over the %lld chains as replicas; tau_int in "
                  "trajectories (* = no window met the criterion).\n",
                  r.gamma_S, static_cast<long long>(r.chains));
  else
    std::snprintf(b, sizeof b,
                  "\nErrors: Gamma method (Wolff 2004, S = %.2f) on the IMH chain; tau_int in IMH steps (* = no "
                  "window met the criterion).\n",
                  r.gamma_S);
  os << b;
  if (!hmc && !r.chain_reliable()) {
    std::snprintf(b, sizeof b,
                  "! the chain has only %.0f independent steps by N / (2 tau_acc): its errors and tau_int are not "
                  "reliable; sample more proposals or train the flow further.\n",
                  static_cast<double>(r.proposals) / (2 * r.tau_acc));
    os << b;
  }
  if (!r.sector_observable.empty()) {
    const std::string what = r.theory == TheoryId::u1 ? "topological sector (Q)" : "sign of M";
    std::snprintf(b, sizeof b, "%s%s changes: %lld along the chain%s (fewest in one chain: %lld)\n",
                  r.sectors_reliable() ? "" : "! ", what.c_str(), static_cast<long long>(r.sector_changes),
                  hmc ? "s" : "", static_cast<long long>(r.sector_changes_min_chain));
    os << b;
    if (!r.sectors_reliable()) {
      std::string rows;
      for (const auto& n : r.sector_rows) rows += (rows.empty() ? "" : ", ") + n;
      std::snprintf(b, sizeof b,
                    "! fewer than %lld sector changes: the chain%s barely move%s between sectors, so the errors of "
                    "%s (and of anything coupled to the sector) are not reliable.\n",
                    static_cast<long long>(Report::kMinSectorChanges), hmc ? "s" : "", hmc ? "" : "s", rows.c_str());
      os << b;
    }
  }
  if (!hmc && !r.nis_reliable()) {
    std::snprintf(b, sizeof b,
                  "! only %.0f effective samples (N x Kish ESS/N < %.0f): the NIS and free-energy errors are not "
                  "reliable.\n",
                  r.ess_fraction * static_cast<double>(r.proposals), Report::kMinEffectiveSamples);
    os << b;
  }
}

}  // namespace

std::string format_report(const Report& r) {
  std::ostringstream os;
  char b[512];
  std::string ext;
  for (std::size_t i = 0; i < r.extents.size(); ++i) ext += (i ? "x" : "") + std::to_string(r.extents[i]);
  std::snprintf(b, sizeof b, "%s: %s ensemble, %s on %s, %s\n", r.path.c_str(), r.kind.c_str(),
                choice_name(r.theory).c_str(), ext.c_str(), r.physics().c_str());
  os << b;
  const bool hmc = r.chains_kind();
  const std::string flag = hmc || r.nis_reliable() ? "" : "!";
  if (hmc)
    format_chains_header(os, r);
  else
    format_imh_header(os, r, flag);
  os << "\n\n";
  format_rows(os, r, flag);
  format_notes(os, r);
  return os.str();
}

std::string report_json(const Report& r) {
  std::ostringstream os;
  os << "{\n  \"file\": " << json::string(r.path) << ",\n  \"kind\": " << json::string(r.kind)
     << ",\n  \"theory\": " << json::string(choice_name(r.theory)) << ",\n  \"extents\": [";
  for (std::size_t i = 0; i < r.extents.size(); ++i) os << (i ? ", " : "") << r.extents[i];
  os << "]";
  if (r.theory == TheoryId::u1)
    os << ",\n  \"beta\": " << json::number(r.beta);
  else if (r.theory == TheoryId::sun)
    os << ",\n  \"n\": " << r.colors << ",\n  \"beta\": " << json::number(r.beta);
  else
    os << ",\n  \"m2\": " << json::number(r.m2) << ",\n  \"lam\": " << json::number(r.lam)
       << ",\n  \"convention\": \"nohalf\"";
  if (r.chains_kind() && r.algorithm != UpdateAlgorithm::hmc)
    os << ",\n  \"algorithm\": " << json::string(choice_name(r.algorithm)) << ",\n  \"overrelax\": " << r.overrelax;
  if (r.chains_kind()) {
    os << ",\n  \"integrator\": " << json::string(r.integrator) << ",\n  \"chains\": " << r.chains
       << ",\n  \"trajectories\": " << r.trajectories << ",\n  \"n_md\": " << r.n_md
       << ",\n  \"trajectory_length\": " << json::number(r.trajectory_length)
       << ",\n  \"configs_stored\": " << r.configs_stored << ",\n  \"acceptance\": " << json::number(r.acceptance)
       << ",\n  \"exp_mdH\": {\"value\": " << json::number(r.exp_mdH)
       << ", \"error\": " << json::number(r.exp_mdH_error)
       << "},\n  \"sampling_seconds\": " << json::number(r.sampling_seconds)
       << ",\n  \"seconds_per_trajectory_per_site\": " << json::number(r.seconds_per_trajectory_per_site);
    if (r.kind == "mixed")
      os << ",\n  \"flow_every\": " << r.flow_every << ",\n  \"flow_proposals\": " << r.flow_proposals
         << ",\n  \"flow_acceptance\": " << json::number(r.flow_acceptance)
         << ",\n  \"flow_seconds\": " << json::number(r.flow_seconds) << ",\n  \"train_steps\": " << r.train_steps
         << ",\n  \"train_seconds\": " << json::number(r.train_seconds)
         << ",\n  \"weights_hash\": " << json::string(r.weights_hash);
    if (r.has_reversibility)
      os << ",\n  \"reversibility\": {\"max_dx\": " << json::number(r.reversibility_max_dx)
         << ", \"max_dp\": " << json::number(r.reversibility_max_dp) << "}";
  } else {
    os << ",\n  \"proposals\": " << r.proposals << ",\n  \"configs_stored\": " << r.configs_stored
       << ",\n  \"acceptance\": " << json::number(r.acceptance) << ",\n  \"tau_acc\": " << json::number(r.tau_acc)
       << ",\n  \"ess_fraction\": " << json::number(r.ess_fraction)
       << ",\n  \"nis_reliable\": " << (r.nis_reliable() ? "true" : "false")
       << ",\n  \"chain_reliable\": " << (r.chain_reliable() ? "true" : "false")
       << ",\n  \"free_energy\": {\"value\": " << json::number(r.free_energy)
       << ", \"error\": " << json::number(r.free_energy_error);
    if (r.has_free_energy_exact) os << ", \"exact\": " << json::number(r.free_energy_exact);
    os << "},\n  \"train_steps\": " << r.train_steps << ",\n  \"train_seconds\": " << json::number(r.train_seconds)
       << ",\n  \"sampling_seconds\": " << json::number(r.sampling_seconds)
       << ",\n  \"weights_hash\": " << json::string(r.weights_hash);
    if (r.ne_steps > 0)
      os << ",\n  \"ne\": {\"steps\": " << r.ne_steps << ", \"parameter\": " << json::string(r.ne_parameter)
         << ", \"start\": " << json::number(r.ne_start) << ", \"n_md\": " << r.ne_n_md
         << (r.algorithm == UpdateAlgorithm::hmc ? ""
                                                 : ", \"algorithm\": " + json::string(choice_name(r.algorithm)) +
                                                       ", \"overrelax\": " + std::to_string(r.overrelax))
         << (r.ne_blocks > 0 ? ", \"blocks\": " + std::to_string(r.ne_blocks) +
                                   ", \"block_layers\": " + std::to_string(r.ne_block_layers)
                             : "")
         << ", \"work_mean\": " << json::number(r.work_mean) << ", \"work_std\": " << json::number(r.work_std) << "}";
  }
  if (!r.sector_observable.empty())
    os << ",\n  \"sectors\": {\"observable\": " << json::string(r.sector_observable)
       << ", \"changes\": " << r.sector_changes << ", \"fewest_in_one_chain\": " << r.sector_changes_min_chain
       << ", \"reliable\": " << (r.sectors_reliable() ? "true" : "false") << "}";
  os << ",\n  \"gamma_S\": " << json::number(r.gamma_S) << ",\n  \"observables\": {";
  for (std::size_t i = 0; i < r.rows.size(); ++i) {
    const auto& row = r.rows[i];
    os << (i ? "," : "") << "\n    " << json::string(row.name) << ": {\"value\": " << json::number(row.value)
       << ", \"error\": " << json::number(row.error) << ", \"tau_int\": " << json::number(row.tau_int)
       << ", \"tau_int_error\": " << json::number(row.tau_error)
       << ", \"window_found\": " << (row.window_found ? "true" : "false") << ", \"window\": " << row.window
       << ", \"rho\": " << json::array(row.rho) << ", \"tau_int_of_w\": " << json::array(row.tau_int_of_w)
       << ", \"nis\": " << json::number(row.nis) << ", \"nis_error\": " << json::number(row.nis_error);
    if (row.has_ref)
      os << ", \"ref\": " << json::number(row.ref) << ", \"ref_error\": " << json::number(row.ref_error)
         << ", \"ref_kind\": " << json::string(row.ref_kind);
    os << "}";
  }
  os << "\n  }\n}\n";
  return os.str();
}

}  // namespace latflow::analysis
