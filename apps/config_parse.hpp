// SPDX-License-Identifier: MIT
// The INI config parser of the CLI (Boost.Program_options stays in apps/, docs/design.md "Library layers"): text ->
// validated Config through the key registry (core/config_keys.hpp). Compiled into the
// `latflow` binary and into the config fuzz target (tests/fuzz), so the code that is fuzzed is the code that runs.
#pragma once
#include <string>
#include <vector>

#include "latflow/core/config_keys.hpp"
#include "latflow/core/error.hpp"
#include "latflow/core/params.hpp"

namespace latflow::cli {

// The value parsers (parse_number, parse_bool, parse_list) are the registry's (core/config_keys.hpp).
using latflow::parse_bool;
using latflow::parse_list;
using latflow::parse_number;

// Parses the text of an INI config (`path` names it in messages) and the command-line overrides
// ("--section.key", "VALUE", ...) into a validated Config with source_text, source_path and effective_text set.
// Throws ConfigError naming the key (or the file) on any bad input; never anything else for any text.
Config parse_config(const std::string& text, const std::string& path, const std::vector<std::string>& overrides,
                    const std::string& cmd);
// Reads CONFIG.ini (IoError if it is missing, not a regular file or unreadable), then parse_config.
Config load_config(const std::string& path, const std::vector<std::string>& overrides, const std::string& cmd);
using latflow::keys_text;  // `latflow keys`

}  // namespace latflow::cli
