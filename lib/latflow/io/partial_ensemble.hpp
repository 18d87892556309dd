// SPDX-License-Identifier: MIT
// The crash-safe partial-ensemble protocol shared by the ensemble stores (samplers/imh_chain.*,
// samplers/hmc_store.*); torch-free. docs/design.md "Crash-safe ensemble files" describes the protocol.
//
// This class owns the file's life cycle: the refusal of an existing output, the creation of OUTPUT.partial under
// a temporary name, the resume of an interrupted OUTPUT.partial and the extension of a complete OUTPUT, the
// flush - counters - flush order of a commit, and the final rename. The stores keep what differs between them:
// their datasets, their committed counters and the state a resume restores, passed in as callbacks.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "latflow/core/params.hpp"
#include "latflow/io/h5.hpp"

namespace latflow::io {

// Datasets that ranks write in parallel are uncompressed: with parallel HDF5 1.10.8 (Debian 12) a second
// collective write into an extended, deflate-filtered dataset hung in our tests, and uncompressed chunks go
// straight through MPI-IO without being routed through one owner rank per chunk. (Random float mantissas
// compress poorly anyway.)
constexpr int kParallelDeflate = 0;

// What tells one store's ensemble from another's in the protocol and its messages.
struct PartialSpec {
  std::string kind;        // root attribute `kind` of a file this store can resume or extend
  std::string identity;    // root attribute `resume_identity`: the "key = value" lines a resume must match
  std::string log_prefix;  // "sampling", "hmc"
  // The run's length: count_key = requested units ("sample.proposals", "proposals"); a complete file holds its
  // count as the attribute count_attr of count_group.
  std::string count_key, unit, count_group, count_attr;
  std::int64_t requested = 0;
  // Refusals, after the file's name: a file of another kind (foreign), one written with other parameters
  // (differs; "{}" stands for the first difference). The *_complete ones are for a complete OUTPUT to extend.
  std::string foreign, foreign_complete;
  std::string differs =
      " was written with other parameters ({}); resume with the same ones, or pass --overwrite to "
      "start afresh";
  std::string differs_complete = differs;
};

class PartialEnsemble {
 public:
  // OUTPUT is run.output; run.resume, run.overwrite and run.commit_seconds steer the protocol.
  PartialEnsemble(const RunParams& run, PartialSpec spec);
  ~PartialEnsemble();

  // Collective. On the root: without run.resume an existing OUTPUT or OUTPUT.partial is refused (unless
  // run.overwrite); with it a complete OUTPUT holding fewer units than requested becomes OUTPUT.partial again
  // (as many: complete(), nothing to do), and an OUTPUT.partial is resumed: its kind and identity are checked,
  // then `resume` truncates the uncommitted tail, restores the store's state (root only), writes the committed
  // counters and returns the end of the log line (" after 40 proposals"). Otherwise a fresh OUTPUT.partial is
  // built under a temporary name: `write_header`, the identity, `create` (datasets and zero counters). Then
  // every rank learns complete() and stored(), and unless complete opens OUTPUT.partial through MPI-IO.
  // Throws IoError / ConfigError on the root.
  void open(const std::function<void(File&)>& write_header, const std::function<void(File&)>& create,
            const std::function<std::string(File&)>& resume);
  bool complete() const { return complete_; }
  std::int64_t stored() const { return stored_; }  // units in a complete OUTPUT (when complete())
  File& file() { return *file_; }                  // the parallel file, open on every rank
  // ConfigError "<count_key> = <requested> is fewer than the <n> [committed ]<unit> in <path>" when
  // requested < n; for the store's own check of its committed count in `resume`, before it truncates anything.
  void refuse_fewer(std::int64_t n, const std::string& path, bool committed) const;

  // Seconds since open() (this session's).
  double session_seconds() const;
  // Root: run.commit_seconds have passed since the last commit (or open()).
  bool commit_due() const;
  // Collective, after the store has written its rows: flush, so that the data reaches the file before the
  // counters say it exists; `counters` writes them (same values on every rank); flush again.
  void commit(const std::function<void(File&)>& counters);
  // Collective: closes the parallel file; the root reopens it serially (variable-length strings), `summary`
  // writes the totals, then `finished` and status = complete, and OUTPUT.partial is renamed to OUTPUT.
  void finish(const std::function<void(File&)>& summary);

 private:
  void setup_root(const std::function<void(File&)>& write_header, const std::function<void(File&)>& create,
                  const std::function<std::string(File&)>& resume);
  bool extend_complete();
  void create_fresh(const std::function<void(File&)>& write_header, const std::function<void(File&)>& create);
  void check_identity(const File& f, const std::string& path, bool complete) const;

  PartialSpec spec_;
  std::string out_, partial_;  // OUTPUT, OUTPUT.partial
  bool resume_, overwrite_;
  double commit_seconds_;
  bool complete_ = false;
  std::int64_t stored_ = 0;
  std::optional<File> file_;
  std::chrono::steady_clock::time_point t0_, last_commit_;
};

}  // namespace latflow::io
