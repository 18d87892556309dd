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

// Double lanes, for the gauge kernels' float64 maths (each within a few ulp of libm; tests/test_kernels.cpp).
// Coefficients are Taylor's (1 / k!, 1 / (2k + 1)); constants split so that the reductions are exact.
namespace lanes_detail {
template <int W>
using D = vec_t<double, W>;
template <int W>
using I = vec_t<std::int64_t, W>;
// ln 2 = ln2_hi + ln2_lo, ln2_hi of 39 bits (n ln2_hi is exact for |n| < 2^14).
constexpr double ln2_hi = 0x1.62e42fefa4p-1;
constexpr double ln2_lo = static_cast<double>(0.693147180559945309417232121458176568L - ln2_hi);
constexpr double kRound = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds a |value| < 2^51 to an integer
// The integer n (|n| < 2^51) held by a double n = round(..) as int64 lanes: the low bits of n + kRound.
template <int W>
__attribute__((always_inline)) inline I<W> to_int(D<W> n) {
  return reinterpret_cast<I<W>>(n + kRound) - reinterpret_cast<I<W>>(D<W>{} + kRound);
}
// c[k] = 1 / k! for k <= N (each by one more division: relative error below N ulp, in terms far below 1).
template <int N>
struct Taylor {
  double c[N + 1]{};
  constexpr Taylor() {
    c[0] = 1;
    for (int k = 1; k <= N; ++k) c[k] = c[k - 1] / k;
  }
};
// 2^k for integer lanes -1022 <= k <= 1023.
template <int W>
__attribute__((always_inline)) inline D<W> pow2(I<W> k) {
  return reinterpret_cast<D<W>>((k + 1023) << 52);
}
}  // namespace lanes_detail

// exp of double lanes, within 2 ulp: x = n ln 2 + r, |r| <= ln 2 / 2 (n ln 2 subtracted in two parts, the first
// of 39 bits, so exact), exp(r) by its Taylor polynomial of degree 13 (remainder below 5e-18), 2^n applied in two
// factors so that results from the largest double down through the subnormals come out right; x > 710 gives inf,
// x < -746 gives 0, NaN stays NaN.
template <int W>
__attribute__((always_inline)) inline vec_t<double, W> exp_lanes_d(vec_t<double, W> x) {
  using namespace lanes_detail;
  x = x < -746.0 ? D<W>{} - 746.0 : x;
  x = x > 710.0 ? D<W>{} + 710.0 : x;
  const D<W> n = (x * 1.4426950408889634074 + kRound) - kRound;
  const D<W> r = (x - n * ln2_hi) - n * ln2_lo;
  constexpr Taylor<13> t;
  D<W> p = D<W>{} + t.c[13];
  for (int k = 12; k >= 0; --k) p = p * r + t.c[k];
  const I<W> ni = to_int<W>(n), n1 = ni >> 1;
  return p * pow2<W>(n1) * pow2<W>(ni - n1);
}

// log of double lanes, within 2 ulp: x = 2^e m with m in [sqrt(1/2), sqrt 2), log m = 2 atanh(s) for
// s = (m - 1) / (m + 1), |s| <= 0.1716, by its series to s^23 (remainder below 1e-19); subnormals scaled first;
// log 0 = -inf, log of a negative number or NaN = NaN, log inf = inf.
template <int W>
__attribute__((always_inline)) inline vec_t<double, W> log_lanes_d(vec_t<double, W> x) {
  using namespace lanes_detail;
  const auto sub = x < 0x1p-1022;
  const D<W> xs = sub ? x * 0x1p54 : x;
  const I<W> bits = reinterpret_cast<I<W>>(xs);
  I<W> e = ((bits >> 52) & 0x7ff) - 1023 + (sub & -54);
  D<W> m = reinterpret_cast<D<W>>((bits & ((std::int64_t{1} << 52) - 1)) | (std::int64_t{1023} << 52));
  const auto big = m > 1.4142135623730950488;
  m = big ? m * 0.5 : m;
  e -= big;  // (a true comparison is -1)
  const D<W> s = (m - 1) / (m + 1), z = s * s;
  D<W> p = D<W>{} + 1.0 / 23;
  for (int k = 10; k >= 0; --k) p = p * z + 1.0 / (2 * k + 1);
  const D<W> ed = __builtin_convertvector(e, D<W>);
  D<W> out = ed * ln2_hi + (ed * ln2_lo + 2 * s * p);
  const D<W> inf = D<W>{} + __builtin_inf(), nan = D<W>{} + __builtin_nan("");
  out = x == 0 ? -inf : out;
  out = x == inf ? inf : out;
  return x < 0 || x != x ? nan : out;
}

// log(1 + u) of double lanes for u >= 0 (what softplus needs): log w for w = 1 + u, corrected by the rounding of w
// ((w - 1) - u) / w; u where w rounds to 1.
template <int W>
__attribute__((always_inline)) inline vec_t<double, W> log1p_lanes_d(vec_t<double, W> u) {
  const vec_t<double, W> w = 1 + u;
  return w == 1 ? u : log_lanes_d<W>(w) - ((w - 1) - u) / w;
}

// sin and cos of double lanes with |x| <= 1600 (else libm per lane, also for inf and NaN), within 2 ulp where the
// result is not near a zero: x = k pi / 2 + r, |r| <= pi / 4 (k pi / 2 subtracted in two parts, the first of 31
// bits, so exact), sin r and cos r by their Taylor series to r^17 and r^18 (remainders below 1e-17), then the
// quadrant of k.
template <int W>
__attribute__((always_inline)) inline void sincos_lanes_d(vec_t<double, W> x, vec_t<double, W>& sn,
                                                          vec_t<double, W>& cs) {
  using namespace lanes_detail;
  bool plain = true;
  for (int j = 0; j < W; ++j) plain = plain && std::abs(x[j]) <= 1600;
  if (!plain) {
    for (int j = 0; j < W; ++j) {
      sn[j] = std::sin(x[j]);
      cs[j] = std::cos(x[j]);
    }
    return;
  }
  constexpr double pio2_hi = 0x1.921fb544p0;
  constexpr double pio2_lo = static_cast<double>(1.57079632679489661923132169163975144209858L - pio2_hi);
  constexpr Taylor<18> t;
  const D<W> k = (x * 0.63661977236758134308 + kRound) - kRound;
  const D<W> r = (x - k * pio2_hi) - k * pio2_lo, z = r * r;
  // sin r = r sum_j (-1)^j z^j / (2j + 1)!, cos r = sum_j (-1)^j z^j / (2j)!, by Horner.
  D<W> ps = D<W>{} + t.c[17], pc = D<W>{} - t.c[18];
  for (int j = 7; j >= 0; --j) ps = ps * z + (j % 2 ? -t.c[2 * j + 1] : t.c[2 * j + 1]);
  for (int j = 8; j >= 0; --j) pc = pc * z + (j % 2 ? -t.c[2 * j] : t.c[2 * j]);
  ps *= r;
  // The quadrant q = k mod 4: (sin, cos) x = (s, c), (c, -s), (-s, -c), (-c, s).
  const I<W> q = to_int<W>(k) & 3;
  const auto odd = (q & 1) != 0;
  const D<W> a = odd ? pc : ps, b = odd ? ps : pc;
  sn = (q & 2) != 0 ? -a : a;
  cs = ((q + 1) & 2) != 0 ? -b : b;
}

// out = exp, log, log1p (for x >= 0) of n doubles by the lanes above (tests); sincos_doubles: sn = sin, cs = cos.
void exp_doubles(const double* x, std::int64_t n, double* out, Isa isa);
void log_doubles(const double* x, std::int64_t n, double* out, Isa isa);
void log1p_doubles(const double* x, std::int64_t n, double* out, Isa isa);
void sincos_doubles(const double* x, std::int64_t n, double* sn, double* cs, Isa isa);

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
