// SPDX-License-Identifier: MIT
// The one registry of config keys (docs/design.md "Config keys"): each key's name, type, field, help text, its own
// validity rule, whether it is physics, and its attribute in an ensemble's /theory group. The INI parser (apps/),
// `latflow keys`, the effective config, Config::validate's per-key rules, the identity texts and the stored
// /theory attributes are all generated from it. Torch-free.
#pragma once
#include <cmath>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#include "latflow/core/error.hpp"
#include "latflow/core/params.hpp"

namespace latflow {

// A key's value as stored in an HDF5 attribute.
using KeyValue = std::variant<std::int64_t, double, std::string, std::vector<std::int64_t>>;

struct ConfigKey {
  std::string name, help;
  // Keys of one theory's section (phi4.*, u1.*, sun.*, and u1-only flow keys): checked, identified and stored only
  // for that theory.
  std::optional<TheoryId> theory;
  bool physics = false;  // a line of physics_identity (and so of every identity)
  bool derived = false;  // computed by validate (phi4.m2_nohalf, ...): not settable, not in the effective config
  std::string attr;      // its attribute in /theory, "" = none
  std::function<std::string(const Config&)> text;   // as in the effective config: shortest round-trip doubles
  std::function<std::string(const Config&)> exact;  // as in identity texts: doubles with 17 significant digits
  std::function<KeyValue(const Config&)> value;
  std::function<void(Config&, const std::string&)> set;  // parses; throws ConfigError naming the key
  std::function<void(const Config&)> check;              // its own rule; throws ConfigError naming the key
  bool applies_to(TheoryId t) const { return !theory || *theory == t; }
};

// Every key, in the order of the effective config and `latflow keys`.
const std::vector<ConfigKey>& config_keys();
// The key called `name`; std::logic_error if there is none (a misspelt name in the code).
const ConfigKey& config_key(std::string_view name);

// "name = value" lines, identity format, of the named keys that apply to cfg's theory, in the order given.
std::string identity_lines(const Config& cfg, std::initializer_list<std::string_view> names);
// Every settable key with its value, INI syntax by section, then [reference]; headed by "# effective
// configuration (CMD)".
std::string effective_config_text(const Config& cfg, const std::string& cmd);
// `latflow keys`: every settable key, its default and its meaning, one per line.
std::string keys_text();
// The /theory attributes of cfg's theory (name -> value), in registry order.
std::vector<std::pair<std::string, KeyValue>> theory_attributes(const Config& cfg);

// Text -> value parsers shared by the registry and the CLI's own options; errors name the key.
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

bool parse_bool(const std::string& key, const std::string& v);

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

// The shortest of 15..17 significant digits that reads back as the same double.
std::string shortest(double v);

}  // namespace latflow
