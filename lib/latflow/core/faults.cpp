// SPDX-License-Identifier: MIT
#include "latflow/core/faults.hpp"

#include <algorithm>
#include <cstdlib>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace latflow::faults {
namespace {

// "a,b-c" as inclusive ranges [a, a], [b, c].
std::vector<std::pair<std::int64_t, std::int64_t>> parse_ranges(const char* text) {
  std::vector<std::pair<std::int64_t, std::int64_t>> ranges;
  if (text == nullptr) return ranges;
  std::istringstream is(text);
  std::string item;
  while (std::getline(is, item, ',')) {
    auto dash = item.find('-');
    const auto a = std::stoll(item.substr(0, dash));
    ranges.emplace_back(a, dash == std::string::npos ? a : std::stoll(item.substr(dash + 1)));
  }
  return ranges;
}

}  // namespace

bool poisoned_loss(std::int64_t step) {
  static const auto ranges = parse_ranges(std::getenv("LATFLOW_FAULT_NAN_STEPS"));
  return std::any_of(ranges.begin(), ranges.end(), [step](auto r) { return step >= r.first && step <= r.second; });
}

std::int64_t nan_weight_step() {
  static const char* text = std::getenv("LATFLOW_FAULT_NAN_WEIGHT_STEP");
  static const std::int64_t step = text ? std::stoll(text) : -1;
  return step;
}

// A trajectory or block is matched by its decimal text, as given.
bool fail_before_trajectory(std::int64_t i, int rank) {
  static const char* trajectory = std::getenv("LATFLOW_FAULT_TRAJECTORY");
  static const char* failing_rank = std::getenv("LATFLOW_FAULT_RANK");
  return trajectory != nullptr && std::to_string(i) == trajectory &&
         rank == (failing_rank ? std::atoi(failing_rank) : 0);
}

bool fail_before_block(std::int64_t b) {
  static const char* block = std::getenv("LATFLOW_FAULT_BLOCK");
  return block != nullptr && std::to_string(b) == block;
}

}  // namespace latflow::faults
