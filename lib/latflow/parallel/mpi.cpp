// SPDX-License-Identifier: MIT
#include "latflow/parallel/mpi.hpp"

#include <mpi.h>

#include <chrono>
#include <cstdlib>
#include <thread>

#include "latflow/core/error.hpp"
#include "latflow/core/log.hpp"

namespace latflow::mpi {
namespace {

bool running() {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return init && !fin;
}

template <class T>
std::vector<T> gather_impl(const std::vector<T>& local, int root, MPI_Datatype type) {
  if (!running() || size() == 1) return local;
  int n = static_cast<int>(local.size());
  std::vector<int> counts(size()), displs(size());
  MPI_Gather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, root, MPI_COMM_WORLD);
  std::vector<T> all;
  if (rank() == root) {
    int total = 0;
    for (int r = 0; r < size(); ++r) {
      displs[r] = total;
      total += counts[r];
    }
    all.resize(total);
  }
  MPI_Gatherv(local.data(), n, type, all.data(), counts.data(), displs.data(), type, root, MPI_COMM_WORLD);
  return all;
}

}  // namespace

Context::Context(int* argc, char*** argv) {
  int provided = 0;
  if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) throw Error("MPI_Init_thread failed");
  log::set_rank(rank());
}

Context::~Context() {
  if (running()) MPI_Finalize();
}

bool initialized() { return running(); }

int rank() {
  if (!running()) return 0;
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

int size() {
  if (!running()) return 1;
  int s = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

void abort(int code) {
  if (running() && size() > 1) MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

void barrier() {
  if (running()) MPI_Barrier(MPI_COMM_WORLD);
}

void idle_barrier() {
  if (!running() || size() == 1) return;
  MPI_Request req;
  MPI_Ibarrier(MPI_COMM_WORLD, &req);
  int done = 0;
  while (true) {
    MPI_Test(&req, &done, MPI_STATUS_IGNORE);
    if (done) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void allreduce_sum(double* data, std::int64_t n) {
  if (running() && size() > 1)
    MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
}

void allreduce_max(double* data, std::int64_t n) {
  if (running() && size() > 1)
    MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
}

void allreduce_sum(float* data, std::int64_t n) {
  if (running() && size() > 1)
    MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
}

bool all_equal(std::uint64_t value) {
  if (!running() || size() == 1) return true;
  std::uint64_t lo = value, hi = value;
  MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
  return lo == hi;
}

void broadcast(std::int64_t* data, std::int64_t n, int root) {
  if (running() && size() > 1) MPI_Bcast(data, static_cast<int>(n), MPI_INT64_T, root, MPI_COMM_WORLD);
}

void broadcast(double* data, std::int64_t n, int root) {
  if (running() && size() > 1) MPI_Bcast(data, static_cast<int>(n), MPI_DOUBLE, root, MPI_COMM_WORLD);
}

void broadcast(std::uint8_t* data, std::int64_t n, int root) {
  if (running() && size() > 1) MPI_Bcast(data, static_cast<int>(n), MPI_UINT8_T, root, MPI_COMM_WORLD);
}

std::vector<double> gather(const std::vector<double>& local, int root) { return gather_impl(local, root, MPI_DOUBLE); }
std::vector<float> gather(const std::vector<float>& local, int root) { return gather_impl(local, root, MPI_FLOAT); }

}  // namespace latflow::mpi
