// SPDX-License-Identifier: MIT
// What every output file records about how it was made.
#pragma once
#include <string>

namespace latflow {

struct Provenance {
  std::string program_version;  // latflow version
  std::string git_hash;         // of the source tree at build time
  std::string created;          // ISO-8601 UTC
  std::string host;
  std::string user;
  std::string command_line;
  int ranks = 1;
  // ranks: the run's MPI size (core/ knows nothing of MPI).
  static Provenance collect(const std::string& command_line, int ranks);
};

std::string iso_time_utc();

}  // namespace latflow
