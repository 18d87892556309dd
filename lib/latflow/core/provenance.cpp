// SPDX-License-Identifier: MIT
#include "latflow/core/provenance.hpp"

#include <unistd.h>

#include "latflow_git_hash.hpp"  // LATFLOW_GIT_HASH, generated at build time (cmake/git_hash.cmake)

#include <cstdlib>
#include <ctime>

namespace latflow {

std::string iso_time_utc() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

Provenance Provenance::collect(const std::string& command_line, int ranks) {
  Provenance p;
  p.program_version = LATFLOW_VERSION;
  p.git_hash = LATFLOW_GIT_HASH;
  p.created = iso_time_utc();
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  p.host = host;
  const char* user = std::getenv("USER");
  p.user = user ? user : "";
  p.command_line = command_line;
  p.ranks = ranks;
  return p;
}

}  // namespace latflow
