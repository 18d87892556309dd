// SPDX-License-Identifier: MIT
// libFuzzer target: the HDF5 ensemble reader behind `latflow analyze` (analysis::analyze_ensemble) on arbitrary
// file contents. The bytes go to a temporary file; reading it must either succeed or throw a latflow::Error.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "latflow/analysis/report.hpp"
#include "latflow/core/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::string path = "/tmp/latflow_fuzz_ensemble_" + std::to_string(::getpid()) + ".h5";
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  try {
    auto r = latflow::analysis::analyze_ensemble(path);
    (void)r;
  } catch (const latflow::Error&) {
  }
  return 0;
}
