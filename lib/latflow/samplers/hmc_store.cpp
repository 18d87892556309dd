// SPDX-License-Identifier: MIT
#include "latflow/samplers/hmc_store.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include "latflow/analysis/gamma.hpp"
#include "latflow/core/config_keys.hpp"
#include "latflow/core/error.hpp"
#include "latflow/core/log.hpp"
#include "latflow/parallel/mpi.hpp"

namespace latflow {
namespace {

std::string observable_dset(const std::string& name) { return "/chains/observables/" + name; }

io::PartialSpec partial_spec(const Config& cfg, const HmcLayout& layout) {
  io::PartialSpec s;
  s.kind = layout.flow_steps ? "mixed" : "hmc";
  s.identity = layout.identity;
  s.log_prefix = "hmc";
  s.count_key = "hmc.trajectories";
  s.unit = "trajectories";
  s.count_group = "/chains";
  s.count_attr = "committed_trajectories";
  s.requested = cfg.hmc.trajectories;
  s.foreign =
      ": not a resumable " + s.kind + " ensemble of latflow hmc" + (layout.flow_steps ? " (hmc.flow_every > 0)" : "");
  s.foreign_complete = s.foreign;
  return s;
}

}  // namespace

std::string hmc_identity(const Config& cfg, const std::string& weights_hash) {
  // The physics lines of the model identity (not the flow's, unless the chain makes flow steps), the seed and
  // every HMC key but the number of trajectories, which a resume may raise. A pure HMC run's identity has no
  // flow_every line, so files of earlier versions resume.
  const auto& h = cfg.hmc;
  std::istringstream is(model_identity(cfg));
  std::string out;
  for (std::string line; std::getline(is, line);)
    if (h.flow_every > 0 || line.rfind("flow.", 0) != 0) out += line + "\n";
  out += identity_lines(cfg, {"run.seed", "hmc.integrator", "hmc.trajectory_length", "hmc.n_md", "hmc.jitter",
                              "hmc.target_acceptance", "hmc.chains", "hmc.thermalization", "hmc.save_every"});
  if (!h.start.empty()) out += identity_lines(cfg, {"hmc.start"});
  // Only a heat-bath run has algorithm lines, so HMC files of earlier versions resume.
  if (h.algorithm != UpdateAlgorithm::hmc) out += identity_lines(cfg, {"hmc.algorithm", "hmc.overrelax"});
  if (h.flow_every > 0) out += identity_lines(cfg, {"hmc.flow_every"}) + "flow.weights_hash = " + weights_hash + "\n";
  return out;
}

HmcStore::HmcStore(const Config& cfg, const HmcLayout& layout, std::int64_t c0, std::int64_t nc,
                   const std::function<void(io::File&)>& write_header)
    : cfg_(cfg),
      layout_(layout),
      ens_(cfg.run, partial_spec(cfg, layout)),
      C_(cfg.hmc.chains),
      c0_(c0),
      nc_(nc),
      T_(cfg.hmc.trajectories) {
  scalars_.resize(layout_.observable_names.size());
  ens_.open(
      write_header, [&](io::File& f) { create(f); }, [&](io::File& f) { return resume(f); });
  // The root read the committed state (resume() ran there). state: committed trajectories, thermalised, n_md,
  // state slot.
  std::int64_t state[4] = {committed_, thermalized_, n_md_, slot_};
  // seconds, check seconds, max dx, max dp, flow seconds of earlier sessions
  double earlier[5] = {totals_.seconds, totals_.check_seconds, totals_.max_dx, totals_.max_dp, totals_.flow_seconds};
  mpi::broadcast(state, 4);
  mpi::broadcast(earlier, 5);
  committed_ = trajectories_ = resumed_from_ = state[0];
  thermalized_ = state[1] != 0;
  n_md_ = static_cast<int>(state[2]);
  slot_ = state[3];
  complete_ = ens_.complete();
  totals_.seconds = earlier[0];
  totals_.check_seconds = earlier[1];
  totals_.max_dx = earlier[2];
  totals_.max_dp = earlier[3];
  totals_.flow_seconds = earlier[4];
}

HmcStore::~HmcStore() = default;

std::string HmcStore::resume(io::File& f) {
  thermalized_ = f.read_attr_int("/chains", "thermalized") != 0;
  committed_ = thermalized_ ? f.read_attr_int("/chains", "committed_trajectories") : 0;
  ens_.refuse_fewer(committed_, f.path(), true);
  const auto rows = static_cast<std::uint64_t>(committed_);
  for (const auto& name : layout_.observable_names) f.resize(observable_dset(name), rows);
  for (const char* d : {"/chains/observables/correlator", "/chains/dH", "/chains/accepted"}) f.resize(d, rows);
  if (layout_.flow_steps) f.resize("/chains/flow_accepted", rows);
  const std::int64_t se = cfg_.hmc.save_every;
  if (se > 0) {
    f.resize("/configs/field", rows / static_cast<std::uint64_t>(se));
    f.resize("/configs/trajectory", rows / static_cast<std::uint64_t>(se));
  }
  if (thermalized_) {
    n_md_ = static_cast<int>(f.read_attr_int("/chains", "n_md"));
    slot_ = f.read_attr_int("/chains", "state_slot");
    totals_.seconds = f.read_attr_double("/chains", "seconds");
    totals_.check_seconds = f.read_attr_double("/chains", "check_seconds");
    totals_.max_dx = f.read_attr_double("/chains", "max_dx");
    totals_.max_dp = f.read_attr_double("/chains", "max_dp");
    if (layout_.flow_steps) totals_.flow_seconds = f.read_attr_double("/chains", "flow_seconds");
  }
  f.write_attr("/chains", "committed_trajectories", committed_);
  return thermalized_ ? " after " + std::to_string(committed_) + " trajectories"
                      : " from the start (it was still thermalising)";
}

void HmcStore::create(io::File& f) const {
  const std::uint64_t C = static_cast<std::uint64_t>(C_);
  const auto L0 = static_cast<std::uint64_t>(layout_.L0);
  const std::uint64_t chunk = std::max<std::uint64_t>(1, std::min<std::uint64_t>(256, 16384 / (C * L0)));
  const int deflate = io::kParallelDeflate;
  for (const auto& name : layout_.observable_names)
    f.create_extendible(observable_dset(name), io::DType::F64, {C}, chunk, deflate);
  f.create_extendible("/chains/observables/correlator", io::DType::F64, {C, L0}, chunk, deflate);
  f.create_extendible("/chains/dH", io::DType::F64, {C}, chunk, deflate);
  f.create_extendible("/chains/accepted", io::DType::U8, {C}, chunk, deflate);
  if (layout_.flow_steps) f.create_extendible("/chains/flow_accepted", io::DType::U8, {C}, chunk, deflate);
  std::string names;
  for (const auto& n : layout_.observable_names) names += (names.empty() ? "" : " ") + n;
  f.write_attr("/chains/observables", "names", names);
  std::vector<std::uint64_t> row{C};
  row.insert(row.end(), layout_.field_shape.begin(), layout_.field_shape.end());
  if (cfg_.hmc.save_every > 0) {
    f.create_extendible("/configs/field", io::DType::F64, row, 4, deflate);
    f.create_extendible("/configs/trajectory", io::DType::I64, {}, 64, deflate);
  }
  f.create_extendible("/resume/field", io::DType::F64, row, 1, deflate);
  f.resize("/resume/field", 2);
  f.write_attr("/chains", "thermalized", std::int64_t{0});
  f.write_attr("/chains", "committed_trajectories", std::int64_t{0});
}

std::vector<double> HmcStore::resume_field() {
  // Independent read of this rank's columns of the committed state slot.
  const auto row = ens_.file().read_f64("/resume/field", static_cast<std::uint64_t>(slot_), 1);
  const auto V = layout_.V;
  return {row.begin() + c0_ * V, row.begin() + (c0_ + nc_) * V};
}

void HmcStore::set_thermalized(int n_md, const std::vector<double>& x) {
  n_md_ = n_md;
  thermalized_ = true;
  x_ = x;
  commit();
}

void HmcStore::add(const HmcRow& row) {
  const std::size_t k = scalars_.size();
  for (std::int64_t c = 0; c < nc_; ++c)
    for (std::size_t j = 0; j < k; ++j) scalars_[j].push_back(row.scalars[c * k + j]);
  corr_.insert(corr_.end(), row.correlator.begin(), row.correlator.end());
  dH_.insert(dH_.end(), row.dH.begin(), row.dH.end());
  acc_.insert(acc_.end(), row.accepted.begin(), row.accepted.end());
  if (layout_.flow_steps) {
    if (row.flow_accepted.size() != static_cast<std::size_t>(nc_))
      throw Error("HmcStore::add: a mixed chain's row needs one flow_accepted entry per chain");
    flow_acc_.insert(flow_acc_.end(), row.flow_accepted.begin(), row.flow_accepted.end());
  }
  const auto& x = row.x;
  x_ = x;
  max_dx_ = std::max(max_dx_, row.max_dx);
  max_dp_ = std::max(max_dp_, row.max_dp);
  check_seconds_ += row.check_seconds;
  flow_seconds_ += row.flow_seconds;
  ++rows_;
  ++trajectories_;
  const std::int64_t se = cfg_.hmc.save_every;
  if (se > 0 && trajectories_ % se == 0) {
    config_x_.insert(config_x_.end(), x.begin(), x.end());
    config_traj_.push_back(cfg_.hmc.thermalization + trajectories_ - 1);
  }
  std::uint8_t now = 0;
  if (mpi::rank() == 0) now = trajectories_ == T_ || ens_.commit_due();
  mpi::broadcast(&now, 1);
  if (now) commit();
}

void HmcStore::commit() {
  io::File& f = ens_.file();
  const bool root = mpi::rank() == 0;
  const auto T = static_cast<std::uint64_t>(trajectories_);
  const std::vector<io::RowRange> rows{{static_cast<std::uint64_t>(committed_), static_cast<std::uint64_t>(rows_)}};
  const io::RowRange cols{static_cast<std::uint64_t>(c0_), static_cast<std::uint64_t>(nc_)};
  // A rank without chains (never: hmc_job requires chains >= ranks) would pass no rows.
  for (std::size_t j = 0; j < scalars_.size(); ++j) {
    f.resize(observable_dset(layout_.observable_names[j]), T);
    f.write_rows(observable_dset(layout_.observable_names[j]), rows, io::DType::F64, scalars_[j].data(), cols);
  }
  f.resize("/chains/observables/correlator", T);
  f.write_rows("/chains/observables/correlator", rows, io::DType::F64, corr_.data(), cols);
  f.resize("/chains/dH", T);
  f.write_rows("/chains/dH", rows, io::DType::F64, dH_.data(), cols);
  f.resize("/chains/accepted", T);
  f.write_rows("/chains/accepted", rows, io::DType::U8, acc_.data(), cols);
  if (layout_.flow_steps) {
    f.resize("/chains/flow_accepted", T);
    f.write_rows("/chains/flow_accepted", rows, io::DType::U8, flow_acc_.data(), cols);
  }
  const std::int64_t se = cfg_.hmc.save_every;
  if (se > 0) {
    const auto n_cfg = static_cast<std::uint64_t>(trajectories_ / se);
    const auto new_cfg = static_cast<std::uint64_t>(config_traj_.size());
    const std::vector<io::RowRange> cfg_rows{{n_cfg - new_cfg, new_cfg}};
    f.resize("/configs/field", n_cfg);
    f.resize("/configs/trajectory", n_cfg);
    f.write_rows("/configs/field", cfg_rows, io::DType::F64, config_x_.data(), cols);
    f.write_rows("/configs/trajectory", root ? cfg_rows : std::vector<io::RowRange>{}, io::DType::I64,
                 config_traj_.data());
  }
  // The chains' current state into the slot the last commit does not reference.
  const std::int64_t slot = 1 - slot_;
  f.write_rows("/resume/field", {{static_cast<std::uint64_t>(slot), 1}}, io::DType::F64, x_.data(), cols);
  ens_.commit([&](io::File&) {
    // Attribute values must be equal on every rank: reduce the reversibility figures first.
    double figures[3] = {max_dx_, max_dp_, check_seconds_};
    mpi::allreduce_max(figures, 3);
    // Wall time and flow-step time as the root measured them.
    double seconds[2] = {totals_.seconds + ens_.session_seconds(), totals_.flow_seconds + flow_seconds_};
    mpi::broadcast(seconds, 2);
    f.write_attr("/chains", "n_md", static_cast<std::int64_t>(n_md_));
    f.write_attr("/chains", "state_slot", slot);
    f.write_attr("/chains", "seconds", seconds[0]);
    if (layout_.flow_steps) f.write_attr("/chains", "flow_seconds", seconds[1]);
    f.write_attr("/chains", "check_seconds", totals_.check_seconds + figures[2]);
    f.write_attr("/chains", "max_dx", std::max(totals_.max_dx, figures[0]));
    f.write_attr("/chains", "max_dp", std::max(totals_.max_dp, figures[1]));
    f.write_attr("/chains", "thermalized", std::int64_t{1});
    f.write_attr("/chains", "committed_trajectories", trajectories_);
  });
  slot_ = slot;
  committed_ = trajectories_;
  for (auto& s : scalars_) s.clear();
  corr_.clear();
  dH_.clear();
  acc_.clear();
  flow_acc_.clear();
  config_x_.clear();
  config_traj_.clear();
  rows_ = 0;
}

void HmcStore::finish(const std::function<void(io::File&, const HmcTotals&)>& write_summary) {
  if (complete_) return;
  if (trajectories_ > committed_ || rows_ > 0) commit();
  ens_.finish([&](io::File& f) {
    HmcTotals t;
    t.n_md = n_md_;
    t.seconds = f.read_attr_double("/chains", "seconds");
    t.check_seconds = f.read_attr_double("/chains", "check_seconds");
    t.max_dx = f.read_attr_double("/chains", "max_dx");
    t.max_dp = f.read_attr_double("/chains", "max_dp");
    // Acceptance and <exp(-dH)> from the stored data of all sessions; the Gamma method over the chains.
    const auto dH = f.read_f64("/chains/dH");
    const auto acc = f.read_u8("/chains/accepted");
    const auto C = static_cast<std::size_t>(C_), T = dH.size() / C;
    std::vector<std::vector<double>> replicas(C, std::vector<double>(T));
    std::int64_t n_acc = 0, diverged = 0;
    for (std::size_t i = 0; i < T; ++i)
      for (std::size_t c = 0; c < C; ++c) {
        // A trajectory whose energy blew up (dH = +inf, or NaN from inf - inf) was rejected; its exp(-dH) is 0.
        const double d = dH[i * C + c];
        const bool blown = std::isnan(d) || d == std::numeric_limits<double>::infinity();
        diverged += blown;
        replicas[c][i] = blown ? 0.0 : std::exp(-d);
        n_acc += acc[i * C + c];
      }
    if (diverged > 0)
      log::warn("hmc: " + std::to_string(diverged) +
                " trajectories diverged (dH not finite) and were rejected: the "
                "MD step is near the integrator's stability limit (raise hmc.n_md or hmc.target_acceptance)");
    const auto e = analysis::gamma_method(replicas);
    t.exp_mdH = e.mean;
    t.exp_mdH_error = e.error;
    t.acceptance = static_cast<double>(n_acc) / static_cast<double>(T * C);
    if (layout_.flow_steps) {
      t.flow_seconds = f.read_attr_double("/chains", "flow_seconds");
      std::int64_t n_flow_acc = 0;
      for (auto a : f.read_u8("/chains/flow_accepted")) {
        t.flow_proposals += a != kNoFlowStep;
        n_flow_acc += a == 1;
      }
      t.flow_acceptance =
          t.flow_proposals > 0 ? static_cast<double>(n_flow_acc) / static_cast<double>(t.flow_proposals) : 0;
    }
    write_summary(f, t);
  });
}

}  // namespace latflow
