// SPDX-License-Identifier: MIT
#include "latflow/io/ensemble.hpp"

#include "latflow/core/config_keys.hpp"

namespace latflow::io {

void write_header(File& f, const Config& cfg, const Provenance& prov, const std::string& kind) {
  f.write_attr("/", "format", "latflow-ensemble");
  f.write_attr("/", "format_version", kEnsembleFormatVersion);
  f.write_attr("/", "kind", kind);
  f.write_attr("/", "status", "running");
  f.write_attr("/", "program_version", prov.program_version);
  f.write_attr("/", "git_hash", prov.git_hash);
  f.write_attr("/", "created", prov.created);
  f.write_attr("/", "host", prov.host);
  f.write_attr("/", "user", prov.user);
  f.write_attr("/", "command_line", prov.command_line);
  f.write_attr("/", "ranks", static_cast<std::int64_t>(prov.ranks));
  f.write_attr("/", "threads", static_cast<std::int64_t>(cfg.run.threads));
  f.write_attr("/", "seed", static_cast<std::int64_t>(cfg.run.seed));
  f.write_attr("/", "device", cfg.run.device);

  f.write_string("/input/config", cfg.source_text);
  f.write_attr("/input/config", "path", cfg.source_path);
  f.write_string("/input/effective_config", cfg.effective_text);

  f.create_group("/theory");
  f.write_attr("/theory", "name", choice_name(cfg.theory));
  f.write_attr("/theory", "extents", cfg.lattice.extents);
  const auto& info = theory_info(cfg.theory);
  if (*info.action)
    f.write_attr("/theory", "action", info.action);
  else
    f.write_attr("/theory", "convention", "nohalf");  // phi4: stored fields and couplings in the no-1/2 convention
  // The theory's couplings (config_keys.cpp): phi4 stores both its input and its no-1/2 couplings, and
  // phi_input = field_scale * phi_stored.
  for (const auto& [name, value] : theory_attributes(cfg))
    std::visit([&, n = name](const auto& v) { f.write_attr("/theory", n, v); }, value);
}

void write_references(File& f, const Config& cfg) {
  f.create_group("/reference");
  for (const auto& [name, ref] : cfg.reference)
    f.write_attr("/reference", name, std::vector<double>{ref.value, ref.error});
}

}  // namespace latflow::io
