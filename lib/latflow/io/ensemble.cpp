// SPDX-License-Identifier: MIT
#include "latflow/io/ensemble.hpp"

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
  f.write_attr("/theory", "name", cfg.theory);
  f.write_attr("/theory", "extents", cfg.lattice.extents);
  if (cfg.theory == "sun") {
    f.write_attr("/theory", "beta", cfg.sun.beta);
    f.write_attr("/theory", "n", static_cast<std::int64_t>(cfg.sun.n));
    f.write_attr("/theory", "action",
                 "wilson: S = -(beta/N) sum_P Re tr U_P; links stored as [2, L0, L1, N, N, 2] (real, imag)");
    return;
  }
  if (cfg.theory == "u1") {
    f.write_attr("/theory", "beta", cfg.u1.beta);
    f.write_attr("/theory", "action", "wilson: S = -beta sum_P cos theta_P; links stored as angles [2, L0, L1]");
    return;
  }
  f.write_attr("/theory", "convention", "nohalf");
  f.write_attr("/theory", "m2", cfg.phi4.m2_nohalf);
  f.write_attr("/theory", "lam", cfg.phi4.lam_nohalf);
  f.write_attr("/theory", "input_convention", cfg.phi4.convention);
  f.write_attr("/theory", "input_m2", cfg.phi4.m2);
  f.write_attr("/theory", "input_lam", cfg.phi4.lam);
  f.write_attr("/theory", "input_kappa", cfg.phi4.kappa);
  // phi_input = field_scale * phi_stored: stored fields and observables are in the no-1/2 convention.
  f.write_attr("/theory", "field_scale", cfg.phi4.field_scale);
}

void write_references(File& f, const Config& cfg) {
  f.create_group("/reference");
  for (const auto& [name, ref] : cfg.reference)
    f.write_attr("/reference", name, std::vector<double>{ref.value, ref.error});
}

}  // namespace latflow::io
