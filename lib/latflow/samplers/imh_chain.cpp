// SPDX-License-Identifier: MIT
#include "latflow/samplers/imh_chain.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "latflow/core/config_keys.hpp"
#include "latflow/core/seed.hpp"
#include "latflow/parallel/mpi.hpp"

namespace latflow {
namespace {

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

io::PartialSpec partial_spec(const Config& cfg, const ImhLayout& layout) {
  io::PartialSpec s;
  s.kind = "imh";
  s.identity = layout.identity;
  s.log_prefix = "sampling";
  s.count_key = "sample.proposals";
  s.unit = "proposals";
  s.count_group = "/chain";
  s.count_attr = "committed_proposals";
  s.requested = cfg.sample.proposals;
  s.foreign = ": not a resumable ensemble of latflow sample";
  s.foreign_complete = ": not an ensemble of latflow sample that can be extended";
  s.differs_complete = " was sampled with other parameters ({}); cannot extend it";
  return s;
}

}  // namespace

std::string sample_identity(const Config& cfg, const std::string& weights_hash) {
  // A protocol's model identity is the start's physics; the protocol and its updates fix the rest (a stochastic
  // normalizing flow's model identity holds them already).
  return model_identity(cfg) + "model.weights_hash = " + weights_hash + "\n" +
         identity_lines(cfg, {"run.seed", "sample.block", "sample.store_configs"}) +
         (cfg.ne.blocks == 0 ? ne_protocol_identity(cfg) : "");
}

ImhChain::ImhChain(const Config& cfg, const ImhLayout& layout, const std::function<void(io::File&)>& write_header)
    : cfg_(cfg),
      layout_(layout),
      ens_(cfg.run, partial_spec(cfg, layout)),
      N_(cfg.sample.proposals),
      block_(cfg.sample.block),
      n_blocks_((cfg.sample.proposals + cfg.sample.block - 1) / cfg.sample.block) {
  scalars_.resize(layout_.observable_names.size());
  ens_.open(
      write_header, [&](io::File& f) { create(f); }, [&](io::File& f) { return resume(f); });
  // The root knows where the committed data ends (resume() ran there).
  std::int64_t state[2] = {committed_props_, committed_cfgs_};
  mpi::broadcast(state, 2);
  complete_ = ens_.complete();
  committed_props_ = props_ = complete_ ? ens_.stored() : state[0];
  committed_cfgs_ = cfgs_ = complete_ ? 0 : state[1];
  resumed_from_ = committed_props_;
  next_block_ = complete_ ? n_blocks_ : committed_props_ / block_;
}

ImhChain::~ImhChain() = default;

std::string ImhChain::resume(io::File& f) {
  const std::int64_t P = f.read_attr_int("/chain", "committed_proposals");
  const std::int64_t C = f.read_attr_int("/chain", "committed_configs");
  ens_.refuse_fewer(P, f.path(), true);
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
  committed_props_ = Q;
  committed_cfgs_ = nc;
  return " after " + std::to_string(Q) + " proposals";
}

void ImhChain::create(io::File& f) const {
  const auto chunk = static_cast<std::uint64_t>(block_);
  const int deflate = io::kParallelDeflate;
  for (const char* d : {"/proposals/log_q", "/proposals/action", "/proposals/log_w"})
    f.create_extendible(d, io::DType::F64, {}, chunk, deflate);
  if (layout_.work) f.create_extendible("/proposals/work", io::DType::F64, {}, chunk, deflate);
  for (const auto& name : layout_.observable_names)
    f.create_extendible("/proposals/observables/" + name, io::DType::F64, {}, chunk, deflate);
  f.create_extendible("/proposals/observables/correlator", io::DType::F64, {static_cast<std::uint64_t>(layout_.L0)},
                      chunk, deflate);
  std::string names;
  for (const auto& n : layout_.observable_names) names += (names.empty() ? "" : " ") + n;
  f.write_attr("/proposals/observables", "names", names);
  f.create_extendible("/chain/proposal", io::DType::I64, {}, chunk, deflate);
  f.create_extendible("/chain/config", io::DType::I64, {}, chunk, deflate);
  f.create_extendible("/chain/accepted", io::DType::U8, {}, chunk, deflate);
  f.create_extendible("/configs/field", layout_.float32_fields ? io::DType::F32 : io::DType::F64, layout_.field_shape,
                      64, deflate);
  f.create_extendible("/configs/proposal", io::DType::I64, {}, 64, deflate);
  f.write_attr("/chain", "committed_proposals", std::int64_t{0});
  f.write_attr("/chain", "committed_configs", std::int64_t{0});
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
    flags[n_round] = round_end == N_ || ens_.commit_due();
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
  io::File& f = ens_.file();
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
  ens_.commit([&](io::File&) {
    double seconds = seconds_before_ + ens_.session_seconds();
    mpi::broadcast(&seconds, 1);  // attributes must be written with the same value on every rank
    f.write_attr("/chain", "committed_proposals", props_);
    f.write_attr("/chain", "committed_configs", cfgs_);
    f.write_attr("/chain", "sampling_seconds", seconds);
  });
  committed_props_ = props_;
  committed_cfgs_ = cfgs_;
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
  const double session = ens_.session_seconds();
  double acceptance = 0;
  ens_.finish([&](io::File& f) {
    acceptance = static_cast<double>(n_acc_ - 1) / static_cast<double>(std::max<std::int64_t>(N_ - 1, 1));
    f.write_attr("/chain", "acceptance", acceptance);
    f.write_attr("/chain", "sampling_seconds", seconds_before_ + session);
    f.write_attr("/chain", "proposals_per_second", static_cast<double>(N_ - resumed_from_) / session);
  });
  return acceptance;
}

}  // namespace latflow
