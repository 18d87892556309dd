// SPDX-License-Identifier: MIT
// Shared by the fuzz targets (tests/fuzz/fuzz_*.cpp) and the replay driver (replay_main.cpp).
#pragma once
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace latflow::fuzz {

// How many inputs the target's reader accepted (parsed without throwing). libFuzzer ignores it; the replay driver
// prints it and fails when no seed was accepted, because then the seed corpus no longer gets past the reader's
// first checks (a stale seed file, a changed model identity) and the mutations only test the rejection of garbage.
inline std::size_t accepted = 0;

// Writes the input to $TMPDIR/latflow_fuzz_PID.SUFFIX (TMPDIR defaults to /tmp) for the readers that take a path,
// and returns that path ("" if it cannot be written). The file is removed when the process exits normally.
inline std::string input_file(const std::uint8_t* data, std::size_t size, const char* suffix) {
  static std::string path;
  if (path.empty()) {
    const char* dir = std::getenv("TMPDIR");
    path = std::string(dir && *dir ? dir : "/tmp") + "/latflow_fuzz_" + std::to_string(::getpid()) + "." + suffix;
    std::atexit([] { std::remove(path.c_str()); });
  }
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return "";
  const bool ok = std::fwrite(data, 1, size, f) == size;
  return std::fclose(f) == 0 && ok ? path : "";
}

}  // namespace latflow::fuzz
