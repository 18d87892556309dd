// SPDX-License-Identifier: MIT
// Fuzz target: the HDF5 ensemble reader behind `latflow analyze` (analysis::analyze_ensemble) on arbitrary
// file contents. The bytes go to a temporary file; reading it must either succeed or throw a latflow::Error.
// Built for libFuzzer (LATFLOW_FUZZ=ON) or with the replay driver replay_main.cpp (the normal build).
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_support.hpp"
#include "latflow/analysis/report.hpp"
#include "latflow/core/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = latflow::fuzz::input_file(data, size, "h5");
  if (path.empty()) return 0;
  try {
    auto r = latflow::analysis::analyze_ensemble(path);
    (void)r;
    ++latflow::fuzz::accepted;
  } catch (const latflow::Error&) {
  }
  return 0;
}
