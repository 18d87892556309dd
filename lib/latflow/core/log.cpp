// SPDX-License-Identifier: MIT
#include "latflow/core/log.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>

namespace latflow::log {
namespace {
int g_rank = 0;
}

void set_rank(int rank) { g_rank = rank; }
bool is_root() { return g_rank == 0; }

void info(const std::string& line) {
  if (g_rank == 0) std::cout << line << std::endl;
}

void warn(const std::string& line) {
  if (g_rank == 0) std::cerr << "latflow: warning: " << line << std::endl;
}

// Open MPI's launcher gives its ranks a pseudo-terminal whatever its own output is, so `mpirun ... > log` would
// get a progress-bar redraw per training step; under a launcher (Open MPI's or a PMI one, known by the variables
// it sets; not PMIX_RANK, which a plain run's singleton MPI_Init sets too) log lines are used.
bool stdout_is_tty() {
  static const bool tty =
      isatty(STDOUT_FILENO) == 1 && !std::getenv("OMPI_COMM_WORLD_SIZE") && !std::getenv("PMI_SIZE");
  return tty;
}

std::string format_seconds(double s) {
  char buf[32];
  if (s < 60)
    std::snprintf(buf, sizeof buf, "%.1fs", s);
  else if (s < 3600)
    std::snprintf(buf, sizeof buf, "%dm%02ds", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  else
    std::snprintf(buf, sizeof buf, "%dh%02dm", static_cast<int>(s) / 3600, (static_cast<int>(s) % 3600) / 60);
  return buf;
}

}  // namespace latflow::log
