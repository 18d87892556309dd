// SPDX-License-Identifier: MIT
// Round trips through latflow::io::File and the error messages users see. Runs without MPI: the files use the
// default (serial) property lists.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "latflow/core/error.hpp"
#include "latflow/io/gauge_formats.hpp"
#include "latflow/io/h5.hpp"
#include "latflow/theories/sun_prior.hpp"

namespace fs = std::filesystem;
using latflow::IoError;
using latflow::io::DType;
using latflow::io::File;

namespace {

// A fresh directory per test case, removed afterwards, so tests can run concurrently and leave nothing
// behind.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    const auto stamp = std::chrono::steady_clock::now().time_since_epoch().count();
    dir_ = fs::temp_directory_path() /
           ("latflow_test_h5_" + std::to_string(::getpid()) + "_" + std::to_string(stamp) + "_" + std::to_string(rd()));
    fs::create_directories(dir_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (dir_ / name).string(); }

 private:
  fs::path dir_;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Catches the IoError of `expr` and returns its message, failing the test if none is thrown.
template <class F>
std::string io_error_of(F&& f) {
  try {
    f();
  } catch (const IoError& e) {
    const std::string what = e.what();
    CHECK(what.find('\n') == std::string::npos);  // one line, never an HDF5 dump
    return what;
  }
  FAIL("expected latflow::IoError");
  return {};
}

template <class T>
std::vector<T> read_as(const File& f, const std::string& dset, std::uint64_t row0 = 0, std::int64_t nrows = -1) {
  if constexpr (std::is_same_v<T, double>) return f.read_f64(dset, row0, nrows);
  if constexpr (std::is_same_v<T, float>) return f.read_f32(dset, row0, nrows);
  if constexpr (std::is_same_v<T, std::int64_t>) return f.read_i64(dset, row0, nrows);
  if constexpr (std::is_same_v<T, std::uint8_t>) return f.read_u8(dset, row0, nrows);
}

// Creates `dset` of type T, appends 1, 0, chunk-crossing and larger blocks of rows, reopens the file and
// checks values, rows, shape and dtype.
template <class T>
void check_extendible_round_trip(const TempDir& tmp, DType type, const std::vector<std::uint64_t>& row_shape,
                                 int deflate) {
  const std::string path = tmp.file("ext.h5");
  const std::string dset = "/ensemble/fields";
  std::uint64_t per_row = 1;
  for (auto e : row_shape) per_row *= e;
  std::vector<T> expected;
  {
    File f = File::create(path, true);
    f.create_extendible(dset, type, row_shape, 4, deflate);
    REQUIRE(f.rows(dset) == 0);
    std::uint64_t counter = 0;
    for (std::uint64_t block : {1u, 0u, 6u, 3u, 13u}) {
      std::vector<T> data(block * per_row);
      for (auto& v : data) {
        // Values below 251 so that every type, u8 included, holds them exactly.
        v = static_cast<T>(counter++ % 251);
        if constexpr (std::is_floating_point_v<T>) v = static_cast<T>(v * 0.5 - 17.25);
        if constexpr (std::is_same_v<T, std::int64_t>) v = v * 1000003 - 5;
      }
      f.append(dset, data.data(), block);
      expected.insert(expected.end(), data.begin(), data.end());
      REQUIRE(f.rows(dset) == expected.size() / per_row);
    }
    f.flush();
  }
  const File f = File::open_read(path);
  const std::uint64_t rows = expected.size() / per_row;
  CHECK(rows == 23);
  CHECK(f.rows(dset) == rows);
  std::vector<std::uint64_t> shape{rows};
  shape.insert(shape.end(), row_shape.begin(), row_shape.end());
  CHECK(f.shape(dset) == shape);
  CHECK(f.dtype(dset) == type);
  CHECK(read_as<T>(f, dset) == expected);
  // Reading through another type converts as HDF5 does: every stored value here fits an f64 exactly.
  const auto as_f64 = f.read_f64(dset);
  REQUIRE(as_f64.size() == expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) CHECK(as_f64[i] == static_cast<double>(expected[i]));
}

}  // namespace

TEST_CASE("File is move-only", "[h5]") {
  STATIC_REQUIRE(!std::is_copy_constructible_v<File>);
  STATIC_REQUIRE(!std::is_copy_assignable_v<File>);
  STATIC_REQUIRE(std::is_nothrow_move_constructible_v<File>);
  STATIC_REQUIRE(std::is_nothrow_move_assignable_v<File>);
}

TEST_CASE("attributes of every kind round-trip", "[h5]") {
  TempDir tmp;
  const std::string path = tmp.file("attrs.h5");
  const std::string unicode = "β = 0.5; Δt = 1e-2; ∑ φ² ✓";
  const std::vector<double> doubles{1.5, -2.25, 1e-300, std::numeric_limits<double>::infinity()};
  const std::vector<std::int64_t> ints{std::numeric_limits<std::int64_t>::min(), -1, 0, 7,
                                       std::numeric_limits<std::int64_t>::max()};
  {
    File f = File::create(path, false);
    f.create_group("/theory");
    f.create_extendible("/chain/index", DType::I64, {}, 16);
    for (const std::string obj : {"/", "/theory", "/chain/index"}) {
      f.write_attr(obj, "s", std::string("phi4"));
      f.write_attr(obj, "c", "literal");
      f.write_attr(obj, "u", unicode);
      f.write_attr(obj, "empty", std::string());
      f.write_attr(obj, "d", 0.1);
      f.write_attr(obj, "i", std::int64_t{-42});
      f.write_attr(obj, "big", std::numeric_limits<std::int64_t>::max());
      f.write_attr(obj, "vd", doubles);
      f.write_attr(obj, "vi", ints);
      f.write_attr(obj, "vd0", std::vector<double>{});
      f.write_attr(obj, "vi0", std::vector<std::int64_t>{});
    }
    // Replacing an attribute may change its type and length.
    f.write_attr("/theory", "d", std::string("now a string"));
    f.write_attr("/theory", "vd", std::vector<double>{3.0});
  }
  const File f = File::open_read(path);
  for (const std::string obj : {"/", "/chain/index"}) {
    INFO(obj);
    CHECK(f.read_attr_string(obj, "s") == "phi4");
    CHECK(f.read_attr_string(obj, "c") == "literal");
    CHECK(f.read_attr_string(obj, "u") == unicode);
    CHECK(f.read_attr_string(obj, "empty").empty());
    CHECK(f.read_attr_double(obj, "d") == 0.1);
    CHECK(f.read_attr_int(obj, "i") == -42);
    CHECK(f.read_attr_int(obj, "big") == std::numeric_limits<std::int64_t>::max());
    CHECK(f.read_attr_doubles(obj, "vd") == doubles);
    CHECK(f.read_attr_ints(obj, "vi") == ints);
    CHECK(f.read_attr_doubles(obj, "vd0").empty());
    CHECK(f.read_attr_ints(obj, "vi0").empty());
    CHECK(f.attr_names(obj) ==
          std::vector<std::string>{"big", "c", "d", "empty", "i", "s", "u", "vd", "vd0", "vi", "vi0"});
  }
  CHECK(f.read_attr_string("/theory", "d") == "now a string");
  CHECK(f.read_attr_doubles("/theory", "vd") == std::vector<double>{3.0});

  SECTION("integers convert to doubles, not the other way") {
    CHECK(f.read_attr_double("/", "i") == -42.0);
    CHECK(f.read_attr_doubles("/", "vi") == std::vector<double>(ints.begin(), ints.end()));
    // A scalar reads as a vector of one.
    CHECK(f.read_attr_ints("/", "i") == std::vector<std::int64_t>{-42});
    CHECK_THAT(io_error_of([&] { f.read_attr_int("/", "d"); }), Catch::Contains("attribute d of /"));
    CHECK_THAT(io_error_of([&] { f.read_attr_ints("/", "vd"); }), Catch::Contains("expected integers"));
  }
  SECTION("kind mismatches name the attribute") {
    CHECK_THAT(io_error_of([&] { f.read_attr_double("/theory", "s"); }),
               Catch::Contains("attribute s of /theory") && Catch::Contains("string"));
    CHECK_THAT(io_error_of([&] { f.read_attr_string("/", "d"); }), Catch::Contains("expected a string"));
    CHECK_THAT(io_error_of([&] { f.read_attr_double("/", "vd"); }), Catch::Contains("expected 1"));
  }
  SECTION("has_attr") {
    CHECK(f.has_attr("/theory", "s"));
    CHECK_FALSE(f.has_attr("/theory", "nope"));
    CHECK_THAT(io_error_of([&] { f.has_attr("/nowhere", "s"); }), Catch::Contains("/nowhere: not found"));
  }
}

TEST_CASE("extendible datasets of every dtype round-trip", "[h5]") {
  TempDir tmp;
  SECTION("f64 [rows, 2, 3]") { check_extendible_round_trip<double>(tmp, DType::F64, {2, 3}, 4); }
  SECTION("f32 [rows, 5] uncompressed") { check_extendible_round_trip<float>(tmp, DType::F32, {5}, 0); }
  SECTION("i64 [rows]") { check_extendible_round_trip<std::int64_t>(tmp, DType::I64, {}, 9); }
  SECTION("u8 [rows, 2, 2, 3]") { check_extendible_round_trip<std::uint8_t>(tmp, DType::U8, {2, 2, 3}, 1); }
}

TEST_CASE("extendible datasets: partial reads, resize, misuse", "[h5]") {
  TempDir tmp;
  const std::string path = tmp.file("rows.h5");
  File f = File::create(path, false);
  f.create_extendible("/x", DType::F64, {3}, 5);
  std::vector<double> data(10 * 3);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<double>(i);
  f.append("/x", data.data(), 10);
  const auto rows_of = [&](std::uint64_t r0, std::uint64_t n) {
    return std::vector<double>(data.begin() + r0 * 3, data.begin() + (r0 + n) * 3);
  };

  SECTION("row0 / nrows") {
    CHECK(f.read_f64("/x", 0, 1) == rows_of(0, 1));
    CHECK(f.read_f64("/x", 4, 3) == rows_of(4, 3));  // crosses a chunk boundary
    CHECK(f.read_f64("/x", 7) == rows_of(7, 3));
    CHECK(f.read_f64("/x", 9, -1) == rows_of(9, 1));
    CHECK(f.read_f64("/x", 10).empty());
    CHECK(f.read_f64("/x", 3, 0).empty());
    CHECK(f.read_i64("/x", 2, 1) == std::vector<std::int64_t>{6, 7, 8});
    CHECK_THAT(io_error_of([&] { f.read_f64("/x", 8, 3); }),
               Catch::Contains("dataset /x") && Catch::Contains("out of range") && Catch::Contains("10 rows"));
    CHECK_THAT(io_error_of([&] { f.read_f64("/x", 11); }), Catch::Contains("out of range"));
    CHECK_THAT(io_error_of([&] { f.read_f64("/x", 0, -2); }), Catch::Contains("invalid row count"));
  }
  SECTION("resize shrinks and grows; appends continue at the end") {
    f.resize("/x", 4);
    CHECK(f.rows("/x") == 4);
    CHECK(f.read_f64("/x") == rows_of(0, 4));
    f.resize("/x", 6);  // the grown rows read as the fill value, not as the old data
    CHECK(f.shape("/x") == std::vector<std::uint64_t>{6, 3});
    auto expected = rows_of(0, 4);
    expected.resize(6 * 3, 0.0);
    CHECK(f.read_f64("/x") == expected);
    const std::vector<double> more{-1, -2, -3};
    f.append("/x", more.data(), 1);
    expected.insert(expected.end(), more.begin(), more.end());
    CHECK(f.read_f64("/x") == expected);
    f.resize("/x", 0);
    CHECK(f.rows("/x") == 0);
    CHECK(f.read_f64("/x").empty());
  }
  SECTION("appends must match the dtype; creating twice fails") {
    const std::vector<float> wrong(3, 1.0f);
    CHECK_THAT(io_error_of([&] { f.append("/x", wrong.data(), 1); }),
               Catch::Contains("rows.h5: dataset /x: cannot append f32 data to a f64 dataset"));
    CHECK(f.rows("/x") == 10);
    CHECK_THAT(io_error_of([&] { f.create_extendible("/x", DType::F64, {3}, 5); }),
               Catch::Contains("dataset /x: already exists"));
    CHECK_THAT(io_error_of([&] { f.create_extendible("/y", DType::F64, {3}, 0); }), Catch::Contains("chunk_rows"));
    CHECK_THAT(io_error_of([&] { f.create_extendible("/y", DType::F64, {0}, 4); }), Catch::Contains("zero extent"));
    CHECK_THAT(io_error_of([&] {
                 f.create_extendible("/y", DType::U8, {1u << 20, 1u << 10}, 8);
               }),
               Catch::Contains("4 GiB"));
    CHECK_FALSE(f.exists("/y"));
  }
}

TEST_CASE("fixed-size and string datasets round-trip", "[h5]") {
  TempDir tmp;
  const std::string path = tmp.file("fixed.h5");
  const std::string config =
      "# phi4 at the critical point\n"
      "[theory]\n"
      "kind = phi4\n"
      "m2 = -4.0   ; bare mass² (Wilson convention)\n"
      "lambda=8.0\n"
      "note = \"κ ≈ 0.27, φ⁴ — ✓\"\n";
  const std::vector<double> matrix{1, 2, 3, 4, 5, 6};
  {
    File f = File::create(path, false);
    f.write_string("/input/config", config);
    f.write_string("/input/empty", "");
    f.write("/reference/matrix", matrix, {2, 3});
    f.write("/reference/scalar", {2.5}, {});
    f.write("/reference/none", {}, {0});
    CHECK_THAT(io_error_of([&] {
                 f.write("/reference/bad", {1, 2, 3}, {2, 2});
               }),
               Catch::Contains("dataset /reference/bad") && Catch::Contains("holds 4 values but 3"));
    CHECK_THAT(io_error_of([&] { f.write_string("/input/config", "again"); }),
               Catch::Contains("dataset /input/config: already exists"));
    CHECK_THAT(io_error_of([&] { f.write_string("/input/nul", std::string("a\0b", 3)); }), Catch::Contains("NUL"));
  }
  const File f = File::open_read(path);
  CHECK(f.read_string("/input/config") == config);
  CHECK(f.read_string("/input/empty").empty());
  CHECK(f.shape("/reference/matrix") == std::vector<std::uint64_t>{2, 3});
  CHECK(f.dtype("/reference/matrix") == DType::F64);
  CHECK(f.read_f64("/reference/matrix") == matrix);
  CHECK(f.read_f64("/reference/matrix", 1) == std::vector<double>{4, 5, 6});
  CHECK(f.shape("/reference/scalar").empty());
  CHECK(f.read_f64("/reference/scalar") == std::vector<double>{2.5});
  CHECK(f.read_f64("/reference/none").empty());
  CHECK_THAT(io_error_of([&] { f.rows("/reference/scalar"); }), Catch::Contains("scalar"));
  CHECK_THAT(io_error_of([&] { f.read_f64("/input/config"); }),
             Catch::Contains("dataset /input/config") && Catch::Contains("string"));
  CHECK_THAT(io_error_of([&] { f.read_string("/reference/matrix"); }), Catch::Contains("expected a string"));
}

TEST_CASE("groups: create_group, list and exists on nested paths", "[h5]") {
  TempDir tmp;
  File f = File::create(tmp.file("groups.h5"), false);
  f.create_group("/a/b/c");  // intermediate groups are created
  f.create_group("/a/b");    // no-op: exists
  f.create_group("/z");
  f.write("/a/b/data", {1.0}, {1});
  f.create_extendible("/m/n/ext", DType::U8, {2}, 8);  // parents of datasets are created too

  CHECK(f.exists("/"));
  CHECK(f.exists("/a"));
  CHECK(f.exists("/a/b/c"));
  CHECK(f.exists("/a/b/data"));
  CHECK(f.exists("/m/n/ext"));
  CHECK_FALSE(f.exists("/a/x"));
  CHECK_FALSE(f.exists("/a/x/y/z"));         // missing intermediate group: false, not an error
  CHECK_FALSE(f.exists("/a/b/data/below"));  // below a dataset: false, not an error
  CHECK(f.list("/") == std::vector<std::string>{"a", "m", "z"});
  CHECK(f.list("/a/b") == std::vector<std::string>{"c", "data"});
  CHECK(f.list("/a/b/c").empty());
  CHECK_THAT(io_error_of([&] { f.list("/a/b/data"); }), Catch::Contains("group /a/b/data: is not a group"));
  CHECK_THAT(io_error_of([&] { f.list("/q"); }), Catch::Contains("groups.h5: group /q: not found"));
  CHECK_THAT(io_error_of([&] { f.create_group("/a/b/data"); }), Catch::Contains("is not a group"));
  CHECK_THAT(io_error_of([&] { f.rows("/a/b"); }), Catch::Contains("dataset /a/b: is not a dataset"));
  CHECK_THAT(io_error_of([&] { f.write("/a/b/data/below", {1.0}, {1}); }),
             Catch::Contains("dataset /a/b/data/below: parent /a/b/data is not a group"));
  CHECK_THAT(io_error_of([&] { f.create_group("/a/b/data/x/y"); }),
             Catch::Contains("group /a/b/data/x/y: parent /a/b/data is not a group"));
}

TEST_CASE("create() never touches an existing file unless asked to", "[h5]") {
  TempDir tmp;
  const std::string path = tmp.file("run.h5");
  {
    File f = File::create(path, false);
    f.write_attr("/", "format_version", std::int64_t{1});
    f.write("/keep", {1, 2, 3}, {3});
  }
  const std::string before = slurp(path);
  REQUIRE_FALSE(before.empty());

  const std::string msg = io_error_of([&] { File::create(path, false); });
  CHECK(msg == path + ": exists; refusing to overwrite (pass --overwrite)");
  CHECK(slurp(path) == before);
  {
    const File f = File::open_read(path);
    CHECK(f.read_attr_int("/", "format_version") == 1);
    CHECK(f.read_f64("/keep") == std::vector<double>{1, 2, 3});
  }
  {
    File f = File::create(path, true);  // truncates
    CHECK(f.list("/").empty());
    CHECK_FALSE(f.has_attr("/", "format_version"));
    f.write_attr("/", "format_version", std::int64_t{2});
  }
  CHECK(File::open_read(path).read_attr_int("/", "format_version") == 2);
  CHECK_THAT(io_error_of([&] { File::create(tmp.file("no/such/dir/x.h5"), false); }),
             Catch::Contains("no/such/dir/x.h5: cannot create"));
}

TEST_CASE("open_read and open_write reject missing, empty and garbage files", "[h5]") {
  TempDir tmp;
  const std::string missing = tmp.file("missing.h5");
  CHECK(io_error_of([&] { File::open_read(missing); }) == missing + ": no such file");
  CHECK(io_error_of([&] { File::open_write(missing); }) == missing + ": no such file");

  const std::string empty = tmp.file("empty.h5");
  std::ofstream(empty).close();
  CHECK_THAT(io_error_of([&] { File::open_read(empty); }),
             Catch::StartsWith(empty + ": not an HDF5 file or unreadable"));

  const std::string garbage = tmp.file("garbage.h5");
  {
    std::ofstream out(garbage, std::ios::binary);
    for (int i = 0; i < 4096; ++i) out << "not hdf5 = " << i << '\n';
  }
  CHECK_THAT(io_error_of([&] { File::open_read(garbage); }),
             Catch::StartsWith(garbage + ": not an HDF5 file or unreadable"));
  CHECK_THAT(io_error_of([&] { File::open_write(garbage); }),
             Catch::StartsWith(garbage + ": not an HDF5 file or unreadable"));

  CHECK_THAT(io_error_of([&] { File::open_read(tmp.file("")); }), Catch::Contains("is a directory"));
}

TEST_CASE("missing objects and attributes are named in errors", "[h5]") {
  TempDir tmp;
  const std::string path = tmp.file("run.h5");
  {
    File f = File::create(path, false);
    f.create_group("/chain");
    f.write_attr("/chain", "present", 1.0);
  }
  const File f = File::open_read(path);
  CHECK(io_error_of([&] { f.read_i64("/chain/index"); }) == path + ": dataset /chain/index: not found");
  CHECK(io_error_of([&] { f.rows("/chain/index"); }) == path + ": dataset /chain/index: not found");
  CHECK(io_error_of([&] { f.read_string("/input/config"); }) == path + ": dataset /input/config: not found");
  CHECK(io_error_of([&] { f.read_attr_double("/chain", "beta"); }) == path + ": attribute beta of /chain: not found");
  CHECK(io_error_of([&] { f.read_attr_string("/theory", "kind"); }) == path + ": object /theory: not found");
  CHECK(io_error_of([&] { f.attr_names("/theory"); }) == path + ": object /theory: not found");
}

TEST_CASE("read-only files refuse writes; moved and flushed files behave", "[h5]") {
  TempDir tmp;
  const std::string path = tmp.file("ro.h5");
  {
    File f = File::create(path, false);
    f.create_extendible("/x", DType::I64, {}, 4);
    const std::vector<std::int64_t> v{1, 2};
    f.append("/x", v.data(), 2);
    f.flush();
  }
  {
    File ro = File::open_read(path);
    const std::vector<std::int64_t> v{3};
    CHECK_THAT(io_error_of([&] { ro.append("/x", v.data(), 1); }), Catch::Contains("ro.h5: dataset /x: cannot"));
    CHECK_THAT(io_error_of([&] { ro.write_attr("/", "a", 1.0); }), Catch::Contains("attribute a of /"));
    CHECK(ro.rows("/x") == 2);

    // Moving transfers the open file; the moved-from object reports that it is closed.
    File moved = std::move(ro);
    CHECK(moved.rows("/x") == 2);
    CHECK(moved.path() == path);
    CHECK_THAT(io_error_of([&] { ro.rows("/x"); }),
               Catch::Contains("not open"));  // NOLINT(bugprone-use-after-move)
    File other = File::create(tmp.file("other.h5"), false);
    other = std::move(moved);  // closes other.h5, takes ro.h5
    CHECK(other.rows("/x") == 2);
  }
  // Every handle was closed above: the file can now be opened for writing (HDF5 refuses a read-write open of
  // a file this process still holds read-only).
  File rw = File::open_write(path);
  const std::vector<std::int64_t> v{3, 4, 5};
  rw.append("/x", v.data(), 3);
  rw.flush();
  CHECK(rw.read_i64("/x") == std::vector<std::int64_t>{1, 2, 3, 4, 5});
  CHECK(File::open_read(tmp.file("other.h5")).list("/").empty());
}

// ---- NERSC and ILDG (io/gauge_formats.hpp, docs/file-format.md "NERSC and ILDG") ----

namespace {

latflow::io::GaugeConfig random_su3(std::vector<std::int64_t> extents, std::uint64_t seed) {
  latflow::SplitMix64 rng(seed);
  latflow::io::GaugeConfig u{extents, {}, ""};
  std::int64_t links = 4;
  for (auto l : extents) links *= l;
  for (std::int64_t k = 0; k < links; ++k) {
    const auto m = latflow::haar_sun(3, rng);
    u.links.insert(u.links.end(), m.begin(), m.end());
  }
  return u;
}

void write_bytes(const std::string& path, const std::string& bytes) { std::ofstream(path, std::ios::binary) << bytes; }

}  // namespace

TEST_CASE("NERSC and ILDG: bitwise round trips, the two-row format, header checks, corrupt files", "[h5][gauge]") {
  TempDir dir;
  const auto u = random_su3({2, 3, 4, 5}, 9);  // all extents different: a transposed site order cannot pass
  // Independent plaquette: identity links give 1, and a random field gives about 0.
  auto unit = u;
  for (std::size_t l = 0; l < unit.links.size(); ++l) unit.links[l] = (l % 9) % 4 == 0 ? 1.0 : 0.0;
  CHECK(latflow::io::mean_plaquette(unit) == Approx(1.0).epsilon(1e-15));
  CHECK(latflow::io::mean_link_trace(unit) == Approx(1.0).epsilon(1e-15));
  CHECK(std::abs(latflow::io::mean_plaquette(u)) < 0.05);

  const std::string nersc = dir.file("a.nersc"), ildg = dir.file("a.ildg");
  write_bytes(nersc, latflow::io::nersc_bytes(u, "test", 7));
  write_bytes(ildg, latflow::io::ildg_bytes(u, "a"));
  for (const auto& path : {nersc, ildg}) {
    const auto v = latflow::io::read_gauge_file(path);
    CAPTURE(path);
    CHECK(v.extents == u.extents);
    CHECK(v.links == u.links);  // bitwise
  }
  const auto bytes = latflow::io::nersc_bytes(u, "test", 7);
  const auto data = bytes.find("END_HEADER\n") + 11;
  CHECK(bytes.size() - data == 2 * 3 * 4 * 5 * 4 * 9 * 16);

  // The two-row format: the third row is rebuilt as the conjugate cross product (to rounding). Written here from
  // the three-row file by dropping every third row of each matrix and fixing the header and checksum.
  std::string two_rows = bytes.substr(data), header = bytes.substr(0, data);
  {
    std::string kept;
    for (std::size_t m = 0; m < two_rows.size() / 144; ++m) kept += two_rows.substr(m * 144, 96);
    two_rows = kept;
    std::vector<double> values(two_rows.size() / 8);
    for (std::size_t k = 0; k < values.size(); ++k) {
      std::uint64_t bits = 0;
      for (int b = 0; b < 8; ++b) bits = (bits << 8) | static_cast<unsigned char>(two_rows[k * 8 + b]);
      std::memcpy(&values[k], &bits, 8);
    }
    std::ostringstream sum;
    sum << std::hex << latflow::io::nersc_checksum(values);
    header.replace(header.find("4D_SU3_GAUGE_3x3"), 16, "4D_SU3_GAUGE");
    const auto c = header.find("CHECKSUM = ") + 11;
    header.replace(c, header.find('\n', c) - c, sum.str());
  }
  write_bytes(dir.file("b.nersc"), header + two_rows);
  const auto w = latflow::io::read_gauge_file(dir.file("b.nersc"));
  double worst = 0;
  for (std::size_t k = 0; k < u.links.size(); ++k) worst = std::max(worst, std::abs(w.links[k] - u.links[k]));
  CHECK(worst < 1e-14);

  // Corruption: one line naming the file and what is wrong.
  auto expect_io_error = [&](const std::string& content, const std::string& needle) {
    write_bytes(dir.file("bad.nersc"), content);
    try {
      latflow::io::read_gauge_file(dir.file("bad.nersc"));
      FAIL("no error for " << needle);
    } catch (const latflow::IoError& e) {
      const std::string what = e.what();
      CAPTURE(what, needle);
      CHECK(what.find("bad.nersc") != std::string::npos);
      CHECK(what.find(needle) != std::string::npos);
      CHECK(what.find('\n') == std::string::npos);
    }
  };
  std::string flipped = bytes;
  flipped[data + 100] = static_cast<char>(flipped[data + 100] ^ 0x10);
  expect_io_error(flipped, "checksum mismatch");
  expect_io_error(bytes.substr(0, bytes.size() - 8), "truncated");
  std::string plaq = bytes;
  const auto p = plaq.find("PLAQUETTE = ") + 12;
  plaq.replace(p, 3, plaq.substr(p, 1) == "-" ? "0.5" : "0.9");
  expect_io_error(plaq, "header PLAQUETTE");
  std::string type = bytes;
  type.replace(type.find("4D_SU3_GAUGE_3x3"), 16, "4D_SU2_GAUGE_3x3");
  expect_io_error(type, "DATATYPE");
  expect_io_error("hello", "neither a NERSC file");
}
