// SPDX-License-Identifier: MIT
// SIMD plumbing of the torch-free kernels (internal to lib/latflow/kernels): vector-extension types, unaligned
// loads and stores, and the instruction-set dispatch.
//
// Dispatch: a kernel's body is an always-inline function; with_isa(isa, f) runs f (an always-inline lambda that
// calls the body) inside a function compiled for that instruction set, so the body is compiled once per
// instruction set and the policy picks one at run time (tests force each in turn). A lambda that cannot be
// inlined is a compile error rather than a silent baseline copy.
#pragma once
#include <cstdint>
#include <cstring>

#include "latflow/kernels/policy.hpp"

// The vector-extension helpers pass AVX-sized values between inlined functions; only the ABI of such calls across
// translation units would change with the target, and there are none.
#pragma GCC diagnostic ignored "-Wpsabi"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LATFLOW_X86_ISAS 1
#endif
// For the lambdas given to with_isa: [&]() LATFLOW_KERNEL { ... }.
#define LATFLOW_KERNEL __attribute__((always_inline))

namespace latflow::pconv {

#ifdef LATFLOW_X86_ISAS
template <class F>
__attribute__((target("arch=x86-64-v4"))) void run_x86_64_v4(const F& f) {
  f();
}
template <class F>
__attribute__((target("arch=x86-64-v3"))) void run_x86_64_v3(const F& f) {
  f();
}
#endif
template <class F>
void run_baseline(const F& f) {
  f();
}

template <class F>
void with_isa(Isa isa, const F& f) {
  switch (resolve(isa)) {
#ifdef LATFLOW_X86_ISAS
    case Isa::x86_64_v4: run_x86_64_v4(f); return;
    case Isa::x86_64_v3: run_x86_64_v3(f); return;
#endif
    default: run_baseline(f); return;
  }
}

// Channels are processed in blocks of W lanes held in one vector register: W = 8 (an AVX register of floats),
// or W = 4 when a conv has at most 4 output channels (the last layer of most nets), so that little work is done
// on padding lanes.
inline int lanes(int channels) { return channels <= 4 ? 4 : 8; }
inline std::int64_t round_up(std::int64_t c, int W) { return (c + W - 1) / W * W; }

// W lanes as one value (GCC/Clang vector extension): the compiler keeps it in a vector register, where a plain
// array of W accumulators was kept in W scalar registers. Loads and stores go through memcpy (unaligned).
template <class T, int W>
struct Block {
  typedef T type __attribute__((vector_size(sizeof(T) * W)));
};
template <class T, int W>
using vec_t = typename Block<T, W>::type;
template <int W, class T>
__attribute__((always_inline)) inline vec_t<T, W> load(const T* p) {
  vec_t<T, W> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <int W, class T>
__attribute__((always_inline)) inline void store(T* p, const vec_t<T, W>& v) {
  std::memcpy(p, &v, sizeof(v));
}

// Lane sums of 8 vectors of 8 lanes by a tree of shuffles and 7 vector additions: r[i] = ((a_i0 + a_i1) + (a_i2 +
// a_i3)) + ((a_i4 + a_i5) + (a_i6 + a_i7)), the order hsum8 sums one vector in (so that a row summed alone and a
// row summed with seven others give the same bits).
template <class T>
__attribute__((always_inline)) inline vec_t<T, 8> transpose_sums(const vec_t<T, 8> (&a)[8]) {
  vec_t<T, 8> b[4], c[2];
  for (int m = 0; m < 4; ++m)
    b[m] = __builtin_shufflevector(a[2 * m], a[2 * m + 1], 0, 8, 2, 10, 4, 12, 6, 14) +
           __builtin_shufflevector(a[2 * m], a[2 * m + 1], 1, 9, 3, 11, 5, 13, 7, 15);
  for (int m = 0; m < 2; ++m)
    c[m] = __builtin_shufflevector(b[2 * m], b[2 * m + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
           __builtin_shufflevector(b[2 * m], b[2 * m + 1], 2, 3, 10, 11, 6, 7, 14, 15);
  return __builtin_shufflevector(c[0], c[1], 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(c[0], c[1], 4, 5, 6, 7, 12, 13, 14, 15);
}
template <class T>
__attribute__((always_inline)) inline T hsum8(const vec_t<T, 8>& v) {
  return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

}  // namespace latflow::pconv
