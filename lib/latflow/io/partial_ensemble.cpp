// SPDX-License-Identifier: MIT
#include "latflow/io/partial_ensemble.hpp"

#include <filesystem>
#include <utility>

#include "latflow/core/error.hpp"
#include "latflow/core/log.hpp"
#include "latflow/core/provenance.hpp"
#include "latflow/io/durable.hpp"
#include "latflow/parallel/mpi.hpp"

namespace latflow::io {

PartialEnsemble::PartialEnsemble(const RunParams& run, PartialSpec spec)
    : spec_(std::move(spec)),
      out_(run.output),
      partial_(run.output + ".partial"),
      resume_(run.resume),
      overwrite_(run.overwrite),
      commit_seconds_(run.commit_seconds) {}

PartialEnsemble::~PartialEnsemble() = default;

void PartialEnsemble::open(const std::function<void(File&)>& write_header, const std::function<void(File&)>& create,
                           const std::function<std::string(File&)>& resume) {
  // The root prepares the file serially (HDF5 cannot write the variable-length header strings in parallel)
  // and tells the others whether there is anything to do; then every rank opens it through MPI-IO.
  std::int64_t state[2] = {0, 0};  // complete, units stored in the complete OUTPUT
  if (mpi::rank() == 0) {
    setup_root(write_header, create, resume);
    state[0] = complete_ ? 1 : 0;
    state[1] = stored_;
  }
  mpi::broadcast(state, 2);
  complete_ = state[0] != 0;
  stored_ = state[1];
  if (!complete_) file_ = File::open_parallel(partial_);
  t0_ = last_commit_ = std::chrono::steady_clock::now();
}

void PartialEnsemble::setup_root(const std::function<void(File&)>& write_header,
                                 const std::function<void(File&)>& create,
                                 const std::function<std::string(File&)>& resume) {
  refuse_existing_output(out_, partial_, resume_, overwrite_);
  if (resume_ && !file_exists(partial_) && file_exists(out_) && extend_complete()) return;
  if (resume_ && file_exists(partial_)) {
    auto f = File::open_write(partial_);
    check_identity(f, partial_, false);
    const std::string after = resume(f);
    f.write_attr("/", "status", "running");
    f.flush();
    log::info(spec_.log_prefix + ": resuming " + partial_ + after);
    return;
  }
  if (resume_) log::info(spec_.log_prefix + ": no interrupted run at " + partial_ + "; starting afresh");
  create_fresh(write_header, create);
}

// Extending a complete ensemble: it becomes OUTPUT.partial again until the extension is complete. Returns
// true when it already holds the requested units (nothing to do).
bool PartialEnsemble::extend_complete() {
  {
    auto f = File::open_read(out_);
    check_identity(f, out_, true);
    stored_ = f.read_attr_int(spec_.count_group, spec_.count_attr);
  }
  refuse_fewer(stored_, out_, false);
  if (spec_.requested == stored_) {
    log::info(spec_.log_prefix + ": " + out_ + " is complete with " + std::to_string(stored_) + " " + spec_.unit +
              "; nothing to do");
    complete_ = true;
    return true;
  }
  stored_ = 0;
  std::error_code ec;
  std::filesystem::rename(out_, partial_, ec);
  if (ec) throw IoError(out_ + ": cannot rename to " + partial_ + " (" + ec.message() + ")");
  return false;
}

void PartialEnsemble::create_fresh(const std::function<void(File&)>& write_header,
                                   const std::function<void(File&)>& create) {
  // A fresh OUTPUT.partial is built under a temporary name and renamed into place once its header and empty
  // datasets are on disk, so a kill during its creation never leaves an unreadable OUTPUT.partial.
  ensure_parent_dir(out_);
  const std::string tmp = partial_ + ".tmp";
  {
    auto f = File::create(tmp, true);
    write_header(f);
    f.write_attr("/", "resume_identity", spec_.identity);
    create(f);
    f.write_attr("/", "status", "running");
    f.flush();
  }
  commit_file(tmp, partial_);
}

void PartialEnsemble::check_identity(const File& f, const std::string& path, bool complete) const {
  if (!f.has_attr("/", "resume_identity") || f.read_attr_string("/", "kind") != spec_.kind)
    throw IoError(path + (complete ? spec_.foreign_complete : spec_.foreign));
  const auto diff = first_difference(f.read_attr_string("/", "resume_identity"), spec_.identity);
  if (diff.empty()) return;
  std::string text = complete ? spec_.differs_complete : spec_.differs;
  const auto at = text.find("{}");
  if (at != std::string::npos) text.replace(at, 2, diff);
  throw ConfigError(path + text);
}

void PartialEnsemble::refuse_fewer(std::int64_t n, const std::string& path, bool committed) const {
  if (spec_.requested < n)
    throw ConfigError(spec_.count_key + " = " + std::to_string(spec_.requested) + " is fewer than the " +
                      std::to_string(n) + (committed ? " committed " : " ") + spec_.unit + " in " + path);
}

double PartialEnsemble::session_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
}

bool PartialEnsemble::commit_due() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - last_commit_).count() >= commit_seconds_;
}

void PartialEnsemble::commit(const std::function<void(File&)>& counters) {
  // The data reaches the file before the committed counters say it exists; anything past them after a crash
  // is the debris of an interrupted commit.
  file_->flush();
  counters(*file_);
  file_->flush();
  last_commit_ = std::chrono::steady_clock::now();
}

void PartialEnsemble::finish(const std::function<void(File&)>& summary) {
  file_.reset();  // collective close
  mpi::barrier();
  if (mpi::rank() == 0) {
    auto f = File::open_write(partial_);
    summary(f);
    f.write_attr("/", "finished", iso_time_utc());
    f.write_attr("/", "status", "complete");
    f.flush();
  }
  // Closed before the rename, which fsyncs it.
  if (mpi::rank() == 0) commit_file(partial_, out_);
  mpi::barrier();
}

}  // namespace latflow::io
