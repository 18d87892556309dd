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

namespace {
UpdateAlgorithm read_algorithm(const io::File& f, const std::string& group, const std::string& path) {
  const auto name = f.read_attr_string(group, "algorithm");
  UpdateAlgorithm a{};
  if (!parse_choice(name, &a))
    throw IoError(path + ": unknown update algorithm " + name + " (" + group + " algorithm)");
  return a;
}
}  // namespace

std::string Report::physics() const {
  char b[160];
  if (theory == TheoryId::u1)
    std::snprintf(b, sizeof b, "beta = %.17g", beta);
  else if (theory == TheoryId::sun)
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
  const bool free_field = r.theory == TheoryId::phi4 && r.lam == 0 && r.m2 > 0;
  if (free_field) {
    auto e = free_field_exact(r.extents, r.m2);
    refs.exact = {{"chi2", e.chi2},
                  {"abs_mag", e.abs_mag},
                  {"mag", e.mag},
                  {"phi2", e.phi2},
                  {"action_density", e.action_density},
                  {"g_pmin", e.g_pmin},
                  {"binder", e.binder},
                  {"xi_2nd", e.xi_2nd},
                  {"m4", e.m4}};
    for (std::int64_t t = 1; 2 * t < r.extents[0]; ++t) refs.exact["m_eff(" + std::to_string(t) + ")"] = e.m_eff;
    r.has_free_energy_exact = true;
    r.free_energy_exact = e.free_energy;
  }
  // The U(1) and SU(N) exact values are those of the 2D theory (none in d > 2).
  if (r.theory == TheoryId::u1 && r.extents.size() == 2) {
    const std::int64_t V = r.extents[0] * r.extents[1];
    const double plaq = u1_plaquette(V, r.beta);
    refs.exact = {{"plaq", plaq},
                  {"action_density", -r.beta * plaq},
                  {"Q", 0.0},
                  {"Q2", u1_topological_susceptibility_q2(V, r.beta)}};
    for (std::int64_t R = 2; R <= std::min(r.extents[0], r.extents[1]) / 2; ++R)
      refs.exact["wilson_" + std::to_string(R) + "x" + std::to_string(R)] = u1_wilson_loop(V, r.beta, R * R);
    for (std::int64_t t = 1; 2 * t <= r.extents[0]; ++t)
      refs.exact["poly_corr(" + std::to_string(t) + ")"] = u1_wilson_loop(V, r.beta, t * r.extents[1]);
    r.has_free_energy_exact = true;
    r.free_energy_exact = u1_free_energy(V, r.beta);
  }
  if (r.theory == TheoryId::sun && r.extents.size() == 2)
    try {  // character expansion (sun_exact.hpp); F for the normalised Haar measure
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
  if (r.theory == TheoryId::u1 || r.theory == TheoryId::sun) {
    for (std::size_t t = 1; 2 * t <= nL0; ++t)
      derived("poly_corr(" + std::to_string(t) + ")", {corr_name(t)},
              [](const std::vector<double>& a) { return a[0]; });
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
    if (f.has_attr("/ne", "blocks")) {
      r.ne_blocks = f.read_attr_int("/ne", "blocks");
      r.ne_block_layers = f.read_attr_int("/ne", "block_layers");
    }
    if (f.has_attr("/ne", "algorithm")) {
      r.algorithm = read_algorithm(f, "/ne", r.path);
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
    r.algorithm = read_algorithm(f, "/hmc", r.path);
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
  if (r.theory == TheoryId::u1) {
    r.sector_observable = "Q";
    r.sector_rows = {"Q", "Q2"};
  } else if (r.theory == TheoryId::phi4) {
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
  const bool charge = r.theory == TheoryId::u1;
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
  const auto theory = f.read_attr_string("/theory", "name");
  if (!parse_choice(theory, &r.theory)) throw IoError(path + ": unknown theory " + theory + " (/theory name)");
  r.extents = f.read_attr_ints("/theory", "extents");
  if (r.theory == TheoryId::u1) {
    r.beta = f.read_attr_double("/theory", "beta");
    if (r.extents.size() < 2 || r.extents.size() > 4) throw IoError(path + ": a u1 ensemble needs 2 to 4 extents");
  } else if (r.theory == TheoryId::sun) {
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

}  // namespace latflow::analysis
