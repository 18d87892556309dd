// SPDX-License-Identifier: MIT
// The crash-safe, MPI-distributed HMC ensemble file (torch-free).
//
// Chains are split over the ranks in contiguous ranges of global chain index (rank r holds chains
// [C r / R, C (r + 1) / R)); every random number of chain c in trajectory t is keyed by (seed, purpose, c, t), so
// the ensemble does not depend on R. Each rank writes its own columns of the [T, C, ...] datasets with collective
// parallel-HDF5 writes; nothing is gathered on the root but the n_md tuning's acceptance sum (one double per
// chain per thermalisation trajectory) and one commit byte per trajectory.
//
// Write protocol: as for the IMH chain (imh_chain.hpp; the shared part is io::PartialEnsemble). Rows are buffered
// and written at commits (every run.commit_seconds and at the end); a commit writes the rows, the chains' current
// fields into the state slot not referenced by the last commit (/resume/field has two slots, so a torn write
// never hits the committed state), flushes, and only then advances the /chains attributes
// committed_trajectories, state_slot, n_md (the stored configurations follow from committed_trajectories and
// hmc.save_every). The first commit is made right after thermalisation (a crash before it redoes the
// thermalisation, which is cheap and keeps the tuning state out of the file). A resume truncates the uncommitted
// tail, reloads the fields and n_md, and continues with the next trajectory: bitwise the uninterrupted run.
// Mixed chains (HmcLayout::flow_steps, kind "mixed") add /chains/flow_accepted and the flow steps' seconds.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "latflow/core/params.hpp"
#include "latflow/io/h5.hpp"
#include "latflow/io/partial_ensemble.hpp"

namespace latflow {

struct HmcLayout {
  std::vector<std::string> observable_names;
  std::int64_t L0 = 0, V = 0;
  std::vector<std::uint64_t> field_shape;  // lattice extents
  std::string identity;                    // "key = value" lines a resume must match
  bool flow_steps = false;                 // mixed chain (kind "mixed"): flow IMH steps, /chains/flow_accepted
};

// One kept trajectory of this rank's nc chains.
struct HmcRow {
  std::vector<double> scalars, correlator, dH;  // [nc * k] observables, [nc * L0], [nc]
  std::vector<std::uint8_t> accepted;           // [nc] HMC Metropolis
  // Mixed chains: [nc] 1/0 = the flow step after this trajectory accepted/rejected its proposal,
  // kNoFlowStep = no flow step after this trajectory. Empty for pure HMC.
  std::vector<std::uint8_t> flow_accepted;
  std::vector<double> x;                             // [nc * V] fields after it (and after its flow step)
  double max_dx = 0, max_dp = 0, check_seconds = 0;  // reversibility check
  double flow_seconds = 0;                           // time spent in the flow step (proposal, log q, action)
};
constexpr std::uint8_t kNoFlowStep = 2;

// Run totals over all sessions, for the /hmc summary attributes.
struct HmcTotals {
  double acceptance = 0, exp_mdH = 0, exp_mdH_error = 0, seconds = 0, check_seconds = 0, max_dx = 0, max_dp = 0;
  int n_md = 0;
  // Mixed chains: flow proposals made (all chains), their acceptance, and the seconds spent in flow steps.
  std::int64_t flow_proposals = 0;
  double flow_acceptance = 0, flow_seconds = 0;
};

class HmcStore {
 public:
  // Collective. This rank holds chains [c0, c0 + nc).
  HmcStore(const Config& cfg, const HmcLayout& layout, std::int64_t c0, std::int64_t nc,
           const std::function<void(io::File&)>& write_header);
  ~HmcStore();

  bool complete() const { return complete_; }        // resume found the output complete: nothing to do
  bool thermalized() const { return thermalized_; }  // resumed after thermalisation
  int n_md() const { return n_md_; }
  std::int64_t next_trajectory() const { return trajectories_; }  // kept trajectories done
  // This rank's chains' fields at the resume point, [nc * V] float64.
  std::vector<double> resume_field();

  // Collective: records the end of thermalisation (a commit of zero trajectories with the fields).
  void set_thermalized(int n_md, const std::vector<double>& x);
  // Collective: one kept trajectory of this rank's chains.
  void add(const HmcRow& row);
  // Collective: final commit; then the root computes the totals from the file, calls write_summary and
  // renames OUTPUT.partial to OUTPUT.
  void finish(const std::function<void(io::File&, const HmcTotals&)>& write_summary);

 private:
  void commit();
  // The callbacks of io::PartialEnsemble::open: the empty datasets of a fresh file; on a resume (root), the
  // truncation of the uncommitted tail and the state (n_md, state slot, earlier sessions' figures) it restores.
  void create(io::File& f) const;
  std::string resume(io::File& f);

  const Config& cfg_;
  HmcLayout layout_;
  io::PartialEnsemble ens_;  // OUTPUT.partial and its protocol; its parallel file is open on every rank
  std::int64_t C_, c0_, nc_, T_;
  bool complete_ = false, thermalized_ = false;
  int n_md_ = 0;
  std::int64_t slot_ = 1;  // state slot of the last commit
  std::int64_t committed_ = 0, trajectories_ = 0, resumed_from_ = 0;
  HmcTotals totals_;  // seconds, check figures of earlier sessions (from the file)
  double check_seconds_ = 0, max_dx_ = 0, max_dp_ = 0, flow_seconds_ = 0;

  // Buffers since the last commit (this rank's columns).
  std::vector<std::vector<double>> scalars_;  // per observable, [rows * nc]
  std::vector<double> corr_, dH_, x_, config_x_;
  std::vector<std::uint8_t> acc_, flow_acc_;
  std::int64_t rows_ = 0;
  std::vector<std::int64_t> config_traj_;
};

// "key = value" lines that a resumed HMC (or mixed) run must match; weights_hash: the flow of a mixed chain.
std::string hmc_identity(const Config& cfg, const std::string& weights_hash = "");

}  // namespace latflow
