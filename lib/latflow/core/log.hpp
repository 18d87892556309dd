// SPDX-License-Identifier: MIT
// Rank-aware logging: rank 0 prints, other ranks stay quiet (errors are reported by main with the rank).
#pragma once
#include <string>

namespace latflow::log {

void set_rank(int rank);
bool is_root();
void info(const std::string& line);  // stdout, rank 0 only
void warn(const std::string& line);  // stderr, rank 0 only, prefixed "latflow: warning: "
bool stdout_is_tty();
std::string format_seconds(double s);  // "2m05s", "1h02m", "12.3s"

}  // namespace latflow::log
