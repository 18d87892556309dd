// SPDX-License-Identifier: MIT
// The latflow command line: one binary, subcommands. Boost.Program_options lives only here. Every key of the INI
// files can be overridden on the command line as --section.key VALUE. Errors are caught once, at the bottom.
#include <boost/program_options.hpp>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>

#include "latflow/analysis/compare.hpp"
#include "latflow/analysis/report.hpp"
#include "latflow/core/error.hpp"
#include "latflow/core/log.hpp"
#include "latflow/jobs.hpp"
#include "latflow/parallel/mpi.hpp"

namespace po = boost::program_options;
using namespace latflow;

namespace {

const char* kUsage = R"(usage: latflow COMMAND [ARGS] [--section.key VALUE ...]

commands:
  run CONFIG.ini       train (or reuse/continue the checkpoint), sample, analyse and print the results
  train CONFIG.ini     train the flow; writes the checkpoint (run.checkpoint, default OUTPUT.ckpt)
  sample CONFIG.ini    sample with the trained flow: independence Metropolis ensemble -> run.output (HDF5)
  hmc CONFIG.ini       HMC baseline: hmc.chains chains in the batch -> run.output (HDF5), then analyse it
  analyze FILE.h5      print the analysis table of an ensemble and write it as JSON [--json OUT] [--S 1.5]
  compare FLOW.h5 HMC.h5  flow versus HMC: errors, tau_int, effective samples per second, cost with training
  bench CONFIG.ini     training steps/s and proposals/s of the config's flow [--batches 64,1024] [--repeats 5]
  bench-hmc CONFIG.ini HMC trajectories/s x sites on L^d lattices [--sizes 8,16,32,64] [--repeats 5]
  keys                 list every config key with its default and meaning

common options:
  --overwrite          replace an existing output ensemble (never done silently)
  --retrain            discard an existing checkpoint and train from scratch
  --resume             sample/hmc: continue an interrupted OUTPUT.partial (or extend a complete OUTPUT)
  --threads N          threads per process (= --run.threads)
  --output FILE        (= --run.output)
  -h, --help           this text
)";

template <class T>
T parse_number(const std::string& key, const std::string& v) {
  // istream wraps "-1" around for unsigned types instead of failing.
  if constexpr (std::is_unsigned_v<T>)
    if (v.find('-') != std::string::npos) throw ConfigError(key + " = " + v + ": must be >= 0");
  std::istringstream is(v);
  T x{};
  is >> x;
  std::string rest;
  if (is.fail() || (is >> rest)) throw ConfigError(key + " = " + v + ": not a valid number");
  if constexpr (std::is_floating_point_v<T>)
    if (!std::isfinite(x)) throw ConfigError(key + " = " + v + ": must be finite");
  return x;
}

bool parse_bool(const std::string& key, const std::string& v) {
  if (v == "true" || v == "1" || v == "yes" || v == "on") return true;
  if (v == "false" || v == "0" || v == "no" || v == "off") return false;
  throw ConfigError(key + " = " + v + ": not a boolean (true/false)");
}

template <class T>
std::vector<T> parse_list(const std::string& key, const std::string& v) {
  std::string s = v;
  for (auto& c : s)
    if (c == ',') c = ' ';
  std::istringstream is(s);
  std::vector<T> out;
  std::string tok;
  while (is >> tok) out.push_back(parse_number<T>(key, tok));
  if (out.empty()) throw ConfigError(key + " = " + v + ": needs at least one value");
  return out;
}

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
    if (std::stod(os.str()) == v) return os.str();
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

#define LATFLOW_KEY(NAME, FIELD, PARSE, HELP)                                                         \
  Key {                                                                                               \
    NAME, HELP, [](const Config& c) { return show(c.FIELD); },                                        \
        [](Config& c, const std::string& v) { c.FIELD = PARSE; }                                       \
  }

const std::vector<Key>& keys() {
  using I = std::int64_t;
  static const std::vector<Key> k{
      LATFLOW_KEY("theory", theory, v, "phi4 | u1"),
      LATFLOW_KEY("lattice.extents", lattice.extents, parse_list<I>("lattice.extents", v),
                  "lattice extents L_0 ... L_{d-1}, d = 1..4 (flows: d <= 3, even extents)"),
      LATFLOW_KEY("phi4.convention", phi4.convention, v, "nohalf | half | hopping (converted exactly to nohalf)"),
      LATFLOW_KEY("phi4.m2", phi4.m2, parse_number<double>("phi4.m2", v), "mass term m2 (nohalf, half)"),
      LATFLOW_KEY("phi4.lam", phi4.lam, parse_number<double>("phi4.lam", v), "quartic coupling lambda"),
      LATFLOW_KEY("phi4.kappa", phi4.kappa, parse_number<double>("phi4.kappa", v), "hopping parameter (hopping)"),
      LATFLOW_KEY("u1.beta", u1.beta, parse_number<double>("u1.beta", v), "U(1) gauge coupling beta"),
      LATFLOW_KEY("flow.coupling", flow.coupling, v, "phi4: affine | spline; u1: ncp | spline (circular)"),
      LATFLOW_KEY("flow.layers", flow.layers, parse_number<int>("flow.layers", v), "number of coupling layers"),
      LATFLOW_KEY("flow.hidden", flow.hidden, parse_list<int>("flow.hidden", v), "hidden channels of each conv net"),
      LATFLOW_KEY("flow.kernel", flow.kernel, parse_number<int>("flow.kernel", v), "odd conv kernel size"),
      LATFLOW_KEY("flow.activation", flow.activation, v, "leaky_relu | tanh | silu"),
      LATFLOW_KEY("flow.z2", flow.z2, parse_bool("flow.z2", v), "Z2-equivariant affine couplings"),
      LATFLOW_KEY("flow.spline_bins", flow.spline_bins, parse_number<int>("flow.spline_bins", v), "spline bins K"),
      LATFLOW_KEY("flow.spline_bound", flow.spline_bound, parse_number<double>("flow.spline_bound", v),
                  "spline domain [-B, B]; identity outside"),
      LATFLOW_KEY("flow.ncp_components", flow.ncp_components, parse_number<int>("flow.ncp_components", v),
                  "u1 ncp kernel: mixture components"),
      LATFLOW_KEY("flow.loops", flow.loops, parse_bool("flow.loops", v),
                  "u1: feed frozen 2x1 and 1x2 loops to the nets as well as plaquettes"),
      LATFLOW_KEY("flow.dtype", flow.dtype, v, "float32 | float64 nets (log-weights always float64)"),
      LATFLOW_KEY("train.steps", train.steps, parse_number<I>("train.steps", v), "optimizer steps"),
      LATFLOW_KEY("train.batch", train.batch, parse_number<I>("train.batch", v), "samples per step"),
      LATFLOW_KEY("train.lr", train.lr, parse_number<double>("train.lr", v), "Adam learning rate"),
      LATFLOW_KEY("train.lr_schedule", train.lr_schedule, v, "constant | cosine"),
      LATFLOW_KEY("train.lr_min", train.lr_min, parse_number<double>("train.lr_min", v), "final lr of cosine"),
      LATFLOW_KEY("train.warmup", train.warmup, parse_number<I>("train.warmup", v), "linear warm-up steps"),
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
      LATFLOW_KEY("hmc.trajectory_length", hmc.trajectory_length,
                  parse_number<double>("hmc.trajectory_length", v), "MD time of one trajectory"),
      LATFLOW_KEY("hmc.n_md", hmc.n_md, parse_number<int>("hmc.n_md", v),
                  "initial MD steps per trajectory (tuned during thermalisation, then frozen)"),
      LATFLOW_KEY("hmc.jitter", hmc.jitter, parse_number<double>("hmc.jitter", v),
                  "step size uniform in dt (1 +- jitter) per trajectory and chain"),
      LATFLOW_KEY("hmc.target_acceptance", hmc.target_acceptance,
                  parse_number<double>("hmc.target_acceptance", v), "acceptance n_md is tuned toward"),
      LATFLOW_KEY("hmc.chains", hmc.chains, parse_number<I>("hmc.chains", v), "independent chains (replicas)"),
      LATFLOW_KEY("hmc.thermalization", hmc.thermalization, parse_number<I>("hmc.thermalization", v),
                  "discarded trajectories per chain (n_md tuned in the first 3/4)"),
      LATFLOW_KEY("hmc.trajectories", hmc.trajectories, parse_number<I>("hmc.trajectories", v),
                  "kept trajectories per chain"),
      LATFLOW_KEY("hmc.save_every", hmc.save_every, parse_number<I>("hmc.save_every", v),
                  "store configurations every k kept trajectories, 0 = never"),
      LATFLOW_KEY("hmc.check_reversibility", hmc.check_reversibility, parse_bool("hmc.check_reversibility", v),
                  "integrate each trajectory back and report max |dx|, |dp|"),
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

// Parses CONFIG.ini and the command-line overrides into a validated Config.
Config load_config(const std::string& path, const std::vector<std::string>& overrides, const std::string& cmd) {
  Config cfg;
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw IoError(path + ": not found or not a regular file");
  std::ifstream in(path);
  if (!in) throw IoError(path + ": cannot open config file");
  std::stringstream text;
  text << in.rdbuf();
  cfg.source_text = text.str();
  cfg.source_path = path;

  po::options_description desc;
  for (const auto& k : keys()) desc.add_options()(k.name.c_str(), po::value<std::string>());
  po::variables_map vm;
  std::vector<std::pair<std::string, std::string>> refs;
  try {
    std::istringstream is(cfg.source_text);
    auto parsed = po::parse_config_file(is, desc, /*allow_unregistered=*/true);
    for (const auto& o : parsed.options) {
      if (!o.unregistered) continue;
      if (o.string_key.rfind("reference.", 0) == 0 && o.value.size() == 1)
        refs.emplace_back(o.string_key.substr(10), o.value[0]);
      else
        throw ConfigError(path + ": unknown key " + o.string_key + " (`latflow keys` lists them)");
    }
    // po::store keeps the first value stored for a key: store the overrides first so that they win.
    po::store(po::command_line_parser(overrides).options(desc).style(po::command_line_style::unix_style)
                  .run(),
              vm);
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

// Splits argv after the command into positional arguments and --key value overrides (with shorthands).
struct Args {
  std::vector<std::string> positional, overrides;
  std::map<std::string, std::string> local;  // options of the command itself (--json, --S, ...)
};

Args split_args(int argc, char** argv, const std::vector<std::string>& local_opts) {
  Args a;
  for (int i = 2; i < argc; ++i) {
    std::string s = argv[i];
    if (s == "--overwrite") {
      a.overrides.insert(a.overrides.end(), {"--run.overwrite", "true"});
    } else if (s == "--resume") {
      a.overrides.insert(a.overrides.end(), {"--run.resume", "true"});
    } else if (s == "--retrain") {
      a.overrides.insert(a.overrides.end(), {"--train.restart", "true"});
    } else if (s.rfind("--", 0) == 0) {
      std::string key = s.substr(2), val;
      auto eq = key.find('=');
      if (eq != std::string::npos) {
        val = key.substr(eq + 1);
        key = key.substr(0, eq);
      } else {
        if (i + 1 >= argc) throw ConfigError("--" + key + ": missing value");
        val = argv[++i];
      }
      if (std::find(local_opts.begin(), local_opts.end(), key) != local_opts.end()) {
        a.local[key] = val;
        continue;
      }
      if (key == "threads" || key == "output" || key == "seed") key = "run." + key;
      a.overrides.insert(a.overrides.end(), {"--" + key, val});
    } else {
      a.positional.push_back(s);
    }
  }
  return a;
}

// The command-local options shared by several commands, validated once here.
double gamma_S_option(Args& a) {
  const double S = a.local.count("S") ? parse_number<double>("--S", a.local["S"]) : 1.5;
  if (!(S > 0)) throw ConfigError("--S = " + a.local["S"] + ": must be > 0");
  return S;
}

int repeats_option(Args& a) {
  const int repeats = a.local.count("repeats") ? parse_number<int>("--repeats", a.local["repeats"]) : 5;
  if (repeats < 1) throw ConfigError("--repeats: must be >= 1");
  return repeats;
}

std::string command_line(int argc, char** argv) {
  std::string s;
  for (int i = 0; i < argc; ++i) s += (i ? " " : "") + std::string(argv[i]);
  return s;
}

std::string json_path_for(const std::string& h5) {
  std::filesystem::path p(h5);
  return p.replace_extension(".json").string();
}

void analyze_and_print(const std::string& file, double S, const std::string& json) {
  auto report = analysis::analyze_ensemble(file, S);
  if (!log::is_root()) return;
  std::cout << analysis::format_report(report);
  std::ofstream out(json);
  out << analysis::report_json(report);
  if (!out) throw IoError(json + ": cannot write the JSON report");
  std::cout << "JSON: " << json << "\n";
}

int dispatch(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "-h" || std::string(argv[1]) == "--help") {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  if (cmd == "--version") {
    std::cout << "latflow " << LATFLOW_VERSION_STRING << "\n";
    return 0;
  }
  if (cmd == "keys") {
    Config defaults;
    defaults.phi4.resolve(defaults.lattice.dim());
    for (const auto& k : keys()) std::printf("%-24s %-22s %s\n", k.name.c_str(), k.get(defaults).c_str(), k.help.c_str());
    std::printf("%-24s %-22s %s\n", "reference.NAME", "VALUE ERROR", "reference value printed beside observable NAME");
    return 0;
  }
  if (cmd == "analyze") {
    auto a = split_args(argc, argv, {"json", "S"});
    if (a.positional.size() != 1 || !a.overrides.empty()) throw ConfigError("usage: latflow analyze FILE.h5 [--json OUT] [--S 1.5]");
    const double S = gamma_S_option(a);
    analyze_and_print(a.positional[0], S, a.local.count("json") ? a.local["json"] : json_path_for(a.positional[0]));
    return 0;
  }
  if (cmd == "compare") {
    auto a = split_args(argc, argv, {"json", "S"});
    if (a.positional.size() != 2 || !a.overrides.empty())
      throw ConfigError("usage: latflow compare FLOW.h5 HMC.h5 [--json OUT] [--S 1.5]");
    const double S = gamma_S_option(a);
    auto c = analysis::compare_ensembles(a.positional[0], a.positional[1], S);
    std::filesystem::path def(c.flow.path);
    def.replace_filename(def.stem().string() + "_vs_hmc.json");
    const std::string json = a.local.count("json") ? a.local["json"] : def.string();
    if (log::is_root()) {
      std::cout << analysis::format_comparison(c);
      std::ofstream out(json);
      out << analysis::comparison_json(c);
      if (!out) throw IoError(json + ": cannot write the JSON comparison");
      std::cout << "JSON: " << json << "\n";
    }
    return 0;
  }
  if (cmd != "run" && cmd != "train" && cmd != "sample" && cmd != "bench" && cmd != "bench-hmc" && cmd != "hmc")
    throw ConfigError("unknown command '" + cmd + "' (try latflow --help)");
  auto a = split_args(argc, argv, {"batches", "repeats", "sizes"});
  if (a.positional.size() != 1) throw ConfigError("usage: latflow " + cmd + " CONFIG.ini [--section.key VALUE ...]");
  Config cfg = load_config(a.positional[0], a.overrides, command_line(argc, argv));
  log::info("latflow " + std::string(LATFLOW_VERSION_STRING) + " " + cmd + " " + a.positional[0] + " (" +
            std::to_string(mpi::size()) + " rank(s) x " + std::to_string(cfg.run.threads) + " thread(s))");
  if (cmd == "bench-hmc") {
    std::vector<std::int64_t> sizes{8, 16, 32, 64};
    if (a.local.count("sizes")) sizes = parse_list<std::int64_t>("--sizes", a.local["sizes"]);
    for (auto L : sizes)
      if (L < 2) throw ConfigError("--sizes: every L must be >= 2");
    const int repeats = repeats_option(a);
    bench_hmc_job(cfg, sizes, repeats);
    return 0;
  }
  if (cmd == "bench") {
    std::vector<std::int64_t> batches{64, 1024};
    if (a.local.count("batches")) batches = parse_list<std::int64_t>("--batches", a.local["batches"]);
    const int repeats = repeats_option(a);
    bench_job(cfg, batches, repeats);
    return 0;
  }
  // Refuse an existing output before spending time on training.
  if ((cmd == "run" || cmd == "sample" || cmd == "hmc") && std::filesystem::exists(cfg.run.output) &&
      !cfg.run.overwrite && !cfg.run.resume)
    throw IoError(cfg.run.output + ": exists; refusing to overwrite (pass --overwrite or set run.output)");
  if (cmd == "hmc") {
    auto out = hmc_job(cfg, command_line(argc, argv));
    if (log::is_root()) std::cout << "\n";
    analyze_and_print(out, cfg.run.gamma_S, json_path_for(out));
    return 0;
  }
  if (cmd == "train" || cmd == "run") {
    // Data-parallel over all ranks; the root writes the checkpoint, which every rank then samples from.
    train_job(cfg);
    mpi::barrier();
  }
  if (cmd == "sample" || cmd == "run") {
    auto out = sample_job(cfg, command_line(argc, argv));
    if (cmd == "run") {
      mpi::barrier();
      if (log::is_root()) std::cout << "\n";
      analyze_and_print(out, cfg.run.gamma_S, json_path_for(out));
    }
  }
  return 0;
}

// LibTorch allocates and frees activation buffers of a few MB on every call. With glibc's defaults those are
// mmapped and unmapped (or the heap is trimmed) each time, and the page faults of touching fresh pages cost
// several times the arithmetic: measured here, `latflow sample` of the tutorial model went from ~700 to ~6000
// proposals/s with these two settings. Keep freed memory in the process instead.
void tune_allocator() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}

}  // namespace

int main(int argc, char** argv) {
  tune_allocator();
  std::unique_ptr<mpi::Context> ctx;
  try {
    ctx = std::make_unique<mpi::Context>(&argc, &argv);
    return dispatch(argc, argv);
  } catch (const std::exception& e) {
    // One line: the first line of the message, with the rank under MPI.
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));
    const bool ours = dynamic_cast<const Error*>(&e) != nullptr;
    std::cerr << "latflow: " << (ours ? "error: " : "internal error: ")
              << (mpi::size() > 1 ? "rank " + std::to_string(mpi::rank()) + ": " : "") << what << std::endl;
    int code = 1;
    if (dynamic_cast<const ConfigError*>(&e)) code = 2;
    if (dynamic_cast<const IoError*>(&e)) code = 3;
    if (dynamic_cast<const NumericalError*>(&e)) code = 4;
    if (mpi::size() > 1) mpi::abort(code);
    return code;
  }
}
