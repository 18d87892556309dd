// SPDX-License-Identifier: MIT
// The INI config parser (see config_parse.hpp). Boost.Program_options lives only in apps/.
#include "config_parse.hpp"

#include <boost/program_options.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace po = boost::program_options;

namespace latflow::cli {

Config parse_config(const std::string& text, const std::string& path, const std::vector<std::string>& overrides,
                    const std::string& cmd) {
  Config cfg;
  cfg.source_text = text;
  cfg.source_path = path;

  po::options_description desc;
  for (const auto& k : config_keys())
    if (!k.derived) desc.add_options()(k.name.c_str(), po::value<std::string>());
  po::variables_map vm;
  std::vector<std::pair<std::string, std::string>> refs;
  try {
    std::istringstream is(cfg.source_text);
    auto parsed = po::parse_config_file(is, desc, /*allow_unregistered=*/true);
    if (parsed.options.empty()) throw ConfigError(path + ": no settings (the config file is empty or only comments)");
    for (const auto& o : parsed.options) {
      if (!o.unregistered) continue;
      if (o.string_key.rfind("reference.", 0) == 0 && o.value.size() == 1)
        refs.emplace_back(o.string_key.substr(10), o.value[0]);
      else
        throw ConfigError(path + ": unknown key " + o.string_key + " (`latflow keys` lists them)");
    }
    // po::store keeps the first value stored for a key: store the overrides first so that they win.
    po::store(po::command_line_parser(overrides).options(desc).style(po::command_line_style::unix_style).run(), vm);
    po::store(parsed, vm);
  } catch (const po::error& e) {
    throw ConfigError(path + ": " + e.what());
  }
  for (const auto& k : config_keys())
    if (!k.derived && vm.count(k.name)) k.set(cfg, vm[k.name].as<std::string>());
  for (const auto& [name, v] : refs) {
    auto vals = parse_list<double>("reference." + name, v);
    if (vals.size() != 2) throw ConfigError("reference." + name + " = " + v + ": needs a value and its error");
    cfg.reference[name] = {vals[0], vals[1]};
  }
  cfg.validate();
  // [reference] values belong to the file's own physics: if the overrides change it, they are dropped.
  if (!cfg.reference.empty() && !overrides.empty()) {
    std::string diff;
    try {
      diff = first_difference(physics_identity(parse_config(text, path, {}, cmd)), physics_identity(cfg));
      for (auto [from, to] : {std::pair<std::string, std::string>{": stored ", ": file "}, {", requested ", ", run "}})
        if (auto at = diff.find(from); at != std::string::npos) diff.replace(at, from.size(), to);
    } catch (const ConfigError& e) {
      diff = std::string("the file alone does not validate: ") + e.what();
    }
    if (!diff.empty()) {
      cfg.reference.clear();
      cfg.reference_note = "[reference] of " + path + " not used: the command line changes its physics (" + diff + ")";
    }
  }
  cfg.effective_text = effective_config_text(cfg, cmd);
  return cfg;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides, const std::string& cmd) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw IoError(path + ": not found or not a regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path + ": cannot open config file");
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) throw IoError(path + ": cannot read config file");
  return parse_config(text.str(), path, overrides, cmd);
}

}  // namespace latflow::cli
