// SPDX-License-Identifier: MIT
// The INI config parser (see config_parse.hpp). Boost.Program_options lives only in apps/.
#include "config_parse.hpp"

#include <boost/program_options.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>

namespace po = boost::program_options;

namespace latflow::cli {
namespace {

template <class T>
std::string show(const T& v) {
  std::ostringstream os;
  os << v;
  return os.str();
}
// The shortest of 15..17 significant digits that reads back as the same double.
std::string show(double v) {
  for (int p = 15; p <= 17; ++p) {
    std::ostringstream os;
    os.precision(p);
    os << v;
    // strtod, not stod: stod throws out_of_range for subnormals, which are valid finite inputs.
    if (std::strtod(os.str().c_str(), nullptr) == v) return os.str();
  }
  return std::to_string(v);
}
template <class T>
std::string show(const std::vector<T>& v) {
  std::string s;
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? " " : "") + show(v[i]);
  return s;
}
std::string show(bool b) { return b ? "true" : "false"; }

// One config key: how to print its current value and how to set it from text.
struct Key {
  std::string name, help;
  std::function<std::string(const Config&)> get;
  std::function<void(Config&, const std::string&)> set;
};

#define LATFLOW_KEY(NAME, FIELD, PARSE, HELP)                    \
  Key {                                                          \
    NAME, HELP, [](const Config& c) { return show(c.FIELD); },   \
        [](Config& c, const std::string& v) { c.FIELD = PARSE; } \
  }

const std::vector<Key>& keys() {
  using I = std::int64_t;
  static const std::vector<Key> k{
      LATFLOW_KEY("theory", theory, v, "phi4 | u1 | sun"),
      LATFLOW_KEY("lattice.extents", lattice.extents, parse_list<I>("lattice.extents", v),
                  "lattice extents L_0 ... L_{d-1}, d = 1..4 (flows: even extents)"),
      LATFLOW_KEY("phi4.convention", phi4.convention, v, "nohalf | half | hopping (converted exactly to nohalf)"),
      LATFLOW_KEY("phi4.m2", phi4.m2, parse_number<double>("phi4.m2", v), "mass term m2 (nohalf, half)"),
      LATFLOW_KEY("phi4.lam", phi4.lam, parse_number<double>("phi4.lam", v), "quartic coupling lambda"),
      LATFLOW_KEY("phi4.kappa", phi4.kappa, parse_number<double>("phi4.kappa", v), "hopping parameter (hopping)"),
      LATFLOW_KEY("u1.beta", u1.beta, parse_number<double>("u1.beta", v), "U(1) gauge coupling beta"),
      LATFLOW_KEY("sun.n", sun.n, parse_number<int>("sun.n", v), "SU(N): number of colours N, 2..6"),
      LATFLOW_KEY("sun.beta", sun.beta, parse_number<double>("sun.beta", v),
                  "SU(N) gauge coupling beta (S = -(beta/N) sum_P Re tr U_P)"),
      LATFLOW_KEY("flow.coupling", flow.coupling, v,
                  "phi4: affine | spline; u1: ncp | spline (circular); sun: spectral"),
      LATFLOW_KEY("flow.layers", flow.layers, parse_number<int>("flow.layers", v), "number of coupling layers"),
      LATFLOW_KEY("flow.hidden", flow.hidden, parse_list<int>("flow.hidden", v), "hidden channels of each conv net"),
      LATFLOW_KEY("flow.kernel", flow.kernel, parse_number<int>("flow.kernel", v), "odd conv kernel size"),
      LATFLOW_KEY("flow.activation", flow.activation, v, "leaky_relu | tanh | silu"),
      LATFLOW_KEY("flow.z2", flow.z2, parse_bool("flow.z2", v), "Z2-equivariant couplings (phi4: affine or spline)"),
      LATFLOW_KEY("flow.spline_bins", flow.spline_bins, parse_number<int>("flow.spline_bins", v), "spline bins K"),
      LATFLOW_KEY("flow.spline_bound", flow.spline_bound, parse_number<double>("flow.spline_bound", v),
                  "spline domain [-B, B]; identity outside"),
      LATFLOW_KEY("flow.ncp_components", flow.ncp_components, parse_number<int>("flow.ncp_components", v),
                  "u1 ncp kernel: mixture components"),
      LATFLOW_KEY("flow.loops", flow.loops, parse_bool("flow.loops", v),
                  "u1: feed frozen 2x1 and 1x2 loops to the nets as well as plaquettes"),
      LATFLOW_KEY("flow.dtype", flow.dtype, v, "float32 | float64 nets (log-weights always float64)"),
      LATFLOW_KEY(
          "flow.prior", flow.prior, v,
          "phi4: normal | fourier (a learned translation-invariant Gaussian covariance first); "
          "u1: haar | plaquette | exact (gauge-fixed plaquette priors); sun: haar | plaquette | exact (N = 2, 3)"),
      LATFLOW_KEY("train.steps", train.steps, parse_number<I>("train.steps", v), "optimizer steps"),
      LATFLOW_KEY("train.batch", train.batch, parse_number<I>("train.batch", v), "samples per step"),
      LATFLOW_KEY("train.lr", train.lr, parse_number<double>("train.lr", v), "Adam learning rate"),
      LATFLOW_KEY("train.lr_schedule", train.lr_schedule, v, "constant | cosine"),
      LATFLOW_KEY("train.lr_min", train.lr_min, parse_number<double>("train.lr_min", v), "final lr of cosine"),
      LATFLOW_KEY("train.warmup", train.warmup, parse_number<I>("train.warmup", v), "linear warm-up steps"),
      LATFLOW_KEY("train.gradient", train.gradient, v,
                  "reparam | path (through the sample only: lower variance near convergence)"),
      LATFLOW_KEY("train.clip", train.clip, parse_number<double>("train.clip", v), "gradient-norm clip, 0 = off"),
      LATFLOW_KEY("train.log_every", train.log_every, parse_number<I>("train.log_every", v), "history interval"),
      LATFLOW_KEY("train.checkpoint_every", train.checkpoint_every, parse_number<I>("train.checkpoint_every", v),
                  "checkpoint interval in steps"),
      LATFLOW_KEY("train.max_minutes", train.max_minutes, parse_number<double>("train.max_minutes", v),
                  "wall-clock training budget in minutes, 0 = none"),
      LATFLOW_KEY("train.max_bad_steps", train.max_bad_steps, parse_number<I>("train.max_bad_steps", v),
                  "consecutive non-finite steps before rolling back"),
      LATFLOW_KEY("train.restart", train.restart, parse_bool("train.restart", v),
                  "ignore an existing checkpoint and train from scratch"),
      LATFLOW_KEY("train.init_from", train.init_from, v,
                  "start from this checkpoint's weights (same architecture; any extents/couplings)"),
      LATFLOW_KEY("train.eval_every", train.eval_every, parse_number<I>("train.eval_every", v),
                  "steps between evaluations of ESS/acceptance on fresh proposals, 0 = off"),
      LATFLOW_KEY("train.eval_samples", train.eval_samples, parse_number<I>("train.eval_samples", v),
                  "proposals per evaluation"),
      LATFLOW_KEY("sample.proposals", sample.proposals, parse_number<I>("sample.proposals", v), "IMH proposals"),
      LATFLOW_KEY("sample.block", sample.block, parse_number<I>("sample.block", v), "proposals per random block"),
      LATFLOW_KEY("sample.store_configs", sample.store_configs, parse_bool("sample.store_configs", v),
                  "store accepted configurations"),
      LATFLOW_KEY("hmc.integrator", hmc.integrator, v, "leapfrog | omelyan (2MN, lambda = 0.1932)"),
      LATFLOW_KEY("hmc.trajectory_length", hmc.trajectory_length, parse_number<double>("hmc.trajectory_length", v),
                  "MD time of one trajectory"),
      LATFLOW_KEY("hmc.algorithm", hmc.algorithm, v,
                  "hmc | heatbath (u1, sun: one heat-bath sweep + hmc.overrelax overrelaxation sweeps per trajectory)"),
      LATFLOW_KEY("hmc.overrelax", hmc.overrelax, parse_number<int>("hmc.overrelax", v),
                  "heatbath: overrelaxation sweeps after each heat-bath sweep"),
      LATFLOW_KEY("hmc.start", hmc.start, v,
                  "a NERSC or ILDG file (4D SU(3)) every chain starts from; empty = cold start (identity links)"),
      LATFLOW_KEY("hmc.n_md", hmc.n_md, parse_number<int>("hmc.n_md", v),
                  "initial MD steps per trajectory (tuned during thermalisation, then frozen)"),
      LATFLOW_KEY("hmc.jitter", hmc.jitter, parse_number<double>("hmc.jitter", v),
                  "step size uniform in dt (1 +- jitter) per trajectory and chain"),
      LATFLOW_KEY("hmc.target_acceptance", hmc.target_acceptance, parse_number<double>("hmc.target_acceptance", v),
                  "acceptance n_md is tuned toward"),
      LATFLOW_KEY("hmc.chains", hmc.chains, parse_number<I>("hmc.chains", v), "independent chains (replicas)"),
      LATFLOW_KEY("hmc.thermalization", hmc.thermalization, parse_number<I>("hmc.thermalization", v),
                  "discarded trajectories per chain (n_md tuned in the first 3/4)"),
      LATFLOW_KEY("hmc.trajectories", hmc.trajectories, parse_number<I>("hmc.trajectories", v),
                  "kept trajectories per chain"),
      LATFLOW_KEY("hmc.save_every", hmc.save_every, parse_number<I>("hmc.save_every", v),
                  "store configurations every k kept trajectories, 0 = never"),
      LATFLOW_KEY("hmc.check_reversibility", hmc.check_reversibility, parse_bool("hmc.check_reversibility", v),
                  "integrate each trajectory back and report max |dx|, |dp|"),
      LATFLOW_KEY("hmc.flow_every", hmc.flow_every, parse_number<I>("hmc.flow_every", v),
                  "mixed chain: a flow IMH step after every k trajectories (trained checkpoint), 0 = pure HMC"),
      LATFLOW_KEY("ne.steps", ne.steps, parse_number<I>("ne.steps", v),
                  "sample: non-equilibrium steps (coupling step + one HMC trajectory) per proposal, 0 = off"),
      LATFLOW_KEY("ne.parameter", ne.parameter, v,
                  "coupling the protocol moves: phi4.m2 | phi4.lam | phi4.kappa | u1.beta | sun.beta"),
      LATFLOW_KEY("ne.start", ne.start, parse_number<double>("ne.start", v),
                  "its start value (the flow is trained there); linear to the config's value"),
      LATFLOW_KEY("run.output", run.output, v, "ensemble file (HDF5)"),
      LATFLOW_KEY("run.checkpoint", run.checkpoint, v, "checkpoint file (default: OUTPUT.ckpt)"),
      LATFLOW_KEY("run.overwrite", run.overwrite, parse_bool("run.overwrite", v), "replace an existing output"),
      LATFLOW_KEY("run.resume", run.resume, parse_bool("run.resume", v),
                  "sample/hmc: continue OUTPUT.partial, or extend a complete OUTPUT"),
      LATFLOW_KEY("run.commit_seconds", run.commit_seconds, parse_number<double>("run.commit_seconds", v),
                  "sample/hmc: seconds between commits of the output (0 = every round)"),
      LATFLOW_KEY("run.seed", run.seed, parse_number<std::uint64_t>("run.seed", v), "master seed"),
      LATFLOW_KEY("run.threads", run.threads, parse_number<int>("run.threads", v), "threads per process"),
      LATFLOW_KEY("run.device", run.device, v, "cpu | cuda[:N]"),
      LATFLOW_KEY("run.gamma_S", run.gamma_S, parse_number<double>("run.gamma_S", v), "Gamma-method window S"),
  };
  return k;
}

}  // namespace

Config parse_config(const std::string& text, const std::string& path, const std::vector<std::string>& overrides,
                    const std::string& cmd) {
  Config cfg;
  cfg.source_text = text;
  cfg.source_path = path;

  po::options_description desc;
  for (const auto& k : keys()) desc.add_options()(k.name.c_str(), po::value<std::string>());
  po::variables_map vm;
  std::vector<std::pair<std::string, std::string>> refs;
  try {
    std::istringstream is(cfg.source_text);
    auto parsed = po::parse_config_file(is, desc, /*allow_unregistered=*/true);
    if (parsed.options.empty()) throw ConfigError(path + ": no settings (the config file is empty or only comments)");
    for (const auto& o : parsed.options) {
      if (!o.unregistered) continue;
      if (o.string_key.rfind("reference.", 0) == 0 && o.value.size() == 1)
        refs.emplace_back(o.string_key.substr(10), o.value[0]);
      else
        throw ConfigError(path + ": unknown key " + o.string_key + " (`latflow keys` lists them)");
    }
    // po::store keeps the first value stored for a key: store the overrides first so that they win.
    po::store(po::command_line_parser(overrides).options(desc).style(po::command_line_style::unix_style).run(), vm);
    po::store(parsed, vm);
  } catch (const po::error& e) {
    throw ConfigError(path + ": " + e.what());
  }
  for (const auto& k : keys())
    if (vm.count(k.name)) k.set(cfg, vm[k.name].as<std::string>());
  for (const auto& [name, v] : refs) {
    auto vals = parse_list<double>("reference." + name, v);
    if (vals.size() != 2) throw ConfigError("reference." + name + " = " + v + ": needs a value and its error");
    cfg.reference[name] = {vals[0], vals[1]};
  }
  cfg.validate();
  // [reference] values belong to the file's own physics: if the overrides change it, they are dropped.
  if (!cfg.reference.empty() && !overrides.empty()) {
    std::string diff;
    try {
      diff = first_difference(physics_identity(parse_config(text, path, {}, cmd)), physics_identity(cfg));
      for (auto [from, to] : {std::pair<std::string, std::string>{": stored ", ": file "}, {", requested ", ", run "}})
        if (auto at = diff.find(from); at != std::string::npos) diff.replace(at, from.size(), to);
    } catch (const ConfigError& e) {
      diff = std::string("the file alone does not validate: ") + e.what();
    }
    if (!diff.empty()) {
      cfg.reference.clear();
      cfg.reference_note = "[reference] of " + path + " not used: the command line changes its physics (" + diff + ")";
    }
  }
  std::ostringstream eff;
  eff << "# effective configuration (" << cmd << ")\n";
  std::string section;
  for (const auto& k : keys()) {
    auto dot = k.name.find('.');
    std::string sec = dot == std::string::npos ? "" : k.name.substr(0, dot);
    if (sec != section) {
      eff << "\n[" << sec << "]\n";
      section = sec;
    }
    eff << k.name.substr(dot == std::string::npos ? 0 : dot + 1) << " = " << k.get(cfg) << "\n";
  }
  if (!cfg.reference.empty()) {
    eff << "\n[reference]\n";
    for (const auto& [name, r] : cfg.reference) eff << name << " = " << show(r.value) << " " << show(r.error) << "\n";
  }
  cfg.effective_text = eff.str();
  return cfg;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides, const std::string& cmd) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw IoError(path + ": not found or not a regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path + ": cannot open config file");
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) throw IoError(path + ": cannot read config file");
  return parse_config(text.str(), path, overrides, cmd);
}

std::string keys_text() {
  Config defaults;
  defaults.phi4.resolve(defaults.lattice.dim());
  std::string out;
  char line[512];
  for (const auto& k : keys()) {
    std::snprintf(line, sizeof line, "%-24s %-22s %s\n", k.name.c_str(), k.get(defaults).c_str(), k.help.c_str());
    out += line;
  }
  std::snprintf(line, sizeof line, "%-24s %-22s %s\n", "reference.NAME", "VALUE ERROR",
                "reference value printed beside observable NAME");
  return out + line;
}

}  // namespace latflow::cli
