// SPDX-License-Identifier: MIT
#include "latflow/core/log.hpp"

#include <unistd.h>

#include <cstdio>
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

bool stdout_is_tty() { return isatty(STDOUT_FILENO) == 1; }

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
