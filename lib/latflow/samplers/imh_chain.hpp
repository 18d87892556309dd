// SPDX-License-Identifier: MIT
// The distributed independence Metropolis chain and its crash-safe ensemble file (torch-free).
//
// Work split. Proposal blocks are dealt round-robin: in a round, rank r makes block first + r. Each rank sends
// only the log-weights of its block to the root (8 bytes a proposal); the root runs the serial accept/reject
// sequence in block order with the counter-based uniforms of (seed, "accept", proposal) and broadcasts one byte
// per proposal (accepted or not). Every rank then knows where each accepted configuration goes in
// /configs/field, and writes its own proposals' rows and its own accepted fields with collective parallel-HDF5
// writes into the one file. No field ever travels to the root.
//
// Write protocol (crash safety; the part shared with the HMC store is io::PartialEnsemble). The ensemble is
// OUTPUT.partial until it is complete. Rows are buffered in memory and written at commits (every
// run.commit_seconds, and at the end): the datasets are extended, the rows written, the file flushed, and only
// then do the /chain attributes committed_proposals and committed_configs advance (and the file is flushed
// again). Everything past the committed lengths is garbage from an interrupted commit. A resume truncates it,
// restores the chain state (current proposal, its log-weight, its configuration row, the acceptance count) from
// the committed data, and continues with the next block: as every random number is keyed by a global index, the
// result is bitwise the uninterrupted run's.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "latflow/core/params.hpp"
#include "latflow/io/h5.hpp"
#include "latflow/io/partial_ensemble.hpp"

namespace latflow {

// One block of proposals, made by the rank that holds it.
struct ImhBlock {
  std::int64_t block = -1;                            // global block index; -1: this rank has no block in this round
  std::int64_t n = 0;                                 // proposals in the block
  std::vector<double> log_q, S, scalars, correlator;  // [n], [n], [n * k] (row-major), [n * L0]
  std::vector<double> x;                              // [n * V] fields in float64 (exact for float32 fields)
  // Non-equilibrium proposals only: the log-weights (otherwise -S - log_q) and the protocol's work W, [n].
  std::vector<double> log_w, work;
};

struct ImhLayout {
  std::vector<std::string> observable_names;  // scalar observables, in the order of ImhBlock::scalars
  std::int64_t L0 = 0, V = 0;
  std::vector<std::uint64_t> field_shape;  // lattice extents
  bool float32_fields = true;
  bool work = false;     // non-equilibrium proposals: /proposals/work is stored too
  std::string identity;  // "key = value" lines a resume must match (physics, model, seed, block)
};

class ImhChain {
 public:
  // Collective. Creates OUTPUT.partial (write_header fills in the provenance on the root), or with
  // cfg.run.resume continues an interrupted OUTPUT.partial, or extends a complete OUTPUT when more proposals
  // are asked for. Throws IoError / ConfigError (refusing an existing output, a resume with other parameters).
  ImhChain(const Config& cfg, const ImhLayout& layout, const std::function<void(io::File&)>& write_header);
  ~ImhChain();

  bool done() const { return next_block_ >= n_blocks_; }
  std::int64_t next_block() const { return next_block_; }  // the block this rank's next round starts from
  std::int64_t n_blocks() const { return n_blocks_; }
  std::int64_t resumed_from() const { return resumed_from_; }  // proposals already in the file at the start
  // Collective: one round (block next_block() + rank on each rank; an empty ImhBlock where that is past the
  // end). Runs the chain over the round, buffers the rows, and commits when it is time.
  void add_round(const ImhBlock& mine);
  // Collective: final commit, closes the parallel file, writes the summary attributes and status = complete,
  // renames OUTPUT.partial to OUTPUT. Returns the acceptance rate.
  double finish();

 private:
  void commit();
  // The callbacks of io::PartialEnsemble::open: the empty datasets of a fresh file; on a resume (root), the
  // truncation of the uncommitted tail and the chain state restored from the committed data.
  void create(io::File& f) const;
  std::string resume(io::File& f);

  const Config& cfg_;
  ImhLayout layout_;
  io::PartialEnsemble ens_;  // OUTPUT.partial and its protocol; its parallel file is open on every rank
  std::int64_t N_, block_, n_blocks_, next_block_ = 0, resumed_from_ = 0;
  bool complete_ = false;  // resume found the output complete already

  // Committed and buffered extents.
  std::int64_t committed_props_ = 0, props_ = 0;  // proposals
  std::int64_t committed_cfgs_ = 0, cfgs_ = 0;    // stored configurations
  // Chain state (meaningful on the root).
  double cur_lw_ = 0;
  std::int64_t cur_prop_ = -1, cur_cfg_ = -1, n_acc_ = 0;
  double seconds_before_ = 0;  // sampling time of earlier sessions

  // Buffers since the last commit. Per proposal (this rank's blocks).
  std::vector<io::RowRange> prop_rows_;
  std::vector<double> log_q_, S_, log_w_, work_, corr_;
  std::vector<std::vector<double>> scalars_;  // per observable
  // Chain rows (root only).
  std::vector<std::int64_t> trail_, trail_cfg_;
  std::vector<std::uint8_t> accepted_;
  // Accepted configurations this rank holds.
  std::vector<io::RowRange> cfg_rows_;
  std::vector<std::int64_t> cfg_prop_;
  std::vector<double> cfg_x_;
};

// "key = value" lines that a resumed sampling must match: the model identity, the weights, the seed, the block.
std::string sample_identity(const Config& cfg, const std::string& weights_hash);

}  // namespace latflow
