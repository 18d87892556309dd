// SPDX-License-Identifier: MIT
// 4D SU(3) gauge configurations in the community formats (docs/file-format.md "NERSC and ILDG"), torch-free:
//  - NERSC: an ASCII header (BEGIN_HEADER ... END_HEADER, KEY = VALUE lines with the lattice size, the
//  average
//    plaquette and link trace, and a checksum: the 32-bit unsigned sum of the data's words), then the links,
//    site by site with x (DIMENSION_1) fastest and t (DIMENSION_4) slowest, the four directions x, y, z, t at
//    each site, each matrix row by row (all three rows: 4D_SU3_GAUGE_3x3; or the first two, the third being
//    the complex conjugate of their cross product: 4D_SU3_GAUGE), complex entries as (re, im).
//  - ILDG: LIME records (144-byte headers, data padded to 8 bytes) "ildg-format" (XML: field su3gauge,
//    precision, lx ly lz lt), "ildg-binary-data" (big-endian, the same site and direction order, 3x3
//    matrices) and "ildg-data-lfn".
// latflow's directions 0, 1, 2, 3 are x, y, z, t (the Polyakov loops run along direction 3), so DIMENSION_k
// is L_{k-1}; its own site order is row-major with x0 slowest, which the writers and readers transpose.
#pragma once
#include <complex>
#include <cstdint>
#include <string>
#include <vector>

namespace latflow::io {

// One 4D SU(3) configuration in latflow's layout: links[((mu * V + x) * 3 + i) * 3 + j], x row-major over
// extents = {L0, L1, L2, L3} (x0 slowest), as the fields [4, L0, L1, L2, L3, 3, 3] of theory = sun, n = 3.
struct GaugeConfig {
  std::vector<std::int64_t> extents;
  std::vector<std::complex<double>> links;
  std::string format;  // what read_gauge_file read: "nersc" (header verified) or "ildg"
};

// Mean over sites and the six planes of Re tr U_munu / 3; mean over links of Re tr U / 3.
double mean_plaquette(const GaugeConfig& u);
double mean_link_trace(const GaugeConfig& u);
// The NERSC checksum of IEEE-754 doubles: sum mod 2^32 of their 32-bit words (low and high half of each).
std::uint32_t nersc_checksum(const std::vector<double>& values);

// A NERSC file (4D_SU3_GAUGE_3x3, IEEE64BIG) with the given ENSEMBLE_ID and SEQUENCE_NUMBER.
std::string nersc_bytes(const GaugeConfig& u, const std::string& ensemble_id, std::int64_t sequence);
// An ILDG file (64-bit precision) with the given logical file name.
std::string ildg_bytes(const GaugeConfig& u, const std::string& lfn);
// Reads a NERSC file (4D_SU3_GAUGE or _3x3, IEEE32/64, BIG or LITTLE) or an ILDG file (su3gauge, 32 or 64
// bit), told apart by the first bytes. NERSC: the checksum, link trace and plaquette of the header must match
// the data. Any mismatch, truncation or unsupported field: IoError naming the file and what is wrong, in one
// line.
GaugeConfig read_gauge_file(const std::string& path);

// Writes every stored configuration of a complete latflow ensemble of 4D SU(3) (hmc, mixed or imh) into `dir`
// as STEM_c<chain>_t<trajectory>.<format> (chains ensembles) or STEM_p<proposal>.<format> (imh), format nersc
// or ildg; refuses existing files unless overwrite. Returns the paths written.
std::vector<std::string> export_ensemble(const std::string& h5, const std::string& format, const std::string& dir,
                                         bool overwrite);

}  // namespace latflow::io
