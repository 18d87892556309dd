// SPDX-License-Identifier: MIT
// MPI collectives used by the sampler, run by ctest under mpiexec with 2 ranks (and also with 1).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <unistd.h>
#include <filesystem>

#include "latflow/core/seed.hpp"
#include "latflow/io/h5.hpp"
#include "latflow/parallel/mpi.hpp"

using namespace latflow;

TEST_CASE("gather concatenates every rank's data in rank order on the root", "[mpi]") {
  const int r = mpi::rank(), R = mpi::size();
  // Rank r contributes r + 1 values (ragged on purpose): r*100, r*100 + 1, ...
  std::vector<double> mine;
  for (int i = 0; i <= r; ++i) mine.push_back(r * 100.0 + i);
  auto all = mpi::gather(mine);
  if (r == 0) {
    std::vector<double> expect;
    for (int q = 0; q < R; ++q)
      for (int i = 0; i <= q; ++i) expect.push_back(q * 100.0 + i);
    CHECK(all == expect);
  } else {
    CHECK(all.empty());
  }
}

TEST_CASE("allreduce and broadcast agree on every rank", "[mpi]") {
  const int r = mpi::rank(), R = mpi::size();
  std::vector<double> v{1.0, static_cast<double>(r)};
  mpi::allreduce_sum(v.data(), 2);
  CHECK(v[0] == R);
  CHECK(v[1] == R * (R - 1) / 2.0);
  std::vector<std::uint8_t> bytes{static_cast<std::uint8_t>(r == 0 ? 7 : 0)};
  mpi::broadcast(bytes.data(), 1);
  CHECK(bytes[0] == 7);
}

TEST_CASE("derived random streams do not depend on the rank", "[mpi]") {
  // Every rank computes the stream seed of block 5; the root's value must equal everyone's.
  double s = static_cast<double>(derive_seed(1234, "propose", 5) >> 11);
  double root = s;
  mpi::broadcast(&root, 1);
  CHECK(root == s);
  CHECK(derive_seed(1234, "propose", 5) != derive_seed(1234, "propose", 6));
  CHECK(derive_seed(1234, "propose", 5) != derive_seed(1234, "accept", 5));
  CHECK(derive_seed(1234, "propose", 5) != derive_seed(1235, "propose", 5));
}

TEST_CASE("max, equality and int64 broadcast across ranks", "[mpi]") {
  const int r = mpi::rank(), R = mpi::size();
  double m[2] = {static_cast<double>(r), -static_cast<double>(r)};
  mpi::allreduce_max(m, 2);
  CHECK(m[0] == R - 1);
  CHECK(m[1] == 0);
  CHECK(mpi::all_equal(42));
  CHECK(mpi::all_equal(static_cast<std::uint64_t>(r)) == (R == 1));
  std::int64_t v[2] = {r == 0 ? 1234567890123LL : 0, r == 0 ? -5 : 0};
  mpi::broadcast(v, 2);
  CHECK(v[0] == 1234567890123LL);
  CHECK(v[1] == -5);
}

TEST_CASE("collective parallel-HDF5 writes: each rank writes its own rows and columns of one file", "[mpi]") {
  const int r = mpi::rank(), R = mpi::size();
  std::int64_t id = ::getpid();
  mpi::broadcast(&id, 1);
  const std::string path =
      (std::filesystem::temp_directory_path() / ("latflow_test_mpi_" + std::to_string(id) + ".h5")).string();
  if (r == 0) {
    auto f = io::File::create(path, true);
    f.create_extendible("/rows", io::DType::F64, {2}, 4, 0);
    f.create_extendible("/cols", io::DType::I64, {static_cast<std::uint64_t>(R)}, 4, 0);
  }
  mpi::barrier();
  {
    auto f = io::File::open_parallel(path);
    // Two rounds, as the sampler commits: rank q writes rows q and R + q of round k (two separate ranges), and
    // column q of rows 0..2 of /cols; rank 0 writes nothing to /rows in round 1 (an empty selection).
    for (int k = 0; k < 2; ++k) {
      f.resize("/rows", static_cast<std::uint64_t>(4 * R * (k + 1)));
      std::vector<io::RowRange> mine;
      std::vector<double> data;
      if (!(k == 1 && r == 0)) {
        for (std::uint64_t row :
             {static_cast<std::uint64_t>(4 * R * k + r), static_cast<std::uint64_t>(4 * R * k + R + r)}) {
          mine.push_back({row, 1});
          data.insert(data.end(), {row + 0.5, -(row + 0.5)});
        }
      }
      f.write_rows("/rows", mine, io::DType::F64, data.data());
      f.flush();
      f.write_attr("/", "committed", static_cast<std::int64_t>(k + 1));
      f.flush();
    }
    f.resize("/cols", 3);
    const std::vector<std::int64_t> col{100 + r, 200 + r, 300 + r};
    f.write_rows("/cols", {{0, 3}}, io::DType::I64, col.data(), {static_cast<std::uint64_t>(r), 1});
  }
  mpi::barrier();
  if (r == 0) {
    auto f = io::File::open_read(path);
    CHECK(f.read_attr_int("/", "committed") == 2);
    const auto rows = f.read_f64("/rows");
    REQUIRE(rows.size() == static_cast<std::size_t>(8 * R * 2));
    for (int k = 0; k < 2; ++k)
      for (int q = 0; q < R; ++q)
        for (int row : {4 * R * k + q, 4 * R * k + R + q}) {
          if (k == 1 && q == 0) continue;  // never written (its content is undefined: no fill value is written)
          CHECK(rows[2 * row] == row + 0.5);
          CHECK(rows[2 * row + 1] == -(row + 0.5));
        }
    const auto cols = f.read_i64("/cols");
    for (int i = 0; i < 3; ++i)
      for (int q = 0; q < R; ++q) CHECK(cols[i * R + q] == 100 * (i + 1) + q);
    std::filesystem::remove(path);
  }
}

int main(int argc, char** argv) {
  mpi::Context ctx(&argc, &argv);
  // Failures on any rank fail the run: each rank's exit status is its own failure count.
  return Catch::Session().run(argc, argv);
}
