// SPDX-License-Identifier: MIT
// The INI config parser of the CLI (Boost.Program_options stays in apps/, docs/design.md "Library layers"): the
// table of keys, text -> validated Config, and the value parsers the CLI's own options share. Compiled into the
// `latflow` binary and into the config fuzz target (tests/fuzz), so the code that is fuzzed is the code that runs.
#pragma once
#include <cmath>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "latflow/core/error.hpp"
#include "latflow/core/params.hpp"

namespace latflow::cli {

template <class T>
T parse_number(const std::string& key, const std::string& v) {
  // istream wraps "-1" around for unsigned types instead of failing.
  if constexpr (std::is_unsigned_v<T>)
    if (v.find('-') != std::string::npos) throw ConfigError(key + " = " + v + ": must be >= 0");
  std::istringstream is(v);
  T x{};
  is >> x;
  std::string rest;
  if (is.fail() || (is >> rest)) throw ConfigError(key + " = " + v + ": not a valid number");
  if constexpr (std::is_floating_point_v<T>)
    if (!std::isfinite(x)) throw ConfigError(key + " = " + v + ": must be finite");
  return x;
}

inline bool parse_bool(const std::string& key, const std::string& v) {
  if (v == "true" || v == "1" || v == "yes" || v == "on") return true;
  if (v == "false" || v == "0" || v == "no" || v == "off") return false;
  throw ConfigError(key + " = " + v + ": not a boolean (true/false)");
}

template <class T>
std::vector<T> parse_list(const std::string& key, const std::string& v) {
  std::string s = v;
  for (auto& c : s)
    if (c == ',') c = ' ';
  std::istringstream is(s);
  std::vector<T> out;
  std::string tok;
  while (is >> tok) out.push_back(parse_number<T>(key, tok));
  if (out.empty()) throw ConfigError(key + " = " + v + ": needs at least one value");
  return out;
}

// Parses the text of an INI config (`path` names it in messages) and the command-line overrides
// ("--section.key", "VALUE", ...) into a validated Config with source_text, source_path and effective_text set.
// Throws ConfigError naming the key (or the file) on any bad input; never anything else for any text.
Config parse_config(const std::string& text, const std::string& path, const std::vector<std::string>& overrides,
                    const std::string& cmd);
// Reads CONFIG.ini (IoError if it is missing, not a regular file or unreadable), then parse_config.
Config load_config(const std::string& path, const std::vector<std::string>& overrides, const std::string& cmd);
// `latflow keys`: every key, its default and its meaning, one per line.
std::string keys_text();

}  // namespace latflow::cli
