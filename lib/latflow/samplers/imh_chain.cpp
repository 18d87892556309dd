// SPDX-License-Identifier: MIT
#include "latflow/samplers/imh_chain.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <sstream>

#include "latflow/core/error.hpp"
#include "latflow/io/durable.hpp"
#include "latflow/core/log.hpp"
#include "latflow/core/provenance.hpp"
#include "latflow/core/seed.hpp"
#include "latflow/io/ensemble.hpp"
#include "latflow/parallel/mpi.hpp"

namespace latflow {
namespace {

// Datasets that ranks write in parallel are uncompressed: with parallel HDF5 1.10.8 (Debian 12) a second
// collective write into an extended, deflate-filtered dataset hung in our tests, and uncompressed chunks go
// straight through MPI-IO without being routed through one owner rank per chunk. (Random float mantissas
// compress poorly anyway.)
constexpr int kDeflate = 0;

const char* const kPerProposal[] = {"/proposals/log_q", "/proposals/action", "/proposals/log_w",
                                    "/proposals/observables/correlator"};
const char* const kChain[] = {"/chain/proposal", "/chain/config", "/chain/accepted"};

// Appends rows [row0, row0 + n) to a list of ranges, merging with the last range when contiguous.
void add_range(std::vector<io::RowRange>& ranges, std::uint64_t row0, std::uint64_t n) {
  if (!ranges.empty() && ranges.back().row0 + ranges.back().rows == row0)
    ranges.back().rows += n;
  else
    ranges.push_back({row0, n});
}

}  // namespace

std::string sample_identity(const Config& cfg, const std::string& weights_hash) {
  std::ostringstream os;
  os << model_identity(cfg.ne.steps > 0 ? ne_stage(cfg, 0) : cfg) << "model.weights_hash = " << weights_hash << "\n"
     << "run.seed = " << cfg.run.seed << "\n"
     << "sample.block = " << cfg.sample.block << "\n"
     << "sample.store_configs = " << (cfg.sample.store_configs ? "true" : "false") << "\n";
  if (cfg.ne.steps > 0) {
    // The model identity above is the start's physics; the protocol and its HMC steps fix the rest.
    std::istringstream target(physics_identity(cfg));
    for (std::string line; std::getline(target, line);) os << "ne.target." << line << "\n";
    os.precision(17);
    os << "ne.steps = " << cfg.ne.steps << "\n"
       << "ne.parameter = " << cfg.ne.parameter << "\n"
       << "ne.start = " << cfg.ne.start << "\n"
       << "hmc.integrator = " << cfg.hmc.integrator << "\n"
       << "hmc.trajectory_length = " << cfg.hmc.trajectory_length << "\n"
       << "hmc.n_md = " << cfg.hmc.n_md << "\n"
       << "hmc.jitter = " << cfg.hmc.jitter << "\n";
    // Only heat-bath protocols have these lines, so files of earlier versions resume.
    if (cfg.hmc.algorithm != "hmc")
      os << "hmc.algorithm = " << cfg.hmc.algorithm << "\nhmc.overrelax = " << cfg.hmc.overrelax << "\n";
  }
  return os.str();
}

ImhChain::ImhChain(const Config& cfg, const ImhLayout& layout, const std::function<void(io::File&)>& write_header)
    : cfg_(cfg),
      layout_(layout),
      out_(cfg.run.output),
      partial_(cfg.run.output + ".partial"),
      N_(cfg.sample.proposals),
      block_(cfg.sample.block),
      n_blocks_((cfg.sample.proposals + cfg.sample.block - 1) / cfg.sample.block) {
  scalars_.resize(layout_.observable_names.size());
  // The root prepares the file serially (HDF5 cannot write the variable-length header strings in parallel)
  // and tells the others where the committed data ends; then every rank opens it through MPI-IO.
  std::int64_t state[3] = {0, 0, 0};  // committed proposals, committed configurations, nothing to do
  if (mpi::rank() == 0) {
    setup_root(write_header);
    state[0] = committed_props_;
    state[1] = committed_cfgs_;
    state[2] = complete_ ? 1 : 0;
  }
  mpi::broadcast(state, 3);
  committed_props_ = props_ = state[0];
  committed_cfgs_ = cfgs_ = state[1];
  complete_ = state[2] != 0;
  resumed_from_ = committed_props_;
  next_block_ = complete_ ? n_blocks_ : committed_props_ / block_;
  if (!complete_) file_ = io::File::open_parallel(partial_);
  t0_ = last_commit_ = std::chrono::steady_clock::now();
}

ImhChain::~ImhChain() = default;

void ImhChain::setup_root(const std::function<void(io::File&)>& write_header) {
  const bool resume = cfg_.run.resume;
  refuse_existing_output(out_, partial_, resume, cfg_.run.overwrite);
  if (resume && !file_exists(partial_) && file_exists(out_)) {
    // Extending a complete ensemble: it becomes OUTPUT.partial again until the extension is complete.
    std::int64_t stored = 0;
    {
      auto f = io::File::open_read(out_);
      if (!f.has_attr("/", "resume_identity") || f.read_attr_string("/", "kind") != "imh")
        throw IoError(out_ + ": not an ensemble of latflow sample that can be extended");
      const auto diff = first_difference(f.read_attr_string("/", "resume_identity"), layout_.identity);
      if (!diff.empty())
        throw ConfigError(out_ + " was sampled with other parameters (" + diff + "); cannot extend it");
      stored = f.read_attr_int("/chain", "committed_proposals");
    }
    if (N_ < stored)
      throw ConfigError("sample.proposals = " + std::to_string(N_) + " is fewer than the " +
                        std::to_string(stored) + " proposals in " + out_);
    if (N_ == stored) {
      log::info("sampling: " + out_ + " is complete with " + std::to_string(stored) + " proposals; nothing to do");
      complete_ = true;
      committed_props_ = stored;
      return;
    }
    std::error_code ec;
    std::filesystem::rename(out_, partial_, ec);
    if (ec) throw IoError(out_ + ": cannot rename to " + partial_ + " (" + ec.message() + ")");
  }
  if (resume && file_exists(partial_)) {
    auto f = io::File::open_write(partial_);
    if (!f.has_attr("/", "resume_identity") || f.read_attr_string("/", "kind") != "imh")
      throw IoError(partial_ + ": not a resumable ensemble of latflow sample");
    const auto diff = first_difference(f.read_attr_string("/", "resume_identity"), layout_.identity);
    if (!diff.empty())
      throw ConfigError(partial_ + " was written with other parameters (" + diff +
                        "); resume with the same ones, or pass --overwrite to start afresh");
    const std::int64_t P = f.read_attr_int("/chain", "committed_proposals");
    const std::int64_t C = f.read_attr_int("/chain", "committed_configs");
    if (N_ < P)
      throw ConfigError("sample.proposals = " + std::to_string(N_) + " is fewer than the " + std::to_string(P) +
                        " committed proposals in " + partial_);
    // Continue after the last whole block; a short last block is made again when more proposals are asked
    // for (its stream then fills a longer block).
    const std::int64_t Q = (P % block_ == 0 || P == N_) ? P : P / block_ * block_;
    std::int64_t nc = 0;
    if (C > 0) {
      const auto props = f.read_i64("/configs/proposal", 0, C);
      nc = std::lower_bound(props.begin(), props.end(), Q) - props.begin();
    }
    // Drop the uncommitted tail (and the configurations of dropped proposals).
    for (const char* d : kPerProposal) f.resize(d, static_cast<std::uint64_t>(Q));
    if (layout_.work) f.resize("/proposals/work", static_cast<std::uint64_t>(Q));
    for (const auto& name : layout_.observable_names)
      f.resize("/proposals/observables/" + name, static_cast<std::uint64_t>(Q));
    for (const char* d : kChain) f.resize(d, static_cast<std::uint64_t>(Q));
    f.resize("/configs/field", static_cast<std::uint64_t>(nc));
    f.resize("/configs/proposal", static_cast<std::uint64_t>(nc));
    if (Q > 0) {
      cur_prop_ = f.read_i64("/chain/proposal", Q - 1, 1)[0];
      cur_cfg_ = f.read_i64("/chain/config", Q - 1, 1)[0];
      cur_lw_ = f.read_f64("/proposals/log_w", static_cast<std::uint64_t>(cur_prop_), 1)[0];
      for (auto a : f.read_u8("/chain/accepted", 0, Q)) n_acc_ += a;
    }
    if (f.has_attr("/chain", "sampling_seconds")) seconds_before_ = f.read_attr_double("/chain", "sampling_seconds");
    f.write_attr("/chain", "committed_proposals", Q);
    f.write_attr("/chain", "committed_configs", nc);
    f.write_attr("/", "status", "running");
    f.flush();
    committed_props_ = Q;
    committed_cfgs_ = nc;
    log::info("sampling: resuming " + partial_ + " after " + std::to_string(Q) + " proposals");
    return;
  }
  if (resume) log::info("sampling: no interrupted run at " + partial_ + "; starting afresh");

  // A fresh OUTPUT.partial is built under a temporary name and renamed into place once its header and empty
  // datasets are on disk, so a kill during its creation never leaves an unreadable OUTPUT.partial.
  ensure_parent_dir(out_);
  const std::string tmp = partial_ + ".tmp";
  {
    auto f = io::File::create(tmp, true);
    write_header(f);
    f.write_attr("/", "resume_identity", layout_.identity);
    const auto chunk = static_cast<std::uint64_t>(block_);
    for (const char* d : {"/proposals/log_q", "/proposals/action", "/proposals/log_w"})
      f.create_extendible(d, io::DType::F64, {}, chunk, kDeflate);
    if (layout_.work) f.create_extendible("/proposals/work", io::DType::F64, {}, chunk, kDeflate);
    for (const auto& name : layout_.observable_names)
      f.create_extendible("/proposals/observables/" + name, io::DType::F64, {}, chunk, kDeflate);
    f.create_extendible("/proposals/observables/correlator", io::DType::F64, {static_cast<std::uint64_t>(layout_.L0)},
                        chunk, kDeflate);
    std::string names;
    for (const auto& n : layout_.observable_names) names += (names.empty() ? "" : " ") + n;
    f.write_attr("/proposals/observables", "names", names);
    f.create_extendible("/chain/proposal", io::DType::I64, {}, chunk, kDeflate);
    f.create_extendible("/chain/config", io::DType::I64, {}, chunk, kDeflate);
    f.create_extendible("/chain/accepted", io::DType::U8, {}, chunk, kDeflate);
    f.create_extendible("/configs/field", layout_.float32_fields ? io::DType::F32 : io::DType::F64,
                        layout_.field_shape, 64, kDeflate);
    f.create_extendible("/configs/proposal", io::DType::I64, {}, 64, kDeflate);
    f.write_attr("/chain", "committed_proposals", std::int64_t{0});
    f.write_attr("/chain", "committed_configs", std::int64_t{0});
    f.write_attr("/", "status", "running");
    f.flush();
  }
  commit_file(tmp, partial_);
}

void ImhChain::add_round(const ImhBlock& mine) {
  const int R = mpi::size();
  const bool root = mpi::rank() == 0;
  const std::int64_t first = next_block_ * block_;
  const std::int64_t round_end = std::min(N_, (next_block_ + R) * block_);
  const std::int64_t n_round = round_end - first;

  std::vector<double> lw = mine.log_w;
  if (lw.empty()) {
    lw.resize(static_cast<std::size_t>(mine.n));
    for (std::int64_t i = 0; i < mine.n; ++i) lw[i] = -mine.S[i] - mine.log_q[i];
  }
  // Blocks are whole except the very last one, so rank order is block order.
  const std::vector<double> all = mpi::gather(lw);

  // One byte a proposal (accepted or not) plus the commit decision, from the root to all.
  std::vector<std::uint8_t> flags(static_cast<std::size_t>(n_round + 1), 0);
  if (root) {
    std::int64_t next_cfg = cfgs_;
    for (std::int64_t i = 0; i < n_round; ++i) {
      const std::int64_t p = first + i;
      // Step 0 starts the chain at the first proposal; later steps accept with min(1, w'/w).
      bool accept = p == 0;
      if (!accept) {
        const double u = uniform01(derive_seed(cfg_.run.seed, "accept", static_cast<std::uint64_t>(p)));
        accept = std::log(u) < all[i] - cur_lw_;
      }
      if (accept) {
        cur_lw_ = all[i];
        cur_prop_ = p;
        ++n_acc_;
        if (cfg_.sample.store_configs) cur_cfg_ = next_cfg++;
      }
      trail_.push_back(cur_prop_);
      trail_cfg_.push_back(cur_cfg_);
      accepted_.push_back(accept);
      flags[i] = accept;
    }
    const double since = std::chrono::duration<double>(std::chrono::steady_clock::now() - last_commit_).count();
    flags[n_round] = round_end == N_ || since >= cfg_.run.commit_seconds;
  }
  mpi::broadcast(flags.data(), static_cast<std::int64_t>(flags.size()));

  if (mine.n > 0) {
    const auto row0 = static_cast<std::uint64_t>(mine.block * block_);
    add_range(prop_rows_, row0, static_cast<std::uint64_t>(mine.n));
    log_q_.insert(log_q_.end(), mine.log_q.begin(), mine.log_q.end());
    S_.insert(S_.end(), mine.S.begin(), mine.S.end());
    log_w_.insert(log_w_.end(), lw.begin(), lw.end());
    work_.insert(work_.end(), mine.work.begin(), mine.work.end());
    corr_.insert(corr_.end(), mine.correlator.begin(), mine.correlator.end());
    const std::size_t k = scalars_.size();
    for (std::int64_t i = 0; i < mine.n; ++i)
      for (std::size_t j = 0; j < k; ++j) scalars_[j].push_back(mine.scalars[i * k + j]);
  }
  if (cfg_.sample.store_configs) {
    // Configuration rows follow the acceptance order: every rank counts the accepted proposals before its own.
    std::int64_t row = cfgs_;
    const std::int64_t my_first = mine.n > 0 ? mine.block * block_ - first : n_round;
    for (std::int64_t i = 0; i < n_round; ++i) {
      if (!flags[i]) continue;
      if (i >= my_first && i < my_first + mine.n) {
        const std::int64_t local = i - my_first;
        add_range(cfg_rows_, static_cast<std::uint64_t>(row), 1);
        cfg_prop_.push_back(first + i);
        cfg_x_.insert(cfg_x_.end(), mine.x.begin() + local * layout_.V, mine.x.begin() + (local + 1) * layout_.V);
      }
      ++row;
    }
    cfgs_ = row;
  }
  props_ = round_end;
  next_block_ += R;
  if (flags[n_round]) commit();
}

void ImhChain::commit() {
  io::File& f = *file_;
  const bool root = mpi::rank() == 0;
  const auto P = static_cast<std::uint64_t>(props_), C = static_cast<std::uint64_t>(cfgs_);
  for (const char* d : kPerProposal) f.resize(d, P);
  if (layout_.work) f.resize("/proposals/work", P);
  for (const auto& name : layout_.observable_names) f.resize("/proposals/observables/" + name, P);
  for (const char* d : kChain) f.resize(d, P);
  f.resize("/configs/field", C);
  f.resize("/configs/proposal", C);

  f.write_rows("/proposals/log_q", prop_rows_, io::DType::F64, log_q_.data());
  f.write_rows("/proposals/action", prop_rows_, io::DType::F64, S_.data());
  f.write_rows("/proposals/log_w", prop_rows_, io::DType::F64, log_w_.data());
  if (layout_.work) f.write_rows("/proposals/work", prop_rows_, io::DType::F64, work_.data());
  f.write_rows("/proposals/observables/correlator", prop_rows_, io::DType::F64, corr_.data());
  for (std::size_t j = 0; j < scalars_.size(); ++j)
    f.write_rows("/proposals/observables/" + layout_.observable_names[j], prop_rows_, io::DType::F64,
                 scalars_[j].data());
  std::vector<io::RowRange> chain_rows;
  if (root && props_ > committed_props_)
    chain_rows.push_back({static_cast<std::uint64_t>(committed_props_), P - committed_props_});
  f.write_rows("/chain/proposal", chain_rows, io::DType::I64, trail_.data());
  f.write_rows("/chain/config", chain_rows, io::DType::I64, trail_cfg_.data());
  f.write_rows("/chain/accepted", chain_rows, io::DType::U8, accepted_.data());
  if (layout_.float32_fields) {
    const std::vector<float> xf(cfg_x_.begin(), cfg_x_.end());
    f.write_rows("/configs/field", cfg_rows_, io::DType::F32, xf.data());
  } else {
    f.write_rows("/configs/field", cfg_rows_, io::DType::F64, cfg_x_.data());
  }
  f.write_rows("/configs/proposal", cfg_rows_, io::DType::I64, cfg_prop_.data());
  // The data reaches the file before the committed lengths say it exists.
  f.flush();
  const auto now = std::chrono::steady_clock::now();
  double seconds = seconds_before_ + std::chrono::duration<double>(now - t0_).count();
  mpi::broadcast(&seconds, 1);  // attributes must be written with the same value on every rank
  f.write_attr("/chain", "committed_proposals", props_);
  f.write_attr("/chain", "committed_configs", cfgs_);
  f.write_attr("/chain", "sampling_seconds", seconds);
  f.flush();
  committed_props_ = props_;
  committed_cfgs_ = cfgs_;
  last_commit_ = now;
  prop_rows_.clear();
  log_q_.clear();
  S_.clear();
  log_w_.clear();
  work_.clear();
  corr_.clear();
  for (auto& s : scalars_) s.clear();
  trail_.clear();
  trail_cfg_.clear();
  accepted_.clear();
  cfg_rows_.clear();
  cfg_prop_.clear();
  cfg_x_.clear();
}

double ImhChain::finish() {
  if (complete_) return 0;
  if (props_ > committed_props_) commit();
  const double session = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  file_.reset();  // collective close
  mpi::barrier();
  double acceptance = 0;
  if (mpi::rank() == 0) {
    auto f = io::File::open_write(partial_);
    acceptance = static_cast<double>(n_acc_ - 1) / static_cast<double>(std::max<std::int64_t>(N_ - 1, 1));
    f.write_attr("/chain", "acceptance", acceptance);
    f.write_attr("/chain", "sampling_seconds", seconds_before_ + session);
    f.write_attr("/chain", "proposals_per_second", static_cast<double>(N_ - resumed_from_) / session);
    f.write_attr("/", "finished", iso_time_utc());
    f.write_attr("/", "status", "complete");
    f.flush();
  }
  if (mpi::rank() == 0) commit_file(partial_, out_);
  mpi::barrier();
  return acceptance;
}

}  // namespace latflow
