// SPDX-License-Identifier: MIT
#include "latflow/core/config_keys.hpp"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <stdexcept>

namespace latflow {

bool parse_bool(const std::string& key, const std::string& v) {
  if (v == "true" || v == "1" || v == "yes" || v == "on") return true;
  if (v == "false" || v == "0" || v == "no" || v == "off") return false;
  throw ConfigError(key + " = " + v + ": not a boolean (true/false)");
}

std::string shortest(double v) {
  for (int p = 15; p <= 17; ++p) {
    std::ostringstream os;
    os.precision(p);
    os << v;
    // strtod, not stod: stod throws out_of_range for subnormals, which are valid finite inputs.
    if (std::strtod(os.str().c_str(), nullptr) == v) return os.str();
  }
  return std::to_string(v);
}

namespace {

template <class T>
constexpr bool is_choice = std::is_enum_v<T>;

// Text of a value; `digits` = 0: shortest round trip (effective config), else that many significant digits.
template <class T>
std::string format(const T& v, int digits) {
  if constexpr (std::is_same_v<T, bool>) {
    return v ? "true" : "false";
  } else if constexpr (std::is_same_v<T, std::string>) {
    return v;
  } else if constexpr (is_choice<T>) {
    return choice_name(v);
  } else if constexpr (std::is_floating_point_v<T>) {
    if (digits == 0) return shortest(v);
    std::ostringstream os;
    os.precision(digits);
    os << v;
    return os.str();
  } else {
    std::ostringstream os;
    os << v;
    return os.str();
  }
}
template <class T>
std::string format(const std::vector<T>& v, int digits) {
  std::string s;
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? " " : "") + format(v[i], digits);
  return s;
}

template <class T>
KeyValue value_of(const T& v) {
  if constexpr (std::is_same_v<T, std::string>)
    return v;
  else if constexpr (std::is_same_v<T, bool> || is_choice<T>)
    return format(v, 0);
  else if constexpr (std::is_floating_point_v<T>)
    return static_cast<double>(v);
  else
    return static_cast<std::int64_t>(v);
}
template <class T>
KeyValue value_of(const std::vector<T>& v) {
  return std::vector<std::int64_t>(v.begin(), v.end());
}

template <class T>
T parse_as(const std::string& key, const std::string& v) {
  if constexpr (std::is_same_v<T, std::string>) {
    return v;
  } else if constexpr (std::is_same_v<T, bool>) {
    return parse_bool(key, v);
  } else if constexpr (is_choice<T>) {
    T out{};
    if (!parse_choice(v, &out)) throw ConfigError(key + " = " + v + ": must be " + choice_list<T>());
    return out;
  } else if constexpr (std::is_same_v<T, std::vector<int>> || std::is_same_v<T, std::vector<std::int64_t>>) {
    return parse_list<typename T::value_type>(key, v);
  } else {
    return parse_number<T>(key, v);
  }
}

template <class T>
struct element {
  using type = T;
};
template <class T>
struct element<std::vector<T>> {
  using type = T;
};

// Builds one registry row for the field that `ref` returns; the rule methods add the key's own check (for a list,
// of every element).
template <class T>
class Row {
 public:
  using E = typename element<T>::type;
  Row(const char* name, std::function<T&(Config&)> ref, const char* help) : get_(ref) {
    k_.name = name;
    k_.help = help;
    const auto get = get_;
    const std::string key = name;
    k_.text = [get](const Config& c) { return format(get(const_cast<Config&>(c)), 0); };
    k_.exact = [get](const Config& c) { return format(get(const_cast<Config&>(c)), 17); };
    k_.value = [get](const Config& c) { return value_of(get(const_cast<Config&>(c))); };
    k_.set = [get, key](Config& c, const std::string& v) { get(c) = parse_as<T>(key, v); };
  }
  // `ok` must hold for the value (for each element of a list), else "NAME = VALUE: WHY".
  Row&& rule(std::function<bool(const E&)> ok, std::string why) && {
    const auto get = get_;
    const std::string key = k_.name;
    k_.check = [get, key, ok, why](const Config& c) {
      const auto& v = get(const_cast<Config&>(c));
      if constexpr (std::is_same_v<T, E>) {
        if (!ok(v)) throw ConfigError(key + " = " + format(v, 0) + ": " + why);
      } else {
        for (const auto& x : v)
          if (!ok(x)) throw ConfigError(key + " = " + format(x, 0) + ": " + why);
      }
    };
    return std::move(*this);
  }
  Row&& at_least(E lo, const std::string& note = "") && {
    return std::move(*this).rule([lo](const E& v) { return v >= lo; }, "must be >= " + format(lo, 0) + note);
  }
  Row&& in_range(E lo, E hi, const std::string& note = "") && {
    return std::move(*this).rule([lo, hi](const E& v) { return v >= lo && v <= hi; },
                                 "must be in " + format(lo, 0) + ".." + format(hi, 0) + note);
  }
  // > 0 and finite (doubles).
  Row&& positive() && {
    return std::move(*this).rule([](const E& v) { return v > 0 && std::isfinite(static_cast<double>(v)); },
                                 "must be > 0");
  }
  // >= 0 and finite (doubles).
  Row&& non_negative() && {
    return std::move(*this).rule([](const E& v) { return v >= 0 && std::isfinite(static_cast<double>(v)); },
                                 "must be >= 0");
  }
  Row&& of_theory(TheoryId t) && {
    k_.theory = t;
    return std::move(*this);
  }
  Row&& physics() && {
    k_.physics = true;
    return std::move(*this);
  }
  Row&& derived() && {
    k_.derived = true;
    k_.set = nullptr;
    return std::move(*this);
  }
  Row&& attr(const char* name) && {
    k_.attr = name;
    return std::move(*this);
  }
  operator ConfigKey() && { return std::move(k_); }

 private:
  ConfigKey k_;
  std::function<T&(Config&)> get_;
};

template <class F>
auto row(const char* name, F ref, const char* help) {
  using T = std::remove_reference_t<decltype(ref(std::declval<Config&>()))>;
  return Row<T>(name, ref, help);
}

#define LATFLOW_FIELD(PATH) \
  [](Config & c) -> auto& { return c.PATH; }

using Keys = std::vector<ConfigKey>;

// The theory, the lattice and the couplings.
void physics_keys(Keys& k) {
  using I = std::int64_t;
  const auto phi4 = TheoryId::phi4, u1 = TheoryId::u1, sun = TheoryId::sun;
  auto add = [&](ConfigKey key) { k.push_back(std::move(key)); };
  add(row("theory", LATFLOW_FIELD(theory), "phi4 | u1 | sun").physics());
  add(row("lattice.extents", LATFLOW_FIELD(lattice.extents),
          "lattice extents L_0 ... L_{d-1}, d = 1..4 (flows: even extents)")
          .physics()
          .rule([](const I& l) { return l >= 2; }, "every extent must be >= 2"));
  // phi4 couplings as written, then the no-1/2 couplings validate derives (Phi4Params::resolve).
  add(row("phi4.convention", LATFLOW_FIELD(phi4.convention), "nohalf | half | hopping (converted exactly to nohalf)")
          .of_theory(phi4)
          .attr("input_convention"));
  add(row("phi4.m2", LATFLOW_FIELD(phi4.m2), "mass term m2 (nohalf, half)").of_theory(phi4).attr("input_m2"));
  add(row("phi4.lam", LATFLOW_FIELD(phi4.lam), "quartic coupling lambda").of_theory(phi4).attr("input_lam"));
  add(row("phi4.kappa", LATFLOW_FIELD(phi4.kappa), "hopping parameter (hopping)").of_theory(phi4).attr("input_kappa"));
  add(row("phi4.m2_nohalf", LATFLOW_FIELD(phi4.m2_nohalf), "").of_theory(phi4).derived().physics().attr("m2"));
  add(row("phi4.lam_nohalf", LATFLOW_FIELD(phi4.lam_nohalf), "").of_theory(phi4).derived().physics().attr("lam"));
  add(row("phi4.field_scale", LATFLOW_FIELD(phi4.field_scale), "").of_theory(phi4).derived().attr("field_scale"));
  add(row("u1.beta", LATFLOW_FIELD(u1.beta), "U(1) gauge coupling beta")
          .of_theory(u1)
          .physics()
          .attr("beta")
          .rule([](const double& b) { return std::isfinite(b) && b >= 0; }, "must be finite and >= 0"));
  add(row("sun.n", LATFLOW_FIELD(sun.n), "SU(N): number of colours N, 2..6")
          .of_theory(sun)
          .physics()
          .attr("n")
          .in_range(2, 6));
  add(row("sun.beta", LATFLOW_FIELD(sun.beta), "SU(N) gauge coupling beta (S = -(beta/N) sum_P Re tr U_P)")
          .of_theory(sun)
          .physics()
          .attr("beta")
          .rule([](const double& b) { return std::isfinite(b) && b >= 0 && b <= 200; },
                "must be finite and in [0, 200]"));
}

void flow_keys(Keys& k) {
  auto add = [&](ConfigKey key) { k.push_back(std::move(key)); };
  add(row("flow.coupling", LATFLOW_FIELD(flow.coupling),
          "phi4: affine | spline; u1: ncp | spline (circular); sun: spectral"));
  add(row("flow.layers", LATFLOW_FIELD(flow.layers), "number of coupling layers").in_range(0, 1000));
  add(row("flow.hidden", LATFLOW_FIELD(flow.hidden), "hidden channels of each conv net")
          .rule([](const int& h) { return h >= 1 && h <= 4096; }, "channels must be in 1..4096"));
  add(row("flow.kernel", LATFLOW_FIELD(flow.kernel), "odd conv kernel size")
          .rule([](const int& k) { return k >= 1 && k % 2 == 1; }, "must be odd and >= 1"));
  add(row("flow.activation", LATFLOW_FIELD(flow.activation), "leaky_relu | tanh | silu"));
  add(row("flow.z2", LATFLOW_FIELD(flow.z2), "Z2-equivariant couplings (phi4: affine or spline)"));
  add(row("flow.spline_bins", LATFLOW_FIELD(flow.spline_bins), "spline bins K").in_range(2, 256));
  add(row("flow.spline_bound", LATFLOW_FIELD(flow.spline_bound), "spline domain [-B, B]; identity outside").positive());
  add(row("flow.ncp_components", LATFLOW_FIELD(flow.ncp_components), "u1 ncp kernel: mixture components")
          .of_theory(TheoryId::u1)
          .in_range(1, 64));
  add(row("flow.loops", LATFLOW_FIELD(flow.loops),
          "u1: feed frozen 2x1 and 1x2 loops to the nets as well as plaquettes")
          .of_theory(TheoryId::u1));
  add(row("flow.dtype", LATFLOW_FIELD(flow.dtype), "float32 | float64 nets (log-weights always float64)"));
  add(row("flow.prior", LATFLOW_FIELD(flow.prior),
          "phi4: normal | fourier (a learned translation-invariant Gaussian covariance first); "
          "u1: haar | plaquette | exact (gauge-fixed plaquette priors); sun: haar | plaquette | exact (N = 2, 3)"));
}

// Training and sampling.
void training_keys(Keys& k) {
  auto add = [&](ConfigKey key) { k.push_back(std::move(key)); };
  add(row("train.steps", LATFLOW_FIELD(train.steps), "optimizer steps").at_least(0));
  add(row("train.batch", LATFLOW_FIELD(train.batch), "samples per step").at_least(2));
  add(row("train.lr", LATFLOW_FIELD(train.lr), "Adam learning rate").positive());
  add(row("train.lr_schedule", LATFLOW_FIELD(train.lr_schedule), "constant | cosine"));
  add(row("train.lr_min", LATFLOW_FIELD(train.lr_min), "final lr of cosine"));
  add(row("train.warmup", LATFLOW_FIELD(train.warmup), "linear warm-up steps").at_least(0));
  add(row("train.gradient", LATFLOW_FIELD(train.gradient),
          "reparam | path (through the sample only: lower variance near convergence)"));
  add(row("train.clip", LATFLOW_FIELD(train.clip), "gradient-norm clip, 0 = off").non_negative());
  add(row("train.log_every", LATFLOW_FIELD(train.log_every), "history interval").at_least(1));
  add(row("train.checkpoint_every", LATFLOW_FIELD(train.checkpoint_every), "checkpoint interval in steps").at_least(1));
  add(row("train.max_minutes", LATFLOW_FIELD(train.max_minutes), "wall-clock training budget in minutes, 0 = none")
          .non_negative());
  add(row("train.max_bad_steps", LATFLOW_FIELD(train.max_bad_steps), "consecutive non-finite steps before rolling back")
          .at_least(1));
  add(row("train.restart", LATFLOW_FIELD(train.restart), "ignore an existing checkpoint and train from scratch"));
  add(row("train.init_from", LATFLOW_FIELD(train.init_from),
          "start from this checkpoint's weights (same architecture; any extents/couplings)"));
  add(row("train.eval_every", LATFLOW_FIELD(train.eval_every),
          "steps between evaluations of ESS/acceptance on fresh proposals, 0 = off")
          .at_least(0));
  add(row("train.eval_samples", LATFLOW_FIELD(train.eval_samples), "proposals per evaluation").at_least(2));
  // Sampling.
  add(row("sample.proposals", LATFLOW_FIELD(sample.proposals), "IMH proposals").at_least(1));
  add(row("sample.block", LATFLOW_FIELD(sample.block), "proposals per random block").at_least(1));
  add(row("sample.store_configs", LATFLOW_FIELD(sample.store_configs), "store accepted configurations"));
}

// HMC and heat bath, and the non-equilibrium protocol (whose steps are HMC trajectories or heat-bath sweeps).
void hmc_keys(Keys& k) {
  auto add = [&](ConfigKey key) { k.push_back(std::move(key)); };
  add(row("hmc.integrator", LATFLOW_FIELD(hmc.integrator), "leapfrog | omelyan (2MN, lambda = 0.1932)"));
  add(row("hmc.trajectory_length", LATFLOW_FIELD(hmc.trajectory_length), "MD time of one trajectory").positive());
  add(row("hmc.algorithm", LATFLOW_FIELD(hmc.algorithm),
          "hmc | heatbath (u1, sun: one heat-bath sweep + hmc.overrelax overrelaxation sweeps per trajectory)"));
  add(row("hmc.overrelax", LATFLOW_FIELD(hmc.overrelax), "heatbath: overrelaxation sweeps after each heat-bath sweep")
          .in_range(0, 100));
  add(row("hmc.start", LATFLOW_FIELD(hmc.start),
          "a NERSC or ILDG file (4D SU(3)) every chain starts from; empty = cold start (identity links)"));
  add(row("hmc.n_md", LATFLOW_FIELD(hmc.n_md),
          "initial MD steps per trajectory (tuned during thermalisation, then frozen)")
          .in_range(1, 100000));
  add(row("hmc.jitter", LATFLOW_FIELD(hmc.jitter), "step size uniform in dt (1 +- jitter) per trajectory and chain")
          .rule([](const double& j) { return j >= 0 && j < 1; }, "must be in [0, 1)"));
  add(row("hmc.target_acceptance", LATFLOW_FIELD(hmc.target_acceptance), "acceptance n_md is tuned toward")
          .rule([](const double& a) { return a > 0 && a < 1; }, "must be in (0, 1)"));
  add(row("hmc.chains", LATFLOW_FIELD(hmc.chains), "independent chains (replicas)").at_least(1));
  add(row("hmc.thermalization", LATFLOW_FIELD(hmc.thermalization),
          "discarded trajectories per chain (n_md tuned in the first 3/4)")
          .at_least(0));
  add(row("hmc.trajectories", LATFLOW_FIELD(hmc.trajectories), "kept trajectories per chain").at_least(1));
  add(row("hmc.save_every", LATFLOW_FIELD(hmc.save_every), "store configurations every k kept trajectories, 0 = never")
          .at_least(0));
  add(row("hmc.check_reversibility", LATFLOW_FIELD(hmc.check_reversibility),
          "integrate each trajectory back and report max |dx|, |dp|"));
  add(row("hmc.flow_every", LATFLOW_FIELD(hmc.flow_every),
          "mixed chain: a flow IMH step after every k trajectories (trained checkpoint), 0 = pure HMC")
          .at_least(0, " (0 = pure HMC)"));
  // Non-equilibrium proposals.
  add(row("ne.steps", LATFLOW_FIELD(ne.steps),
          "sample: non-equilibrium steps (coupling step + one HMC trajectory) per proposal, 0 = off")
          .in_range(0, 1000000, " (0 = off)"));
  add(row("ne.parameter", LATFLOW_FIELD(ne.parameter),
          "coupling the protocol moves: phi4.m2 | phi4.lam | phi4.kappa | u1.beta | sun.beta | u1.defect | "
          "sun.defect (one plaquette's coupling / beta, target 1)"));
  add(row("ne.start", LATFLOW_FIELD(ne.start),
          "its start value (the flow is trained there); linear to the config's value"));
  add(row("ne.blocks", LATFLOW_FIELD(ne.blocks),
          "stochastic normalizing flow: flow blocks between the protocol's updates, trained with the flow; 0 = none")
          .at_least(0, " (0 = none)"));
  add(row("ne.block_layers", LATFLOW_FIELD(ne.block_layers),
          "coupling layers per flow block; 0 = automatic (phi4 2, gauge 4 d (d - 1))")
          .in_range(0, 1000, " (0 = automatic)"));
}

void run_keys(Keys& k) {
  auto add = [&](ConfigKey key) { k.push_back(std::move(key)); };
  add(row("run.output", LATFLOW_FIELD(run.output), "ensemble file (HDF5)")
          .rule([](const std::string& o) { return !o.empty(); }, "must not be empty"));
  add(row("run.checkpoint", LATFLOW_FIELD(run.checkpoint), "checkpoint file (default: OUTPUT.ckpt)"));
  add(row("run.overwrite", LATFLOW_FIELD(run.overwrite), "replace an existing output"));
  add(row("run.resume", LATFLOW_FIELD(run.resume), "sample/hmc: continue OUTPUT.partial, or extend a complete OUTPUT"));
  add(row("run.commit_seconds", LATFLOW_FIELD(run.commit_seconds),
          "sample/hmc: seconds between commits of the output (0 = every round)")
          .at_least(0));
  add(row("run.seed", LATFLOW_FIELD(run.seed), "master seed"));
  add(row("run.threads", LATFLOW_FIELD(run.threads), "threads per process").in_range(1, 1024));
  add(row("run.device", LATFLOW_FIELD(run.device), "cpu | cuda[:N]")
          .rule([](const std::string& d) { return d == "cpu" || d.rfind("cuda", 0) == 0; }, "must be cpu or cuda[:N]"));
  add(row("run.gamma_S", LATFLOW_FIELD(run.gamma_S), "Gamma-method window S").positive());
}

Keys make_keys() {
  Keys k;
  for (auto section : {physics_keys, flow_keys, training_keys, hmc_keys, run_keys}) section(k);
  return k;
}

#undef LATFLOW_FIELD

std::string section_of(const std::string& name) {
  const auto dot = name.find('.');
  return dot == std::string::npos ? "" : name.substr(0, dot);
}

}  // namespace

const std::vector<ConfigKey>& config_keys() {
  static const std::vector<ConfigKey> keys = make_keys();
  return keys;
}

const ConfigKey& config_key(std::string_view name) {
  static const std::map<std::string, const ConfigKey*, std::less<>> index = [] {
    std::map<std::string, const ConfigKey*, std::less<>> m;
    for (const auto& k : config_keys()) m[k.name] = &k;
    return m;
  }();
  auto it = index.find(name);
  if (it == index.end()) throw std::logic_error("no config key " + std::string(name));
  return *it->second;
}

std::string identity_lines(const Config& cfg, std::initializer_list<std::string_view> names) {
  std::string out;
  for (auto name : names) {
    const auto& k = config_key(name);
    if (k.applies_to(cfg.theory)) out += k.name + " = " + k.exact(cfg) + "\n";
  }
  return out;
}

std::string effective_config_text(const Config& cfg, const std::string& cmd) {
  std::ostringstream eff;
  eff << "# effective configuration (" << cmd << ")\n";
  std::string section;
  for (const auto& k : config_keys()) {
    if (k.derived) continue;
    const std::string sec = section_of(k.name);
    if (sec != section) {
      eff << "\n[" << sec << "]\n";
      section = sec;
    }
    eff << (sec.empty() ? k.name : k.name.substr(sec.size() + 1)) << " = " << k.text(cfg) << "\n";
  }
  if (!cfg.reference.empty()) {
    eff << "\n[reference]\n";
    for (const auto& [name, r] : cfg.reference)
      eff << name << " = " << shortest(r.value) << " " << shortest(r.error) << "\n";
  }
  return eff.str();
}

std::string keys_text() {
  Config defaults;
  defaults.phi4.resolve(defaults.lattice.dim());
  std::string out;
  char line[512];
  for (const auto& k : config_keys()) {
    if (k.derived) continue;
    std::snprintf(line, sizeof line, "%-24s %-22s %s\n", k.name.c_str(), k.text(defaults).c_str(), k.help.c_str());
    out += line;
  }
  std::snprintf(line, sizeof line, "%-24s %-22s %s\n", "reference.NAME", "VALUE ERROR",
                "reference value printed beside observable NAME");
  return out + line;
}

std::vector<std::pair<std::string, KeyValue>> theory_attributes(const Config& cfg) {
  std::vector<std::pair<std::string, KeyValue>> out;
  for (const auto& k : config_keys())
    if (!k.attr.empty() && k.applies_to(cfg.theory)) out.emplace_back(k.attr, k.value(cfg));
  return out;
}

}  // namespace latflow
