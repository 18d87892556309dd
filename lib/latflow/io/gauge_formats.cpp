// SPDX-License-Identifier: MIT
#include "latflow/io/gauge_formats.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "latflow/core/error.hpp"
#include "latflow/io/durable.hpp"
#include "latflow/io/h5.hpp"

namespace latflow::io {
namespace {
using cd = std::complex<double>;
constexpr int kN = 3;
constexpr std::uint32_t kLimeMagic = 0x456789ab;

std::int64_t volume(const std::vector<std::int64_t>& L) {
  std::int64_t v = 1;
  for (auto l : L) v *= l;
  return v;
}

// latflow's row-major site index of (x, y, z, t) = (x0, x1, x2, x3).
std::int64_t site(const std::vector<std::int64_t>& L, std::int64_t x, std::int64_t y, std::int64_t z, std::int64_t t) {
  return ((x * L[1] + y) * L[2] + z) * L[3] + t;
}

// Calls f(latflow site) in the file order: x fastest, t slowest.
template <class F>
void for_file_sites(const std::vector<std::int64_t>& L, F f) {
  for (std::int64_t t = 0; t < L[3]; ++t)
    for (std::int64_t z = 0; z < L[2]; ++z)
      for (std::int64_t y = 0; y < L[1]; ++y)
        for (std::int64_t x = 0; x < L[0]; ++x) f(site(L, x, y, z, t));
}

// The matrix entries in the file's order (x fastest, directions at each site, `rows` rows of 3 entries).
std::vector<double> file_values(const GaugeConfig& u, int rows) {
  const auto V = volume(u.extents);
  std::vector<double> v;
  v.reserve(static_cast<std::size_t>(V * 4 * rows * kN * 2));
  for_file_sites(u.extents, [&](std::int64_t x) {
    for (int mu = 0; mu < 4; ++mu)
      for (int i = 0; i < rows; ++i)
        for (int j = 0; j < kN; ++j) {
          const cd c = u.links[static_cast<std::size_t>(((mu * V + x) * kN + i) * kN + j)];
          v.push_back(c.real());
          v.push_back(c.imag());
        }
  });
  return v;
}

// Big-endian bytes of doubles, and back.
std::string big_endian_bytes(const std::vector<double>& v) {
  std::string out(v.size() * 8, '\0');
  for (std::size_t k = 0; k < v.size(); ++k) {
    std::uint64_t bits;
    std::memcpy(&bits, &v[k], 8);
    for (int b = 0; b < 8; ++b) out[k * 8 + b] = static_cast<char>((bits >> (56 - 8 * b)) & 0xff);
  }
  return out;
}

// Values of `count` IEEE numbers of `width` bytes (4 or 8) at `data` in the given byte order, as doubles;
// also their NERSC checksum (the sum of the 32-bit words of the values in the stored precision).
std::vector<double> decode(const char* data, std::size_t count, int width, bool big, std::uint32_t* checksum) {
  std::vector<double> v(count);
  std::uint32_t sum = 0;
  for (std::size_t k = 0; k < count; ++k) {
    std::uint64_t bits = 0;
    for (int b = 0; b < width; ++b) {
      const auto byte = static_cast<std::uint64_t>(static_cast<unsigned char>(data[k * width + b]));
      bits |= byte << (big ? 8 * (width - 1 - b) : 8 * b);
    }
    if (width == 8) {
      std::memcpy(&v[k], &bits, 8);
      sum += static_cast<std::uint32_t>(bits) + static_cast<std::uint32_t>(bits >> 32);
    } else {
      const auto b32 = static_cast<std::uint32_t>(bits);
      float f;
      std::memcpy(&f, &b32, 4);
      v[k] = f;
      sum += b32;
    }
  }
  if (checksum) *checksum = sum;
  return v;
}

// Fills u.links from file-ordered values with `rows` stored rows (the third reconstructed from the first
// two).
void fill_links(GaugeConfig& u, const std::vector<double>& v, int rows) {
  const auto V = volume(u.extents);
  u.links.assign(static_cast<std::size_t>(4 * V * kN * kN), cd(0));
  std::size_t k = 0;
  for_file_sites(u.extents, [&](std::int64_t x) {
    for (int mu = 0; mu < 4; ++mu) {
      cd* m = &u.links[static_cast<std::size_t>((mu * V + x) * kN * kN)];
      for (int i = 0; i < rows; ++i)
        for (int j = 0; j < kN; ++j, k += 2) m[i * kN + j] = cd(v[k], v[k + 1]);
      if (rows == 2)  // u3 = (u1 x u2)^*
        for (int j = 0; j < kN; ++j) {
          const int a = (j + 1) % kN, b = (j + 2) % kN;
          m[2 * kN + j] = std::conj(m[a] * m[kN + b] - m[b] * m[kN + a]);
        }
    }
  });
}

std::string trim(const std::string& s) {
  const auto a = s.find_first_not_of(" \t\r"), b = s.find_last_not_of(" \t\r");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path + ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::int64_t positive_int(const std::string& path, const std::string& key, const std::string& value) {
  try {
    std::size_t used = 0;
    const auto n = std::stoll(value, &used);
    if (used == value.size() && n >= 1 && n <= 100000) return n;
  } catch (const std::exception&) {
  }
  throw IoError(path + ": " + key + " = " + value + " is not a lattice extent");
}

double header_double(const std::string& path, const std::map<std::string, std::string>& h, const std::string& key) {
  try {
    return std::stod(h.at(key));
  } catch (const std::exception&) {
    throw IoError(path + ": header " + key + " = " + h.at(key) + " is not a number");
  }
}

GaugeConfig read_nersc(const std::string& path, const std::string& bytes) {
  std::map<std::string, std::string> h;
  std::size_t pos = bytes.find('\n') + 1;
  for (;;) {
    const auto end = bytes.find('\n', pos);
    if (end == std::string::npos) throw IoError(path + ": NERSC header has no END_HEADER line");
    const auto line = trim(bytes.substr(pos, end - pos));
    pos = end + 1;
    if (line == "END_HEADER") break;
    const auto eq = line.find('=');
    if (eq != std::string::npos) h[trim(line.substr(0, eq))] = trim(line.substr(eq + 1));
  }
  for (const char* key :
       {"DATATYPE", "DIMENSION_1", "DIMENSION_2", "DIMENSION_3", "DIMENSION_4", "CHECKSUM", "FLOATING_POINT"})
    if (!h.count(key)) throw IoError(path + ": NERSC header has no " + key);
  const auto& type = h["DATATYPE"];
  if (type != "4D_SU3_GAUGE" && type != "4D_SU3_GAUGE_3x3")
    throw IoError(path + ": DATATYPE = " + type + " (latflow reads 4D_SU3_GAUGE and 4D_SU3_GAUGE_3x3)");
  const int rows = type == "4D_SU3_GAUGE" ? 2 : 3;
  const auto& fp = h["FLOATING_POINT"];
  int width = 0;
  bool big = true;
  if (fp == "IEEE64BIG" || fp == "IEEE64")
    width = 8;
  else if (fp == "IEEE32BIG" || fp == "IEEE32")
    width = 4;
  else if (fp == "IEEE64LITTLE")
    width = 8, big = false;
  else if (fp == "IEEE32LITTLE")
    width = 4, big = false;
  else
    throw IoError(path + ": FLOATING_POINT = " + fp + " (IEEE32 or IEEE64, BIG or LITTLE)");
  GaugeConfig u;
  for (int k = 1; k <= 4; ++k) {
    const std::string key = "DIMENSION_" + std::to_string(k);
    u.extents.push_back(positive_int(path, key, h[key]));
  }
  const auto count = static_cast<std::size_t>(volume(u.extents) * 4 * rows * kN * 2);
  if (bytes.size() - pos != count * width)
    throw IoError(path + ": " + std::to_string(bytes.size() - pos) + " data bytes, the header implies " +
                  std::to_string(count * width) + " (truncated or not this lattice)");
  std::uint32_t sum = 0;
  const auto v = decode(bytes.data() + pos, count, width, big, &sum);
  std::uint32_t stated = 0;
  try {
    stated = static_cast<std::uint32_t>(std::stoul(h["CHECKSUM"], nullptr, 16));
  } catch (const std::exception&) {
    throw IoError(path + ": CHECKSUM = " + h["CHECKSUM"] + " is not hexadecimal");
  }
  if (stated != sum) {
    std::ostringstream os;
    os << path << ": checksum mismatch (header " << std::hex << stated << ", data " << sum << ")";
    throw IoError(os.str());
  }
  fill_links(u, v, rows);
  u.format = "nersc";
  // The header's averages must be those of the data (to the digits written; float data to float precision).
  const double tol = width == 8 ? 1e-9 : 1e-6;
  for (const auto& [key, value] : {std::pair<std::string, double>{"LINK_TRACE", mean_link_trace(u)},
                                   std::pair<std::string, double>{"PLAQUETTE", mean_plaquette(u)}}) {
    if (!h.count(key)) continue;
    const double stated_value = header_double(path, h, key);
    if (!(std::abs(stated_value - value) <= tol + 1e-8 * std::abs(value))) {
      std::ostringstream os;
      os.precision(12);
      os << path << ": header " << key << " = " << h[key] << " but the links give " << value;
      throw IoError(os.str());
    }
  }
  return u;
}

std::uint64_t read_be(const char* p, int n) {
  std::uint64_t v = 0;
  for (int b = 0; b < n; ++b) v = (v << 8) | static_cast<unsigned char>(p[b]);
  return v;
}

std::string xml_value(const std::string& xml, const std::string& tag) {
  const auto a = xml.find("<" + tag + ">"), b = xml.find("</" + tag + ">");
  if (a == std::string::npos || b == std::string::npos || b < a) return "";
  return trim(xml.substr(a + tag.size() + 2, b - a - tag.size() - 2));
}

GaugeConfig read_ildg(const std::string& path, const std::string& bytes) {
  std::string format, data;
  bool has_data = false;
  for (std::size_t pos = 0; pos < bytes.size();) {
    if (bytes.size() - pos < 144 || read_be(bytes.data() + pos, 4) != kLimeMagic)
      throw IoError(path + ": not a LIME record at byte " + std::to_string(pos));
    const auto length = read_be(bytes.data() + pos + 8, 8);
    const std::string type(bytes.data() + pos + 16, strnlen(bytes.data() + pos + 16, 128));
    const std::size_t padded = (length + 7) / 8 * 8;
    if (bytes.size() - pos - 144 < padded) throw IoError(path + ": LIME record " + type + " is truncated");
    if (type == "ildg-format") format = bytes.substr(pos + 144, length);
    if (type == "ildg-binary-data") {
      data = bytes.substr(pos + 144, length);
      has_data = true;
    }
    pos += 144 + padded;
  }
  if (format.empty() || !has_data) throw IoError(path + ": no ildg-format or ildg-binary-data record");
  if (xml_value(format, "field") != "su3gauge")
    throw IoError(path + ": ildg field " + xml_value(format, "field") + " (latflow reads su3gauge)");
  const auto precision = xml_value(format, "precision");
  if (precision != "32" && precision != "64") throw IoError(path + ": ildg precision " + precision);
  GaugeConfig u;
  for (const char* tag : {"lx", "ly", "lz", "lt"}) u.extents.push_back(positive_int(path, tag, xml_value(format, tag)));
  const int width = precision == "64" ? 8 : 4;
  const auto count = static_cast<std::size_t>(volume(u.extents) * 4 * kN * kN * 2);
  if (data.size() != count * width) throw IoError(path + ": ildg-binary-data has the wrong size for the lattice");
  fill_links(u, decode(data.data(), count, width, true, nullptr), 3);
  u.format = "ildg";
  return u;
}

std::string lime_record(const std::string& type, const std::string& payload, bool begin, bool end) {
  std::string h(144, '\0');
  auto put = [&](std::size_t at, std::uint64_t v, int n) {
    for (int b = 0; b < n; ++b) h[at + b] = static_cast<char>((v >> (8 * (n - 1 - b))) & 0xff);
  };
  put(0, kLimeMagic, 4);
  put(4, 1, 2);                                          // LIME version
  put(6, (begin ? 0x8000 : 0) | (end ? 0x4000 : 0), 2);  // message begin / end bits
  put(8, payload.size(), 8);
  std::memcpy(&h[16], type.data(), std::min<std::size_t>(type.size(), 127));
  return h + payload + std::string((8 - payload.size() % 8) % 8, '\0');
}
}  // namespace

double mean_link_trace(const GaugeConfig& u) {
  double sum = 0;
  const std::size_t links = u.links.size() / (kN * kN);
  for (std::size_t l = 0; l < links; ++l)
    for (int i = 0; i < kN; ++i) sum += u.links[l * kN * kN + i * kN + i].real();
  return sum / (static_cast<double>(links) * kN);
}

double mean_plaquette(const GaugeConfig& u) {
  const auto& L = u.extents;
  const auto V = volume(L);
  std::array<std::int64_t, 4> stride{L[1] * L[2] * L[3], L[2] * L[3], L[3], 1};
  auto up = [&](std::int64_t x, int mu) {
    const std::int64_t c = (x / stride[mu]) % L[mu];
    return x + ((c + 1) % L[mu] - c) * stride[mu];
  };
  auto U = [&](int mu, std::int64_t x) { return &u.links[static_cast<std::size_t>((mu * V + x) * kN * kN)]; };
  double sum = 0;
  for (std::int64_t x = 0; x < V; ++x)
    for (int mu = 0; mu < 4; ++mu)
      for (int nu = mu + 1; nu < 4; ++nu) {
        // Re tr [U_mu(x) U_nu(x + mu)] [U_nu(x) U_mu(x + nu)]^+ = Re sum_ij A_ij conj(B_ij).
        const cd *a = U(mu, x), *b = U(nu, up(x, mu)), *c = U(nu, x), *d = U(mu, up(x, nu));
        for (int i = 0; i < kN; ++i)
          for (int j = 0; j < kN; ++j) {
            cd A = 0, B = 0;
            for (int k = 0; k < kN; ++k) {
              A += a[i * kN + k] * b[k * kN + j];
              B += c[i * kN + k] * d[k * kN + j];
            }
            sum += (A * std::conj(B)).real();
          }
      }
  return sum / (static_cast<double>(V) * 6 * kN);
}

std::uint32_t nersc_checksum(const std::vector<double>& values) {
  std::uint32_t sum = 0;
  for (double v : values) {
    std::uint64_t bits;
    std::memcpy(&bits, &v, 8);
    sum += static_cast<std::uint32_t>(bits) + static_cast<std::uint32_t>(bits >> 32);
  }
  return sum;
}

std::string nersc_bytes(const GaugeConfig& u, const std::string& ensemble_id, std::int64_t sequence) {
  const auto values = file_values(u, 3);
  std::ostringstream h;
  h.precision(15);
  h << "BEGIN_HEADER\nHDR_VERSION = 1.0\nDATATYPE = 4D_SU3_GAUGE_3x3\nSTORAGE_FORMAT = 1.0\n";
  for (int k = 0; k < 4; ++k) h << "DIMENSION_" << k + 1 << " = " << u.extents[k] << "\n";
  h << "LINK_TRACE = " << mean_link_trace(u) << "\nPLAQUETTE = " << mean_plaquette(u) << "\n";
  for (int k = 1; k <= 4; ++k) h << "BOUNDARY_" << k << " = PERIODIC\n";
  h << "CHECKSUM = " << std::hex << nersc_checksum(values) << std::dec << "\nENSEMBLE_ID = " << ensemble_id
    << "\nENSEMBLE_LABEL = latflow\nSEQUENCE_NUMBER = " << sequence
    << "\nCREATOR = latflow\nFLOATING_POINT = IEEE64BIG\nEND_HEADER\n";
  return h.str() + big_endian_bytes(values);
}

std::string ildg_bytes(const GaugeConfig& u, const std::string& lfn) {
  std::ostringstream x;
  x << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ildgFormat xmlns=\"http://www.lqcd.org/ildg\" "
       "xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" "
       "xsi:schemaLocation=\"http://www.lqcd.org/ildg "
       "http://www.lqcd.org/ildg/filefmt.xsd\">\n<version>1.0</version>\n<field>su3gauge</field>\n"
       "<precision>64</precision>\n<lx>"
    << u.extents[0] << "</lx><ly>" << u.extents[1] << "</ly><lz>" << u.extents[2] << "</lz><lt>" << u.extents[3]
    << "</lt>\n</ildgFormat>\n";
  return lime_record("ildg-format", x.str(), true, false) +
         lime_record("ildg-binary-data", big_endian_bytes(file_values(u, 3)), false, false) +
         lime_record("ildg-data-lfn", lfn, false, true);
}

GaugeConfig read_gauge_file(const std::string& path) {
  const auto bytes = read_all(path);
  if (bytes.size() >= 4 && read_be(bytes.data(), 4) == kLimeMagic) return read_ildg(path, bytes);
  if (bytes.rfind("BEGIN_HEADER", 0) == 0) return read_nersc(path, bytes);
  throw IoError(path + ": neither a NERSC file (BEGIN_HEADER) nor an ILDG/LIME file");
}

std::vector<std::string> export_ensemble(const std::string& h5, const std::string& format, const std::string& dir,
                                         bool overwrite) {
  if (format != "nersc" && format != "ildg") throw ConfigError("--format = " + format + ": must be nersc or ildg");
  const auto f = File::open_read(h5);
  if (!f.has_attr("/", "status") || f.read_attr_string("/", "status") != "complete")
    throw IoError(h5 + ": not a complete latflow ensemble");
  const auto theory = f.read_attr_string("/theory", "name");
  const auto extents = f.read_attr_ints("/theory", "extents");
  if (theory != "sun" || f.read_attr_int("/theory", "n") != 3 || extents.size() != 4)
    throw IoError(h5 + ": NERSC and ILDG exports are for 4D SU(3) ensembles (this is " + theory + " in " +
                  std::to_string(extents.size()) + "D)");
  if (!f.exists("/configs/field")) throw IoError(h5 + ": no stored configurations (hmc.save_every = 0?)");
  const auto kind = f.read_attr_string("/", "kind");
  const bool chains = kind != "imh";
  const auto shape = f.shape("/configs/field");
  const auto rows = static_cast<std::int64_t>(shape[0]);
  const std::int64_t per_row = chains ? static_cast<std::int64_t>(shape[1]) : 1;
  const auto labels = f.read_i64(chains ? "/configs/trajectory" : "/configs/proposal");
  const auto V = volume(extents);
  const std::int64_t per_config = 4 * V * kN * kN * 2;
  const auto stem = std::filesystem::path(h5).stem().string();
  std::vector<std::string> written;
  for (std::int64_t r = 0; r < rows; ++r) {
    const auto field = f.read_f64("/configs/field", static_cast<std::uint64_t>(r), 1);
    if (static_cast<std::int64_t>(field.size()) != per_row * per_config)
      throw IoError(h5 + ": /configs/field rows do not hold 4D SU(3) fields of " + std::to_string(V) + " sites");
    for (std::int64_t c = 0; c < per_row; ++c) {
      GaugeConfig u{extents, {}, ""};
      u.links.resize(static_cast<std::size_t>(per_config / 2));
      for (std::size_t k = 0; k < u.links.size(); ++k)
        u.links[k] = cd(field[static_cast<std::size_t>(c * per_config) + 2 * k],
                        field[static_cast<std::size_t>(c * per_config) + 2 * k + 1]);
      const std::string name = chains ? stem + "_c" + std::to_string(c) + "_t" + std::to_string(labels[r])
                                      : stem + "_p" + std::to_string(labels[r]);
      const auto path = (std::filesystem::path(dir) / (name + "." + format)).string();
      if (!overwrite && file_exists(path)) throw IoError(path + ": exists; refusing to overwrite (pass --overwrite)");
      ensure_parent_dir(path);
      write_file_atomic(path, format == "nersc" ? nersc_bytes(u, stem, labels[r]) : ildg_bytes(u, name));
      written.push_back(path);
    }
  }
  return written;
}

}  // namespace latflow::io
