// SPDX-License-Identifier: MIT
// MPI behind a narrow interface (mpi.h stays in mpi.cpp). latflow parallelises over proposals, chains and
// training batches, never over the lattice; the work split never changes the numbers (see core/seed.hpp).
#pragma once
#include <cstdint>
#include <vector>

namespace latflow::mpi {

// RAII: MPI_Init_thread in the constructor (a singleton run without mpirun is a 1-rank world), MPI_Finalize in
// the destructor. Only main() makes one.
class Context {
 public:
  Context(int* argc, char*** argv);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
};

int rank();
int size();
bool initialized();
[[noreturn]] void abort(int code);  // MPI_Abort if MPI runs, std::exit otherwise

void barrier();
// A barrier that sleeps instead of spinning (Open MPI's MPI_Barrier busy-polls a core): ranks that wait for the
// root's long serial work must not take the cores it runs on.
void idle_barrier();
void allreduce_sum(double* data, std::int64_t n);
void allreduce_max(double* data, std::int64_t n);
void allreduce_sum(float* data, std::int64_t n);
// True on every rank when every rank passed the same value (e.g. a hash of the model weights).
bool all_equal(std::uint64_t value);
void broadcast(double* data, std::int64_t n, int root = 0);
void broadcast(std::uint8_t* data, std::int64_t n, int root = 0);
void broadcast(std::int64_t* data, std::int64_t n, int root = 0);
// Root receives the concatenation of every rank's `local` in rank order; other ranks get an empty vector.
std::vector<double> gather(const std::vector<double>& local, int root = 0);
std::vector<float> gather(const std::vector<float>& local, int root = 0);

}  // namespace latflow::mpi
