// SPDX-License-Identifier: MIT
#include "latflow/analysis/report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

#include "latflow/analysis/gamma.hpp"
#include "latflow/analysis/weights.hpp"
#include "latflow/core/error.hpp"
#include "latflow/core/json.hpp"
#include "latflow/io/h5.hpp"
#include "latflow/theories/phi4_exact.hpp"
#include "latflow/theories/sun_exact.hpp"
#include "latflow/theories/u1_exact.hpp"

namespace latflow::analysis {
namespace {

using Series = std::vector<std::vector<double>>;  // replicas x measurements (one replica for an IMH chain)

// The chain's measurement of a per-proposal observable: obs[trail[i]].
std::vector<double> along_chain(const std::vector<double>& obs, const std::vector<std::int64_t>& trail) {
  std::vector<double> s(trail.size());
  for (std::size_t i = 0; i < trail.size(); ++i) s[i] = obs[static_cast<std::size_t>(trail[i])];
  return s;
}

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

ObservableRow make_row(const std::string& name, const GammaResult& g, double nis, double nis_error) {
  ObservableRow row;
  row.name = name;
  row.value = g.mean;
  row.error = g.error;
  row.tau_int = g.tau_int;
  row.tau_error = g.tau_int_error;
  row.window_found = g.window_found;
  row.window = g.window;
  row.rho = g.rho;
  row.tau_int_of_w = g.tau_int_of_w;
  row.nis = nis;
  row.nis_error = nis_error;
  return row;
}

}  // namespace

std::string Report::physics() const {
  char b[160];
  if (theory == "u1")
    std::snprintf(b, sizeof b, "beta = %.17g", beta);
  else if (theory == "sun")
    std::snprintf(b, sizeof b, "N = %d, beta = %.17g", colors, beta);
  else
    std::snprintf(b, sizeof b, "m2 = %.17g, lam = %.17g (no-1/2 convention; input %s)", m2, lam,
                  input_convention.c_str());
  return b;
}

const ObservableRow* Report::row(const std::string& name) const {
  for (const auto& r : rows)
    if (r.name == name) return &r;
  return nullptr;
}

namespace {

// The Markov-chain data of one ensemble, whatever sampler made it. `chain` holds each primary observable and
// each correlator time slice ("corr(t)") as replicas x measurements: one replica (the IMH chain) or one per HMC
// chain. An IMH file also gives every observable per proposal with the log-weights, for the NIS column.
struct Samples {
  std::vector<std::string> primary;  // the per-configuration observables, in file order
  std::map<std::string, Series> chain;
  std::map<std::string, std::vector<double>> proposals;
  std::vector<double> log_w;
  bool has_nis() const { return !log_w.empty(); }
};

// Exact (free field) and [reference] values, keyed by row name.
struct References {
  std::map<std::string, double> exact;
  std::map<std::string, std::pair<double, double>> given;
  void apply(ObservableRow& row) const {
    if (auto it = exact.find(row.name); it != exact.end()) {
      row.has_ref = true;
      row.ref = it->second;
      row.ref_kind = "exact";
    } else if (auto jt = given.find(row.name); jt != given.end()) {
      row.has_ref = true;
      row.ref = jt->second.first;
      row.ref_error = jt->second.second;
      row.ref_kind = "reference";
    }
  }
};

References read_references(const io::File& f, Report& r) {
  References refs;
  const bool free_field = r.theory == "phi4" && r.lam == 0 && r.m2 > 0;
  if (free_field) {
    auto e = free_field_exact(r.extents, r.m2);
    refs.exact = {{"chi2", e.chi2},     {"abs_mag", e.abs_mag}, {"mag", e.mag},       {"phi2", e.phi2},
                  {"action_density", e.action_density},         {"g_pmin", e.g_pmin}, {"binder", e.binder},
                  {"xi_2nd", e.xi_2nd}, {"m4", e.m4}};
    for (std::int64_t t = 1; 2 * t < r.extents[0]; ++t) refs.exact["m_eff(" + std::to_string(t) + ")"] = e.m_eff;
    r.has_free_energy_exact = true;
    r.free_energy_exact = e.free_energy;
  }
  // The U(1) and SU(N) exact values are those of the 2D theory (none in d > 2).
  if (r.theory == "u1" && r.extents.size() == 2) {
    const std::int64_t V = r.extents[0] * r.extents[1];
    const double plaq = u1_plaquette(V, r.beta);
    refs.exact = {{"plaq", plaq}, {"action_density", -r.beta * plaq}, {"Q", 0.0},
                  {"Q2", u1_topological_susceptibility_q2(V, r.beta)}};
    for (std::int64_t R = 2; R <= std::min(r.extents[0], r.extents[1]) / 2; ++R)
      refs.exact["wilson_" + std::to_string(R) + "x" + std::to_string(R)] = u1_wilson_loop(V, r.beta, R * R);
    for (std::int64_t t = 1; 2 * t <= r.extents[0]; ++t)
      refs.exact["poly_corr(" + std::to_string(t) + ")"] = u1_wilson_loop(V, r.beta, t * r.extents[1]);
    r.has_free_energy_exact = true;
    r.free_energy_exact = u1_free_energy(V, r.beta);
  }
  if (r.theory == "sun" && r.extents.size() == 2) try {  // character expansion (sun_exact.hpp); F for the normalised Haar measure
    const std::int64_t V = r.extents[0] * r.extents[1];
    const double plaq = sun_plaquette(r.colors, V, r.beta);
    refs.exact = {{"plaq", plaq}, {"action_density", -r.beta * plaq}};
    for (std::int64_t R = 2; R <= std::min<std::int64_t>(4, std::min(r.extents[0], r.extents[1]) / 2); ++R)
      refs.exact["wilson_" + std::to_string(R) + "x" + std::to_string(R)] =
          sun_wilson_loop(r.colors, V, r.beta, R * R);
    for (std::int64_t t = 1; 2 * t <= r.extents[0]; ++t)
      refs.exact["poly_corr(" + std::to_string(t) + ")"] =
          sun_polyakov_correlator(r.colors, V, r.beta, t * r.extents[1]);
    r.has_free_energy_exact = true;
    r.free_energy_exact = sun_free_energy(r.colors, V, r.beta);
  } catch (const ConfigError&) {  // no reliable exact values at this N and beta: print none
    refs.exact.clear();
    r.has_free_energy_exact = false;
  }
  if (f.exists("/reference"))
    for (const auto& name : f.attr_names("/reference")) {
      auto v = f.read_attr_doubles("/reference", name);
      if (v.size() == 2) refs.given[name] = {v[0], v[1]};
    }
  return refs;
}

// The names attribute of an observables group: the primary observables in the order the theory measures them.
std::vector<std::string> observable_names(const io::File& f, const std::string& group) {
  std::istringstream is(f.read_attr_string(group, "names"));
  std::vector<std::string> names;
  for (std::string n; is >> n;) names.push_back(n);
  if (names.empty()) throw IoError(f.path() + ": " + group + " lists no observables");
  return names;
}

std::string corr_name(std::size_t t) { return "corr(" + std::to_string(t) + ")"; }

// The rows of the primary observables and of the derived quantities, shared by every kind of ensemble: phi4 adds
// the Binder cumulant, the second-moment correlation length and the effective mass; u1 the Polyakov-loop
// correlator c(t) = <Re P(0) P*(t)> for t = 1 .. L0/2 (exact values from the character expansion).
void add_observable_rows(Report& r, const Samples& s, const References& refs, const GammaOptions& opt) {
  const double nan = std::nan("");
  for (const auto& name : s.primary) {
    auto g = gamma_method(s.chain.at(name), opt);
    Estimate nis{nan, nan};
    if (s.has_nis()) nis = reweighted_mean(s.proposals.at(name), s.log_w);
    auto row = make_row(name, g, nis.value, nis.error);
    refs.apply(row);
    r.rows.push_back(row);
  }
  auto derived = [&](const std::string& name, const std::vector<std::string>& inputs, const DerivedFn& fn) {
    std::vector<Series> data;
    for (const auto& in : inputs) data.push_back(s.chain.at(in));
    GammaResult g;
    try {
      g = gamma_method_derived(data, fn, opt);
    } catch (const NumericalError&) {
      // e.g. m_eff(t) where the correlator is noise, xi_2nd with G(0) < G(p_min): not defined on these data.
      g.mean = g.error = g.tau_int = g.tau_int_error = nan;
    }
    double nis = nan, nis_error = nan;
    if (s.has_nis()) {
      // NIS: f of the reweighted means; its delta-method error is the reweighting error of the projected
      // observable sum_a (df/da) A_a, which keeps the correlations between the primaries.
      std::vector<const std::vector<double>*> per_proposal;
      for (const auto& in : inputs) per_proposal.push_back(&s.proposals.at(in));
      std::vector<double> means, errs;
      for (const auto* o : per_proposal) {
        auto e = reweighted_mean(*o, s.log_w);
        means.push_back(e.value);
        errs.push_back(e.error);
      }
      nis = fn(means);
      std::vector<double> projected(per_proposal[0]->size(), 0.0);
      for (std::size_t a = 0; a < means.size(); ++a) {
        auto m = means;
        const double h = errs[a] > 0 ? errs[a] : 1e-8 * std::max(1.0, std::abs(means[a]));
        m[a] += h;
        const double up = fn(m);
        m[a] -= 2 * h;
        const double grad = (up - fn(m)) / (2 * h);
        for (std::size_t i = 0; i < projected.size(); ++i) projected[i] += grad * (*per_proposal[a])[i];
      }
      if (std::isfinite(nis) &&
          std::all_of(projected.begin(), projected.end(), [](double v) { return std::isfinite(v); }))
        nis_error = reweighted_mean(projected, s.log_w).error;
    }
    auto row = make_row(name, g, nis, nis_error);
    refs.apply(row);
    r.rows.push_back(row);
  };
  const auto nL0 = static_cast<std::size_t>(r.extents[0]);
  if (r.theory == "u1" || r.theory == "sun") {
    for (std::size_t t = 1; 2 * t <= nL0; ++t)
      derived("poly_corr(" + std::to_string(t) + ")", {corr_name(t)}, [](const std::vector<double>& a) { return a[0]; });
    return;
  }
  double V = 1;
  for (auto l : r.extents) V *= static_cast<double>(l);
  const double L0 = static_cast<double>(r.extents[0]);
  derived("binder", {"m4", "chi2"},
          [V](const std::vector<double>& a) { return 1 - a[0] / (3 * (a[1] / V) * (a[1] / V)); });
  derived("xi_2nd", {"chi2", "g_pmin"},
          [L0](const std::vector<double>& a) { return std::sqrt(a[0] / a[1] - 1) / (2 * std::sin(M_PI / L0)); });
  for (std::size_t t = 1; 2 * t < nL0; ++t)
    derived("m_eff(" + std::to_string(t) + ")", {corr_name(t - 1), corr_name(t), corr_name((t + 1) % nL0)},
            [](const std::vector<double>& a) { return std::acosh((a[0] + a[2]) / (2 * a[1])); });
}

// IMH: the chain is an index trail over the proposals (one replica); every proposal enters the NIS estimates.
Samples read_imh(const io::File& f, Report& r) {
  const auto& path = r.path;
  r.train_steps = f.read_attr_int("/model", "train_steps");
  r.train_seconds = f.read_attr_double("/model", "train_seconds");
  r.weights_hash = f.read_attr_string("/model", "weights_hash");
  r.sampling_seconds = f.read_attr_double("/chain", "sampling_seconds");
  Samples s;
  s.log_w = f.read_f64("/proposals/log_w");
  const auto trail = f.read_i64("/chain/proposal");
  const auto accepted = f.read_u8("/chain/accepted");
  r.proposals = static_cast<std::int64_t>(s.log_w.size());
  r.configs_stored = static_cast<std::int64_t>(f.rows("/configs/proposal"));
  if (trail.size() != s.log_w.size() || accepted.size() != s.log_w.size())
    throw IoError(path + ": /chain and /proposals have different lengths");
  for (auto p : trail)
    if (p < 0 || p >= r.proposals) throw IoError(path + ": /chain/proposal holds an index out of range");
  std::vector<std::uint8_t> acc_steps(accepted.begin() + 1, accepted.end());  // step 0 only starts the chain
  auto at = acceptance_tau(acc_steps.empty() ? accepted : acc_steps);
  r.acceptance = at.acceptance;
  r.tau_acc = at.tau_acc;
  r.ess_fraction = kish_ess_fraction(s.log_w);
  auto fe = free_energy(s.log_w);
  r.free_energy = fe.F;
  r.free_energy_error = fe.error;
  if (f.exists("/ne")) {
    r.ne_steps = f.read_attr_int("/ne", "steps");
    r.ne_parameter = f.read_attr_string("/ne", "parameter");
    r.ne_start = f.read_attr_double("/ne", "start");
    r.ne_n_md = f.read_attr_int("/ne", "n_md");
    if (f.has_attr("/ne", "algorithm")) {
      r.algorithm = f.read_attr_string("/ne", "algorithm");
      r.overrelax = f.read_attr_int("/ne", "overrelax");
    }
    const auto W = f.read_f64("/proposals/work");
    if (W.size() != s.log_w.size()) throw IoError(path + ": /proposals/work and /proposals/log_w differ in length");
    double sum = 0, sum2 = 0;
    for (double w : W) sum += w;
    r.work_mean = sum / static_cast<double>(W.size());
    for (double w : W) sum2 += (w - r.work_mean) * (w - r.work_mean);
    r.work_std = std::sqrt(sum2 / static_cast<double>(W.size()));
  }

  s.primary = observable_names(f, "/proposals/observables");
  for (const auto& name : s.primary) {
    s.proposals[name] = f.read_f64("/proposals/observables/" + name);
    s.chain[name] = {along_chain(s.proposals[name], trail)};
  }
  const auto corr = f.read_f64("/proposals/observables/correlator");
  const auto nL0 = static_cast<std::size_t>(r.extents[0]);
  for (std::size_t t = 0; t < nL0; ++t) {
    std::vector<double> c(static_cast<std::size_t>(r.proposals));
    for (std::size_t i = 0; i < c.size(); ++i) c[i] = corr[i * nL0 + t];
    s.chain[corr_name(t)] = {along_chain(c, trail)};
    s.proposals[corr_name(t)] = std::move(c);
  }
  return s;
}

// HMC: datasets [T, C] (trajectory-major); each chain is one replica of the Gamma method.
Samples read_hmc(const io::File& f, Report& r) {
  r.integrator = f.read_attr_string("/hmc", "integrator");
  if (f.has_attr("/hmc", "algorithm")) {
    r.algorithm = f.read_attr_string("/hmc", "algorithm");
    r.overrelax = f.read_attr_int("/hmc", "overrelax");
  }
  r.n_md = f.read_attr_int("/hmc", "n_md");
  r.trajectory_length = f.read_attr_double("/hmc", "trajectory_length");
  r.acceptance = f.read_attr_double("/hmc", "acceptance");
  r.exp_mdH = f.read_attr_double("/hmc", "exp_mdH");
  r.exp_mdH_error = f.read_attr_double("/hmc", "exp_mdH_error");
  r.sampling_seconds = f.read_attr_double("/hmc", "seconds");
  r.seconds_per_trajectory_per_site = f.read_attr_double("/hmc", "seconds_per_trajectory_per_site");
  if (r.kind == "mixed") {
    r.flow_every = f.read_attr_int("/hmc", "flow_every");
    r.flow_proposals = f.read_attr_int("/hmc", "flow_proposals");
    r.flow_acceptance = f.read_attr_double("/hmc", "flow_acceptance");
    r.flow_seconds = f.read_attr_double("/hmc", "flow_seconds");
    r.train_steps = f.read_attr_int("/model", "train_steps");
    r.train_seconds = f.read_attr_double("/model", "train_seconds");
    r.weights_hash = f.read_attr_string("/model", "weights_hash");
  }
  r.has_reversibility = f.has_attr("/hmc", "reversibility_max_dx");
  if (r.has_reversibility) {
    r.reversibility_max_dx = f.read_attr_double("/hmc", "reversibility_max_dx");
    r.reversibility_max_dp = f.read_attr_double("/hmc", "reversibility_max_dp");
  }
  const auto shape = f.shape("/chains/dH");
  if (shape.size() != 2 || shape[0] == 0 || shape[1] == 0) throw IoError(r.path + ": /chains/dH is not [T, C]");
  const std::size_t T = shape[0], C = shape[1];
  r.trajectories = static_cast<std::int64_t>(T);
  r.chains = static_cast<std::int64_t>(C);
  r.configs_stored = f.exists("/configs/field") ? static_cast<std::int64_t>(f.rows("/configs/field")) : 0;
  auto replicas = [&](const std::vector<double>& data, std::size_t stride, std::size_t offset) {
    if (data.size() != T * C * stride) throw IoError(r.path + ": /chains datasets have different shapes");
    Series s(C, std::vector<double>(T));
    for (std::size_t t = 0; t < T; ++t)
      for (std::size_t c = 0; c < C; ++c) s[c][t] = data[(t * C + c) * stride + offset];
    return s;
  };
  Samples s;
  s.primary = observable_names(f, "/chains/observables");
  for (const auto& name : s.primary) s.chain[name] = replicas(f.read_f64("/chains/observables/" + name), 1, 0);
  const auto corr = f.read_f64("/chains/observables/correlator");
  const auto nL0 = static_cast<std::size_t>(r.extents[0]);
  for (std::size_t t = 0; t < nL0; ++t) s.chain[corr_name(t)] = replicas(corr, nL0, t);
  return s;
}

// Sector of a sample: round(Q) for U(1), the sign of M for phi4.
void count_sector_changes(Report& r, const Samples& s) {
  if (r.theory == "u1") {
    r.sector_observable = "Q";
    r.sector_rows = {"Q", "Q2"};
  } else if (r.theory == "phi4") {
    r.sector_observable = "mag";
    r.sector_rows = {"mag"};
  } else {
    return;
  }
  const auto it = s.chain.find(r.sector_observable);
  if (it == s.chain.end()) {
    r.sector_observable.clear();
    return;
  }
  const bool charge = r.theory == "u1";
  auto sector = [charge](double v) { return charge ? std::round(v) : (v > 0 ? 1.0 : v < 0 ? -1.0 : 0.0); };
  r.sector_changes = 0;
  r.sector_changes_min_chain = -1;
  for (const auto& replica : it->second) {
    std::int64_t n = 0;
    for (std::size_t t = 1; t < replica.size(); ++t) n += sector(replica[t]) != sector(replica[t - 1]);
    r.sector_changes += n;
    r.sector_changes_min_chain = r.sector_changes_min_chain < 0 ? n : std::min(r.sector_changes_min_chain, n);
  }
}

}  // namespace

Report analyze_ensemble(const std::string& path, double gamma_S) {
  auto f = io::File::open_read(path);
  Report r;
  r.path = path;
  r.gamma_S = gamma_S;
  if (!f.has_attr("/", "format") || f.read_attr_string("/", "format") != "latflow-ensemble")
    throw IoError(path + ": not a latflow ensemble (no format = latflow-ensemble attribute)");
  if (f.read_attr_string("/", "status") != "complete")
    throw IoError(path + ": ensemble is incomplete (status = " + f.read_attr_string("/", "status") + ")");
  r.kind = f.read_attr_string("/", "kind");
  if (r.kind != "imh" && !r.chains_kind()) throw IoError(path + ": unknown ensemble kind " + r.kind);
  r.theory = f.read_attr_string("/theory", "name");
  r.extents = f.read_attr_ints("/theory", "extents");
  if (r.theory == "u1") {
    r.beta = f.read_attr_double("/theory", "beta");
    if (r.extents.size() < 2 || r.extents.size() > 4) throw IoError(path + ": a u1 ensemble needs 2 to 4 extents");
  } else if (r.theory == "sun") {
    r.beta = f.read_attr_double("/theory", "beta");
    r.colors = static_cast<int>(f.read_attr_int("/theory", "n"));
    if (r.extents.size() < 2 || r.extents.size() > 4) throw IoError(path + ": a sun ensemble needs 2 to 4 extents");
    if (r.colors < 2 || r.colors > 6) throw IoError(path + ": /theory n must be in 2..6");
  } else {
    r.m2 = f.read_attr_double("/theory", "m2");
    r.lam = f.read_attr_double("/theory", "lam");
    r.input_convention = f.read_attr_string("/theory", "input_convention");
  }

  GammaOptions opt;
  opt.S = gamma_S;
  const Samples s = r.chains_kind() ? read_hmc(f, r) : read_imh(f, r);
  const References refs = read_references(f, r);
  if (r.chains_kind()) r.has_free_energy_exact = false;  // Markov chains do not measure Z
  add_observable_rows(r, s, refs, opt);
  count_sector_changes(r, s);
  return r;
}

namespace {

// The lines about how a Markov-chain ensemble (HMC, heat bath, mixed) was made.
void format_chains_header(std::ostringstream& os, const Report& r) {
  char b[512];
  if (r.algorithm == "heatbath") {
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
                    static_cast<long long>(r.flow_every), static_cast<long long>(r.flow_proposals),
                    r.flow_acceptance, r.flow_seconds, 100 * r.flow_seconds / r.sampling_seconds,
                    static_cast<long long>(r.train_steps), r.train_seconds, r.weights_hash.c_str());
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
    const std::string update = r.algorithm == "heatbath"
                                   ? "one heat-bath sweep + " + std::to_string(r.overrelax) + " overrelaxation"
                                   : "one HMC trajectory (n_md " + std::to_string(r.ne_n_md) + ")";
    std::snprintf(b, sizeof b,
                  "non-equilibrium: %lld steps of %s from %g to the target, %s each; work W %.4g, spread %.4g\n",
                  static_cast<long long>(r.ne_steps), r.ne_parameter.c_str(), r.ne_start, update.c_str(),
                  r.work_mean, r.work_std);
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
      std::snprintf(b, sizeof b, "   exact %.6f   (difference %.1e; the weights are equal to rounding)", r.free_energy_exact,
                    r.free_energy - r.free_energy_exact);
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
    const bool frozen = !r.sectors_reliable() &&
                        std::find(r.sector_rows.begin(), r.sector_rows.end(), row.name) != r.sector_rows.end();
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
    const std::string what = r.theory == "u1" ? "topological sector (Q)" : "sign of M";
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
                r.theory.c_str(), ext.c_str(), r.physics().c_str());
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
     << ",\n  \"theory\": " << json::string(r.theory) << ",\n  \"extents\": [";
  for (std::size_t i = 0; i < r.extents.size(); ++i) os << (i ? ", " : "") << r.extents[i];
  os << "]";
  if (r.theory == "u1")
    os << ",\n  \"beta\": " << json::number(r.beta);
  else if (r.theory == "sun")
    os << ",\n  \"n\": " << r.colors << ",\n  \"beta\": " << json::number(r.beta);
  else
    os << ",\n  \"m2\": " << json::number(r.m2) << ",\n  \"lam\": " << json::number(r.lam)
       << ",\n  \"convention\": \"nohalf\"";
  if (r.chains_kind() && r.algorithm != "hmc")
    os << ",\n  \"algorithm\": " << json::string(r.algorithm) << ",\n  \"overrelax\": " << r.overrelax;
  if (r.chains_kind()) {
    os << ",\n  \"integrator\": " << json::string(r.integrator) << ",\n  \"chains\": " << r.chains
       << ",\n  \"trajectories\": " << r.trajectories << ",\n  \"n_md\": " << r.n_md
       << ",\n  \"trajectory_length\": " << json::number(r.trajectory_length)
       << ",\n  \"configs_stored\": " << r.configs_stored << ",\n  \"acceptance\": " << json::number(r.acceptance)
       << ",\n  \"exp_mdH\": {\"value\": " << json::number(r.exp_mdH) << ", \"error\": " << json::number(r.exp_mdH_error)
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
    os << ",\n  \"proposals\": " << r.proposals
       << ",\n  \"configs_stored\": " << r.configs_stored << ",\n  \"acceptance\": " << json::number(r.acceptance)
       << ",\n  \"tau_acc\": " << json::number(r.tau_acc) << ",\n  \"ess_fraction\": " << json::number(r.ess_fraction)
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
         << (r.algorithm == "hmc" ? "" : ", \"algorithm\": " + json::string(r.algorithm) +
                                             ", \"overrelax\": " + std::to_string(r.overrelax))
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
       << ", \"nis\": " << json::number(row.nis)
       << ", \"nis_error\": " << json::number(row.nis_error);
    if (row.has_ref)
      os << ", \"ref\": " << json::number(row.ref) << ", \"ref_error\": " << json::number(row.ref_error)
         << ", \"ref_kind\": " << json::string(row.ref_kind);
    os << "}";
  }
  os << "\n  }\n}\n";
  return os.str();
}

}  // namespace latflow::analysis
