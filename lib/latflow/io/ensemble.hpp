// SPDX-License-Identifier: MIT
// The HDF5 ensemble layout (format "latflow-ensemble", version 1; documented in docs/file-format.md).
#pragma once
#include <string>

#include "latflow/core/params.hpp"
#include "latflow/core/provenance.hpp"
#include "latflow/io/h5.hpp"

namespace latflow::io {

constexpr std::int64_t kEnsembleFormatVersion = 1;

// Root provenance attributes, the input config verbatim and effective, the theory and lattice.
void write_header(File& f, const Config& cfg, const Provenance& prov, const std::string& kind);
// Reference values from the config's [reference] section: /reference attributes name = [value, error].
void write_references(File& f, const Config& cfg);

}  // namespace latflow::io
