// SPDX-License-Identifier: MIT
#include "latflow/analysis/compare.hpp"

#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>

#include "latflow/core/error.hpp"
#include "latflow/core/json.hpp"

namespace latflow::analysis {
namespace {

CompareSide side(const ObservableRow& row, double n, double gen_seconds, double train_seconds) {
  CompareSide s;
  s.value = row.value;
  s.error = row.error;
  s.tau_int = row.tau_int;
  s.tau_error = row.tau_error;
  s.n_eff = n / (2 * row.tau_int);
  s.eff_per_second = s.n_eff / gen_seconds;
  s.cost = gen_seconds / s.n_eff;
  s.cost_with_training = (gen_seconds + train_seconds) / s.n_eff;
  return s;
}

std::string num(double v, const char* f = "%.4g") {
  if (!std::isfinite(v)) return std::isinf(v) ? "never" : "nan";
  char b[48];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

std::string pm(double v, double e) {
  char b[64];
  std::snprintf(b, sizeof b, "%.5g +- %.2g", v, e);
  return b;
}

}  // namespace

Comparison compare_ensembles(const std::string& a, const std::string& b, double gamma_S) {
  Report ra = analyze_ensemble(a, gamma_S), rb = analyze_ensemble(b, gamma_S);
  // The challenger is an IMH ensemble, a mixed chain (HMC with flow steps) or a heat-bath run; the other is
  // pure HMC.
  auto pure_hmc = [](const Report& r) { return r.kind == "hmc" && r.algorithm == UpdateAlgorithm::hmc; };
  if (pure_hmc(ra) && !pure_hmc(rb)) std::swap(ra, rb);
  if (pure_hmc(ra) || !pure_hmc(rb))
    throw IoError(a + ", " + b +
                  ": compare needs one hmc ensemble and one flow (imh or mixed) or heat-bath "
                  "ensemble, got " +
                  ra.kind + " (" + choice_name(ra.algorithm) + ") and " + rb.kind + " (" + choice_name(rb.algorithm) +
                  ")");
  if (ra.theory != rb.theory || ra.extents != rb.extents || ra.physics() != rb.physics())
    throw ConfigError(ra.path + " and " + rb.path + " are different physics (" + choice_name(ra.theory) + " " +
                      ra.physics() + " vs " + choice_name(rb.theory) + " " + rb.physics() + ", or different extents)");
  Comparison c{ra, rb, {}};
  const double n_flow =
      ra.kind == "imh" ? static_cast<double>(ra.proposals) : static_cast<double>(ra.chains * ra.trajectories);
  const double n_hmc = static_cast<double>(rb.chains * rb.trajectories);
  for (const auto& fr : ra.rows) {
    const ObservableRow* hr = rb.row(fr.name);
    if (!hr) continue;
    CompareRow row;
    row.name = fr.name;
    row.flow = side(fr, n_flow, ra.sampling_seconds, ra.train_seconds);
    row.hmc = side(*hr, n_hmc, rb.sampling_seconds, 0);
    row.deviation_sigma = (fr.value - hr->value) / std::hypot(fr.error, hr->error);
    row.cost_ratio = row.hmc.cost / row.flow.cost_with_training;
    // Training T is paid once; then each effective sample costs c_f (flow) or c_h (HMC): T + n c_f < n c_h.
    row.break_even = row.hmc.cost > row.flow.cost ? ra.train_seconds / (row.hmc.cost - row.flow.cost)
                                                  : std::numeric_limits<double>::infinity();
    c.rows.push_back(row);
  }
  return c;
}

std::string format_comparison(const Comparison& c) {
  std::ostringstream os;
  char b[640];
  std::string ext;
  for (std::size_t i = 0; i < c.flow.extents.size(); ++i) ext += (i ? "x" : "") + std::to_string(c.flow.extents[i]);
  const bool mixed = c.flow.kind == "mixed", heatbath = c.flow.algorithm == UpdateAlgorithm::heatbath;
  std::snprintf(b, sizeof b, "compare: %s on %s, %s\n", choice_name(c.flow.theory).c_str(), ext.c_str(),
                c.flow.physics().c_str());
  os << b;
  if (heatbath)
    std::snprintf(
        b, sizeof b, "  heat bath %s: %lld chains x %lld sweeps in %.1f s (heat bath + %lld overrelaxation)\n",
        c.flow.path.c_str(), static_cast<long long>(c.flow.chains), static_cast<long long>(c.flow.trajectories),
        c.flow.sampling_seconds, static_cast<long long>(c.flow.overrelax));
  else if (mixed)
    std::snprintf(b, sizeof b,
                  "  mixed %s: %lld chains x %lld trajectories in %.1f s, a flow step after every %lld (flow "
                  "acceptance %.4f, %.0f%% of the time), training %.0f s (%lld steps)\n",
                  c.flow.path.c_str(), static_cast<long long>(c.flow.chains),
                  static_cast<long long>(c.flow.trajectories), c.flow.sampling_seconds,
                  static_cast<long long>(c.flow.flow_every), c.flow.flow_acceptance,
                  100 * c.flow.flow_seconds / c.flow.sampling_seconds, c.flow.train_seconds,
                  static_cast<long long>(c.flow.train_steps));
  else
    std::snprintf(
        b, sizeof b, "  flow %s: %lld proposals in %.1f s, training %.0f s (%lld steps), acceptance %.3f, ESS/N %.3f\n",
        c.flow.path.c_str(), static_cast<long long>(c.flow.proposals), c.flow.sampling_seconds, c.flow.train_seconds,
        static_cast<long long>(c.flow.train_steps), c.flow.acceptance, c.flow.ess_fraction);
  os << b;
  std::snprintf(b, sizeof b,
                "  HMC  %s: %lld chains x %lld trajectories in %.1f s (%s, n_md %lld), acceptance %.3f\n\n",
                c.hmc.path.c_str(), static_cast<long long>(c.hmc.chains), static_cast<long long>(c.hmc.trajectories),
                c.hmc.sampling_seconds, c.hmc.integrator.c_str(), static_cast<long long>(c.hmc.n_md), c.hmc.acceptance);
  os << b;
  std::snprintf(b, sizeof b, "%-15s %-22s %-22s %6s %-15s %-15s %10s %10s %12s %10s %9s %11s\n", "observable",
                heatbath ? "heat bath"
                : mixed  ? "mixed (HMC + flow)"
                         : "flow (IMH)",
                "HMC", "dev", "tau flow", "tau HMC", "eff/s flow", "eff/s HMC", "s/eff flow+T", "s/eff HMC", "HMC/flow",
                "break-even");
  os << b << std::string(170, '-') << "\n";
  for (const auto& r : c.rows) {
    std::snprintf(b, sizeof b, "%-15s %-22s %-22s %+6.1f %-15s %-15s %10s %10s %12s %10s %9s %11s\n", r.name.c_str(),
                  pm(r.flow.value, r.flow.error).c_str(), pm(r.hmc.value, r.hmc.error).c_str(), r.deviation_sigma,
                  pm(r.flow.tau_int, r.flow.tau_error).c_str(), pm(r.hmc.tau_int, r.hmc.tau_error).c_str(),
                  num(r.flow.eff_per_second, "%.4g").c_str(), num(r.hmc.eff_per_second, "%.4g").c_str(),
                  num(r.flow.cost_with_training, "%.3g").c_str(), num(r.hmc.cost, "%.3g").c_str(),
                  num(r.cost_ratio, "%.3g").c_str(), num(r.break_even, "%.3g").c_str());
    os << b;
  }
  os << (heatbath ? "\n\"flow\" is the heat bath (no training); tau: in sweeps (heat bath) and trajectories (HMC) of "
                    "one chain; eff/s"
         : mixed  ? "\ntau: in trajectories of one chain (mixed and HMC); eff/s"
                  : "\ntau: flow in IMH proposals, HMC in trajectories of one chain; eff/s")
     << " = N/(2 tau_int) per second of "
        "generation, N = all proposals or all chains' trajectories;\ns/eff flow+T: (training + generation) seconds per "
        "effective sample; HMC/flow: the cost ratio "
        "(> 1: the flow is cheaper\nwith its training counted); break-even: effective samples after which it is.\n";
  if (!mixed && !heatbath && !c.flow.chain_reliable())
    os << "! the flow's IMH chain has only " << static_cast<long long>(c.flow.proposals / (2 * c.flow.tau_acc))
       << " independent steps by N / (2 tau_acc): its errors, tau_int and costs are not reliable.\n";
  for (const auto* side : {&c.flow, &c.hmc})
    if (!side->sectors_reliable())
      os << "! the " << (side == &c.flow ? (mixed ? "mixed chains" : "flow's chain") : "HMC chains")
         << " changed sector (" << side->sector_observable << ") only " << side->sector_changes << " times (fewer than "
         << Report::kMinSectorChanges
         << "): the errors, tau_int and costs of the sector observables are not reliable.\n";
  return os.str();
}

std::string comparison_json(const Comparison& c) {
  const bool mixed = c.flow.kind == "mixed";
  std::ostringstream os;
  auto side_json = [&](const CompareSide& s) {
    std::ostringstream o;
    o << "{\"value\": " << json::number(s.value) << ", \"error\": " << json::number(s.error)
      << ", \"tau_int\": " << json::number(s.tau_int) << ", \"tau_int_error\": " << json::number(s.tau_error)
      << ", \"n_eff\": " << json::number(s.n_eff) << ", \"eff_per_second\": " << json::number(s.eff_per_second)
      << ", \"seconds_per_eff\": " << json::number(s.cost)
      << ", \"seconds_per_eff_with_training\": " << json::number(s.cost_with_training) << "}";
    return o.str();
  };
  os << "{\n  \"theory\": " << json::string(choice_name(c.flow.theory)) << ",\n  \"extents\": [";
  for (std::size_t i = 0; i < c.flow.extents.size(); ++i) os << (i ? ", " : "") << c.flow.extents[i];
  os << "],\n  \"physics\": " << json::string(c.flow.physics());
  if (c.flow.theory == TheoryId::u1 || c.flow.theory == TheoryId::sun)
    os << ",\n  \"beta\": " << json::number(c.flow.beta);
  if (c.flow.theory == TheoryId::sun) os << ",\n  \"n\": " << c.flow.colors;
  os << ",\n  \"flow\": {\"file\": " << json::string(c.flow.path) << ", \"kind\": " << json::string(c.flow.kind);
  if (c.flow.algorithm != UpdateAlgorithm::hmc)
    os << ", \"algorithm\": " << json::string(choice_name(c.flow.algorithm)) << ", \"chains\": " << c.flow.chains
       << ", \"sweeps\": " << c.flow.trajectories << ", \"overrelax\": " << c.flow.overrelax;
  if (mixed)
    os << ", \"chains\": " << c.flow.chains << ", \"trajectories\": " << c.flow.trajectories
       << ", \"flow_every\": " << c.flow.flow_every << ", \"flow_acceptance\": " << json::number(c.flow.flow_acceptance)
       << ", \"flow_seconds\": " << json::number(c.flow.flow_seconds);
  os << ", \"proposals\": " << c.flow.proposals << ", \"acceptance\": " << json::number(c.flow.acceptance)
     << ", \"ess_fraction\": " << json::number(c.flow.ess_fraction)
     << ", \"chain_reliable\": " << (c.flow.chain_reliable() ? "true" : "false")
     << ", \"generation_seconds\": " << json::number(c.flow.sampling_seconds)
     << ", \"training_seconds\": " << json::number(c.flow.train_seconds)
     << "},\n  \"hmc\": {\"file\": " << json::string(c.hmc.path) << ", \"chains\": " << c.hmc.chains
     << ", \"trajectories\": " << c.hmc.trajectories << ", \"acceptance\": " << json::number(c.hmc.acceptance)
     << ", \"generation_seconds\": " << json::number(c.hmc.sampling_seconds) << "},\n  \"observables\": {";
  for (std::size_t i = 0; i < c.rows.size(); ++i) {
    const auto& r = c.rows[i];
    os << (i ? "," : "") << "\n    " << json::string(r.name) << ": {\"flow\": " << side_json(r.flow)
       << ", \"hmc\": " << side_json(r.hmc) << ", \"deviation_sigma\": " << json::number(r.deviation_sigma)
       << ", \"cost_ratio_hmc_over_flow\": " << json::number(r.cost_ratio)
       << ", \"break_even_eff\": " << json::number(r.break_even) << "}";
  }
  os << "\n  }\n}\n";
  return os.str();
}

}  // namespace latflow::analysis
