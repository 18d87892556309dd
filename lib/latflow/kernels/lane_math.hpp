// SPDX-License-Identifier: MIT
// Lane maths of the torch-free kernels (internal to lib/latflow/kernels): the activations and their derivatives,
// exp of float lanes, and the elementwise passes of the affine coupling (lane_math.cpp), each compiled per
// instruction set (simd.hpp) and run for the one the caller's policy names.
#pragma once
#include <cmath>
#include <cstdint>

#include "latflow/kernels/periodic_conv.hpp"
#include "latflow/kernels/simd.hpp"

namespace latflow::pconv {

constexpr double kLeakySlope = 0.01;  // LibTorch's default negative slope, as in ConvNetImpl's torch path

template <class T>
__attribute__((always_inline)) inline T activation(T v, Act act) {
  switch (act) {
    case Act::leaky_relu: return v > 0 ? v : static_cast<T>(kLeakySlope) * v;
    case Act::tanh: return std::tanh(v);
    case Act::silu: return v / (1 + std::exp(-v));
  }
  return v;
}

template <class T>
__attribute__((always_inline)) inline T derivative(T pre, Act act) {
  switch (act) {
    case Act::leaky_relu: return pre > 0 ? T(1) : static_cast<T>(kLeakySlope);
    case Act::tanh: {
      const T th = std::tanh(pre);
      return 1 - th * th;
    }
    case Act::silu: {
      const T sg = 1 / (1 + std::exp(-pre));
      return sg * (1 + pre * (1 - sg));
    }
  }
  return T(1);
}

// exp of float lanes, relative error within a few 1e-7 for x in [-87, 88] (x is clamped there, so the result is
// a finite normal number): x = n ln2 + r with |r| <= ln2 / 2, exp(r) by its Taylor polynomial of degree 7 (remainder
// below 6e-9), 2^n put into the exponent bits.
template <int W>
__attribute__((always_inline)) inline vec_t<float, W> exp_lanes(vec_t<float, W> x) {
  using F = vec_t<float, W>;
  using I = vec_t<std::int32_t, W>;
  x = x < -87.0f ? F{} - 87.0f : x;
  x = x > 88.0f ? F{} + 88.0f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const F n = (x * 1.44269504088896341f + magic) - magic;
  const F r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;  // ln 2 in two parts
  F p = F{} + 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const I bits = (__builtin_convertvector(n, I) + 127) << 23;
  F scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// s = tanh(a) = 1 - 2 / (1 + exp(2a)) (finite for every a) and e = exp(s), or exp(-s) for inverse, for n values;
// float lanes by exp_lanes (every value, also the last partial block, so a value does not depend on its position).
template <class T>
void tanh_and_exp(const T* a, std::int64_t n, bool inverse, T* s, T* e, Isa isa);
// out = exp(x) for n floats by exp_lanes (its accuracy is tested over the whole clamped range).
void exp_floats(const float* x, std::int64_t n, float* out, Isa isa);
// sum = (a + b) / 2, diff = (a - b) / 2 elementwise.
template <class T>
void half_sum_difference(const T* a, const T* b, std::int64_t n, T* sum, T* diff, Isa isa);
// out[r] = ((a[r] + b[r]) / 2, (a[r] - b[r]) / 2) for rows of C values, C a multiple of 8: [rows, 2C].
template <class T>
void half_sum_difference_pairs(const T* a, const T* b, std::int64_t rows, int C, T* out, Isa isa);
// The backward of half_sum_difference followed by the activations that made a and b: from the gradients gs, gd of
// sum and diff, ga = (gs + gd) / 2 act'(pre_a) and gb = (gs - gd) / 2 act'(pre_b); no activation when act is null.
template <class T>
void half_sum_difference_backward(const T* gs, const T* gd, std::int64_t n, const Act* act, const T* pre_a,
                                  const T* pre_b, T* ga, T* gb, Isa isa);

}  // namespace latflow::pconv
