// SPDX-License-Identifier: MIT
// MPI collectives used by the sampler, run by ctest under mpiexec with 2 ranks (and also with 1).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "latflow/core/seed.hpp"
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

int main(int argc, char** argv) {
  mpi::Context ctx(&argc, &argv);
  // Failures on any rank fail the run: each rank's exit status is its own failure count.
  return Catch::Session().run(argc, argv);
}
