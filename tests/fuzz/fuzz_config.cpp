// SPDX-License-Identifier: MIT
// Fuzz target: the CLI's INI parser (apps/config_parse.cpp) on arbitrary text. Any input must either give a
// validated Config or throw a latflow::Error (ConfigError/IoError); anything else (another exception, a crash,
// undefined behaviour, a leak) is a finding. The first line of the input, if it starts with "--", is split into
// command-line overrides, so the override path is fuzzed as well. Built for libFuzzer (LATFLOW_FUZZ=ON) or with
// the replay driver replay_main.cpp (the normal build, ctest label fuzz).
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "config_parse.hpp"
#include "fuzz_support.hpp"
#include "latflow/core/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> overrides;
  if (text.rfind("--", 0) == 0) {
    const auto nl = text.find('\n');
    std::istringstream is(text.substr(0, nl));
    for (std::string tok; is >> tok;) overrides.push_back(tok);
    text = nl == std::string::npos ? "" : text.substr(nl + 1);
  }
  try {
    auto cfg = latflow::cli::parse_config(text, "fuzz.ini", overrides, "fuzz");
    (void)cfg;
    ++latflow::fuzz::accepted;
  } catch (const latflow::Error&) {
  }
  return 0;
}
