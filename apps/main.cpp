// SPDX-License-Identifier: MIT
// The latflow command line: one binary, subcommands. The INI parser (Boost.Program_options) is config_parse.cpp. Every
// key of the INI files can be overridden on the command line as --section.key VALUE. Errors are caught once, at the
// bottom.
#include <csignal>
#include <cstdlib>  // defines __GLIBC__ on glibc
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <sstream>

#include "config_parse.hpp"
#include "latflow/analysis/compare.hpp"
#include "latflow/analysis/report.hpp"
#include "latflow/core/error.hpp"
#include "latflow/core/log.hpp"
#include "latflow/io/durable.hpp"
#include "latflow/io/gauge_formats.hpp"
#include "latflow/jobs/jobs.hpp"
#include "latflow/parallel/mpi.hpp"
#include "latflow_git_hash.hpp"  // LATFLOW_GIT_HASH, generated at build time (cmake/git_hash.cmake)

using namespace latflow;
using cli::parse_list;
using cli::parse_number;

namespace {

const char* kUsage = R"(usage: latflow COMMAND [ARGS] [--section.key VALUE ...]

commands:
  run CONFIG.ini       train (or reuse/continue the checkpoint), sample, analyse and print the results
  train CONFIG.ini     train the flow; writes the checkpoint (run.checkpoint, default OUTPUT.ckpt)
  sample CONFIG.ini    sample with the trained flow: independence Metropolis ensemble -> run.output (HDF5)
  hmc CONFIG.ini       HMC baseline: hmc.chains chains in the batch -> run.output (HDF5), then analyse it
  analyze FILE.h5      print the analysis table of an ensemble and write it as JSON [--json OUT] [--S 1.5]
  compare FLOW.h5 HMC.h5  flow (or heat bath) versus HMC: errors, tau_int, eff. samples per second, cost
  bench CONFIG.ini     training steps/s and proposals/s of the config's flow [--batches 64,1024] [--repeats 5]
  bench-hmc CONFIG.ini HMC trajectories/s x sites on L^d lattices [--sizes 8,16,32,64] [--repeats 5]
  export FILE.h5       the stored 4D SU(3) configurations as NERSC or ILDG files [--format nersc] [--out DIR]
  import FILE ...      read and verify NERSC or ILDG files (checksum, plaquette, link trace) and print them
  keys                 list every config key with its default and meaning

common options:
  --overwrite          replace an existing output ensemble (never done silently)
  --retrain            discard an existing checkpoint and train from scratch
  --resume             sample/hmc: continue an interrupted OUTPUT.partial (or extend a complete OUTPUT)
  --threads N          threads per process (= --run.threads)
  --output FILE        (= --run.output)
  -h, --help           this text; latflow COMMAND --help: the command's options and an example
)";

// `latflow COMMAND --help`: what the command does, its own options and an example.
const std::map<std::string, std::string>& command_help() {
  static const std::string config_keys =
      "  --section.key VALUE  override any config key (`latflow keys` lists them); shorthands --output, --threads,\n"
      "                       --seed\n";
  static const std::map<std::string, std::string> help{
      {"run",
       "usage: latflow run CONFIG.ini [--overwrite] [--retrain] [--resume] [--section.key VALUE ...]\n"
       "Trains the flow (or reuses / continues run.checkpoint, default OUTPUT.ckpt), samples sample.proposals\n"
       "proposals, runs the independence Metropolis chain into run.output (HDF5) and prints the analysis.\n" +
           config_keys + "example: latflow run configs/tutorial.ini --train.steps 1000 --output runs/t.h5\n"},
      {"train",
       "usage: latflow train CONFIG.ini [--retrain] [--section.key VALUE ...]\n"
       "Trains the flow by reverse KL; writes run.checkpoint (default OUTPUT.ckpt) every\n"
       "train.checkpoint_every steps and continues an existing one. With ne.blocks = m > 0 (and a\n"
       "protocol, ne.steps), a stochastic normalizing flow: the flow and m flow blocks between the\n"
       "protocol's updates, trained together by the reverse KL of the whole path.\n" +
           config_keys + "example: latflow train configs/e5.ini --train.steps 6000\n"},
      {"sample",
       "usage: latflow sample CONFIG.ini [--overwrite] [--resume] [--section.key VALUE ...]\n"
       "Samples with the trained checkpoint: independence Metropolis ensemble into run.output (HDF5).\n"
       "With ne.steps = n > 0, non-equilibrium proposals: each starts from the flow of ne.parameter =\n"
       "ne.start (what `train` trains with the same keys) and makes n steps of the coupling toward the\n"
       "config's value, each followed by one HMC trajectory (hmc.n_md, not tuned); the weight carries the\n"
       "work. With ne.blocks = m, the trained flow blocks act between the updates (train them first).\n"
       "A model without parameters (flow.layers = 0, a fixed prior) needs no checkpoint.\n" +
           config_keys +
           "example: latflow sample configs/tutorial.ini --run.checkpoint runs/tutorial.h5.ckpt "
           "--run.seed 2 --output runs/t2.h5\n"
           "         latflow sample configs/u1_exact.ini --flow.prior haar --ne.steps 300 "
           "--ne.parameter u1.beta --ne.start 0 --output runs/u1_ne.h5\n"
           "         latflow sample configs/u1_exact.ini --flow.prior plaquette --ne.steps 10 "
           "--ne.parameter u1.defect --ne.start 0 --output runs/u1_defect.h5\n"},
      {"hmc",
       "usage: latflow hmc CONFIG.ini [--overwrite] [--resume] [--section.key VALUE ...]\n"
       "HMC baseline: hmc.chains chains in the batch into run.output (HDF5), then the analysis.\n"
       "With hmc.flow_every = k > 0, a mixed chain: after every k trajectories each chain makes an\n"
       "independence Metropolis step with a proposal of the trained flow (run.checkpoint).\n" +
           config_keys +
           "example: latflow hmc configs/hmc_tutorial.ini --hmc.trajectories 5000\n"
           "         latflow hmc configs/u1_L16.ini --hmc.flow_every 1 --run.checkpoint "
           "runs/u1_L16.h5.ckpt --output runs/u1_mixed.h5\n"},
      {"analyze",
       "usage: latflow analyze FILE.h5 [--json OUT] [--S 1.5]\n"
       "Prints the analysis table of a complete ensemble and writes it as JSON (default FILE.json).\n"
       "  --json OUT  the JSON report's path\n"
       "  --S S       Wolff's window parameter of the Gamma method (default 1.5)\n"
       "example: latflow analyze runs/tutorial.h5 --S 2\n"},
      {"compare",
       "usage: latflow compare FLOW.h5 HMC.h5 [--json OUT] [--S 1.5]\n"
       "Flow (IMH, or a mixed chain of HMC and flow steps) or heat bath versus HMC on the same physics:\n"
       "estimates, tau_int, effective samples per second and the cost per effective sample with the\n"
       "flow's training counted (default JSON FLOW_vs_hmc.json).\n"
       "  --json OUT  the JSON report's path\n"
       "  --S S       Wolff's window parameter of the Gamma method (default 1.5)\n"
       "example: latflow compare runs/tutorial.h5 runs/hmc_tutorial.h5\n"},
      {"bench",
       "usage: latflow bench CONFIG.ini [--batches 64,1024] [--repeats 5] [--section.key VALUE ...]\n"
       "Training steps/s and proposals/s of the config's flow (median of the repeats), with the fused kernels and\n"
       "with LibTorch ops; for a phi4 model with Z2 or a Fourier prior also of the plain architecture.\n"
       "  --batches B,..  batch sizes\n"
       "  --repeats N     timed repetitions per batch size\n" +
           config_keys + "example: latflow bench configs/tutorial.ini --batches 128 --repeats 3\n"},
      {"bench-hmc",
       "usage: latflow bench-hmc CONFIG.ini [--sizes 8,16,32,64] [--repeats 5] [--section.key VALUE ...]\n"
       "HMC trajectories/s x sites of the config's theory on L^d lattices.\n"
       "  --sizes L,..    lattice sizes L\n"
       "  --repeats N     timed repetitions per size\n" +
           config_keys + "example: latflow bench-hmc configs/u1_tutorial.ini --sizes 8,16\n"},
      {"export",
       "usage: latflow export FILE.h5 [--format nersc|ildg] [--out DIR] [--overwrite]\n"
       "Writes every stored configuration of a complete 4D SU(3) ensemble (hmc.save_every > 0 for HMC) as\n"
       "DIR/STEM_c<chain>_t<trajectory>.<format>: NERSC (4D_SU3_GAUGE_3x3, IEEE64BIG, header with the\n"
       "plaquette, link trace and checksum) or ILDG (LIME, 64-bit). Existing files are refused.\n"
       "  --format F  nersc (default) or ildg\n"
       "  --out DIR   the directory (default: FILE's directory)\n"
       "example: latflow export runs/su3_4d_hmc.h5 --format nersc --out runs/su3_4d_nersc\n"},
      {"import",
       "usage: latflow import FILE [FILE ...]\n"
       "Reads NERSC (4D_SU3_GAUGE, 4D_SU3_GAUGE_3x3; IEEE32/64, big or little endian) or ILDG files,\n"
       "verifies the NERSC header's checksum, plaquette and link trace, and prints each file's lattice,\n"
       "plaquette and link trace. To start HMC or the heat bath from one: --hmc.start FILE.\n"
       "example: latflow import runs/su3_4d_nersc/*.nersc\n"},
      {"keys", "usage: latflow keys\nLists every config key with its default and meaning.\n"},
  };
  return help;
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
  write_file_atomic(json, analysis::report_json(report));
  std::cout << "JSON: " << json << "\n";
}

// latflow analyze FILE.h5: the analysis table and its JSON.
int analyze_command(int argc, char** argv) {
  auto a = split_args(argc, argv, {"json", "S"});
  if (a.positional.size() != 1 || !a.overrides.empty())
    throw ConfigError("usage: latflow analyze FILE.h5 [--json OUT] [--S 1.5]");
  const double S = gamma_S_option(a);
  analyze_and_print(a.positional[0], S, a.local.count("json") ? a.local["json"] : json_path_for(a.positional[0]));
  return 0;
}

// latflow compare FLOW.h5 HMC.h5: one physics point by two samplers.
int compare_command(int argc, char** argv) {
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
    write_file_atomic(json, analysis::comparison_json(c));
    std::cout << "JSON: " << json << "\n";
  }
  return 0;
}

// latflow export FILE.h5: the stored configurations as NERSC or ILDG files.
int export_command(int argc, char** argv) {
  auto a = split_args(argc, argv, {"format", "out"});
  const bool overwrite = a.overrides.size() == 2 && a.overrides[0] == "--run.overwrite";
  if (a.positional.size() != 1 || !(a.overrides.empty() || overwrite))
    throw ConfigError("usage: latflow export FILE.h5 [--format nersc|ildg] [--out DIR] [--overwrite]");
  const auto& h5 = a.positional[0];
  const std::string dir = a.local.count("out") ? a.local["out"] : std::filesystem::path(h5).parent_path().string();
  if (!log::is_root()) return 0;
  const auto files = io::export_ensemble(h5, a.local.count("format") ? a.local["format"] : "nersc", dir, overwrite);
  std::cout << "export: " << files.size() << " configuration(s)" << (files.empty() ? "" : ", e.g. " + files[0]) << "\n";
  return 0;
}

// latflow import FILE...: reads and verifies NERSC/ILDG files.
int import_command(int argc, char** argv) {
  auto a = split_args(argc, argv, {});
  if (a.positional.empty() || !a.overrides.empty()) throw ConfigError("usage: latflow import FILE [FILE ...]");
  for (const auto& path : a.positional) {
    const auto u = io::read_gauge_file(path);
    char b[512];
    std::snprintf(b, sizeof b, "%s: %s, SU(3) %lldx%lldx%lldx%lld, plaquette %.15g, link trace %.15g\n", path.c_str(),
                  u.format == "nersc" ? "NERSC (checksum, plaquette, link trace verified)" : "ILDG (no checksum)",
                  static_cast<long long>(u.extents[0]), static_cast<long long>(u.extents[1]),
                  static_cast<long long>(u.extents[2]), static_cast<long long>(u.extents[3]), io::mean_plaquette(u),
                  io::mean_link_trace(u));
    if (log::is_root()) std::cout << b;
  }
  return 0;
}

// The commands that run a config: train, sample, run, hmc, bench, bench-hmc.
int config_command(const std::string& cmd, int argc, char** argv) {
  auto a = split_args(argc, argv, {"batches", "repeats", "sizes"});
  if (a.positional.size() != 1) throw ConfigError("usage: latflow " + cmd + " CONFIG.ini [--section.key VALUE ...]");
  Config cfg = cli::load_config(a.positional[0], a.overrides, command_line(argc, argv));
  log::info("latflow " + std::string(LATFLOW_VERSION "-" LATFLOW_GIT_HASH) + " " + cmd + " " + a.positional[0] + " (" +
            std::to_string(mpi::size()) + " rank(s) x " + std::to_string(cfg.run.threads) + " thread(s))");
  if (!cfg.reference_note.empty()) log::info("note: " + cfg.reference_note);
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

int dispatch(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "-h" || std::string(argv[1]) == "--help") {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  if (cmd == "--version") {
    std::cout << "latflow " << LATFLOW_VERSION "-" LATFLOW_GIT_HASH << "\n";
    return 0;
  }
  for (int i = 2; i < argc; ++i)
    if (std::string(argv[i]) == "-h" || std::string(argv[i]) == "--help") {
      const auto it = command_help().find(cmd);
      if (it == command_help().end()) throw ConfigError("unknown command '" + cmd + "' (try latflow --help)");
      std::cout << it->second;
      return 0;
    }
  if (cmd == "keys") {
    std::cout << cli::keys_text();
    return 0;
  }
  if (cmd == "analyze") return analyze_command(argc, argv);
  if (cmd == "compare") return compare_command(argc, argv);
  if (cmd == "export") return export_command(argc, argv);
  if (cmd == "import") return import_command(argc, argv);
  if (cmd != "run" && cmd != "train" && cmd != "sample" && cmd != "bench" && cmd != "bench-hmc" && cmd != "hmc")
    throw ConfigError("unknown command '" + cmd + "' (try latflow --help)");
  return config_command(cmd, argc, argv);
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
  // A file-size limit (ulimit -f, quotas) must fail the write with EFBIG and give a one-line error, not kill the
  // process with SIGXFSZ halfway through a file.
  std::signal(SIGXFSZ, SIG_IGN);
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
    if (code == 3) {
      // After a failed write, skip the libraries' teardown: HDF5 1.10.8 closes the datasets whose close already
      // failed (disk full) again from MPI_Finalize and crashes there (measured: SIGSEGV in H5D_close), which
      // would turn a clean one-line error into a core dump. Our own files are already fsynced or left *.partial.
      std::cout.flush();
      std::cerr.flush();
      std::_Exit(code);
    }
    return code;
  }
}
