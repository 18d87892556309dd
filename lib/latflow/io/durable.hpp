// SPDX-License-Identifier: MIT
// Durable file commits, torch-free. A file is written under a temporary name, fsynced, renamed over its target and
// the directory fsynced, so that after a crash (kill -9, power loss) a reader sees either the old complete file or
// the new complete one, never a torn one.
#pragma once
#include <string>

namespace latflow {

bool file_exists(const std::string& path);
// Creates the directory that will hold `path` if it is missing; IoError naming it if that fails.
void ensure_parent_dir(const std::string& path);
// fsync(tmp), rename(tmp, path), fsync(directory of path). IoError naming the file on any failure.
void commit_file(const std::string& tmp, const std::string& path);
// Writes `bytes` to `path` (created or truncated) and fsyncs it; on failure removes it and throws IoError
// "<label>: cannot write (<cause>)", label = path unless given.
void write_file_synced(const std::string& path, const std::string& bytes, const std::string& label = "");
// Writes `bytes` to path + ".tmp" and commits it; on failure removes the temporary and throws IoError naming
// `path` (an existing `path` is left as it was).
void write_file_atomic(const std::string& path, const std::string& bytes);
// The check before an ensemble job writes OUTPUT: without resume, an existing OUTPUT or OUTPUT.partial (an
// interrupted run's) is refused with an IoError naming it, unless overwrite.
void refuse_existing_output(const std::string& out, const std::string& partial, bool resume, bool overwrite);
// fsync of the directory that holds `path` (makes a rename or link durable); IoError on an I/O error.
void fsync_parent_dir(const std::string& path);

}  // namespace latflow
