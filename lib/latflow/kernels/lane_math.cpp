// SPDX-License-Identifier: MIT
#include "latflow/kernels/lane_math.hpp"

#include <algorithm>
#include <type_traits>

namespace latflow::pconv {

namespace {

template <class T>
__attribute__((always_inline)) inline void half_sum_difference_pairs_body(const T* a, const T* b, std::int64_t rows,
                                                                          int C, T* out) {
  for (std::int64_t r = 0; r < rows; ++r)
    for (int c = 0; c < C; c += 8) {
      const auto u = load<8>(a + r * C + c), w = load<8>(b + r * C + c);
      store<8>(out + r * 2 * C + c, T(0.5) * (u + w));
      store<8>(out + r * 2 * C + C + c, T(0.5) * (u - w));
    }
}

template <class T>
__attribute__((always_inline)) inline void tanh_and_exp_body(const T* a, std::int64_t n, bool inverse, T* s, T* e) {
  if constexpr (std::is_same_v<T, float>) {
    using F = vec_t<float, 8>;
    for (std::int64_t i = 0; i < n; i += 8) {
      const std::int64_t k = std::min<std::int64_t>(8, n - i);
      float in[8] = {}, th[8], ex[8];
      std::copy(a + i, a + i + k, in);
      const F t = 1.0f - 2.0f / (1.0f + exp_lanes<8>(2.0f * load<8>(in)));
      store<8>(th, t);
      store<8>(ex, exp_lanes<8>(inverse ? -t : t));
      std::copy(th, th + k, s + i);
      std::copy(ex, ex + k, e + i);
    }
  } else {
    for (std::int64_t i = 0; i < n; ++i) {
      s[i] = 1 - 2 / (1 + std::exp(2 * a[i]));
      e[i] = std::exp(inverse ? -s[i] : s[i]);
    }
  }
}

// sum = (a + b) / 2, diff = (a - b) / 2 elementwise.
template <class T>
__attribute__((always_inline)) inline void half_sum_difference_body(const T* a, const T* b, std::int64_t n, T* sum,
                                                                    T* diff) {
  for (std::int64_t i = 0; i < n; ++i) {
    const T u = a[i], w = b[i];
    sum[i] = T(0.5) * (u + w);
    diff[i] = T(0.5) * (u - w);
  }
}

// The backward of half_sum_difference followed by the activations that made a and b: from the gradients gs, gd of
// sum and diff, ga = (gs + gd) / 2 act'(pre_a) and gb = (gs - gd) / 2 act'(pre_b); no activation when act is null.
// Whole blocks of 8 in vector lanes for leaky_relu (the value's sign picks the slope, without a branch).
template <class T>
__attribute__((always_inline)) inline void half_sum_difference_backward_body(const T* gs, const T* gd, std::int64_t n,
                                                                             const Act* act, const T* pre_a,
                                                                             const T* pre_b, T* ga, T* gb) {
  std::int64_t k = 0;
  if (!act || *act == Act::leaky_relu) {
    using V_t = vec_t<T, 8>;
    const T slope = static_cast<T>(kLeakySlope);
    for (; k + 8 <= n; k += 8) {
      const V_t u = load<8>(gs + k), w = load<8>(gd + k);
      V_t a = T(0.5) * (u + w), b = T(0.5) * (u - w);
      if (act) {
        a = load<8>(pre_a + k) > 0 ? a : a * slope;
        b = load<8>(pre_b + k) > 0 ? b : b * slope;
      }
      store<8>(ga + k, a);
      store<8>(gb + k, b);
    }
  }
  for (; k < n; ++k) {
    T a = T(0.5) * (gs[k] + gd[k]), b = T(0.5) * (gs[k] - gd[k]);
    if (act) {
      a *= derivative(pre_a[k], *act);
      b *= derivative(pre_b[k], *act);
    }
    ga[k] = a;
    gb[k] = b;
  }
}

}  // namespace

template <class T>
void tanh_and_exp(const T* a, std::int64_t n, bool inverse, T* s, T* e, Isa isa) {
  with_isa(isa, [&]() LATFLOW_KERNEL { tanh_and_exp_body(a, n, inverse, s, e); });
}

void exp_floats(const float* x, std::int64_t n, float* out, Isa isa) {
  with_isa(isa, [&]() LATFLOW_KERNEL {
    for (std::int64_t i = 0; i < n; i += 8) {
      const std::int64_t k = std::min<std::int64_t>(8, n - i);
      float in[8] = {}, ex[8];
      std::copy(x + i, x + i + k, in);
      store<8>(ex, exp_lanes<8>(load<8>(in)));
      std::copy(ex, ex + k, out + i);
    }
  });
}

namespace {
// f over n doubles in blocks of 8 lanes (the last block padded with zeros). The lambdas given to these are
// always-inline too: a vector argument passed to a copy compiled for another instruction set would be garbage.
template <class F>
__attribute__((always_inline)) inline void over_double_lanes(const double* x, std::int64_t n, const F& f) {
  for (std::int64_t i = 0; i < n; i += 8) {
    const std::int64_t k = std::min<std::int64_t>(8, n - i);
    double in[8] = {};
    std::copy(x + i, x + i + k, in);
    f(load<8>(in), i, k);
  }
}
template <class F>
__attribute__((always_inline)) inline void map_doubles(const double* x, std::int64_t n, double* out, const F& f) {
  over_double_lanes(x, n, [&](vec_t<double, 8> v, std::int64_t i, std::int64_t k) LATFLOW_KERNEL {
    double res[8];
    store<8>(res, f(v));
    std::copy(res, res + k, out + i);
  });
}
}  // namespace

void exp_doubles(const double* x, std::int64_t n, double* out, Isa isa) {
  with_isa(isa,
           [&]() LATFLOW_KERNEL { map_doubles(x, n, out, [](auto v) LATFLOW_KERNEL { return exp_lanes_d<8>(v); }); });
}
void log_doubles(const double* x, std::int64_t n, double* out, Isa isa) {
  with_isa(isa,
           [&]() LATFLOW_KERNEL { map_doubles(x, n, out, [](auto v) LATFLOW_KERNEL { return log_lanes_d<8>(v); }); });
}
void log1p_doubles(const double* x, std::int64_t n, double* out, Isa isa) {
  with_isa(isa,
           [&]() LATFLOW_KERNEL { map_doubles(x, n, out, [](auto v) LATFLOW_KERNEL { return log1p_lanes_d<8>(v); }); });
}
void sincos_doubles(const double* x, std::int64_t n, double* sn, double* cs, Isa isa) {
  with_isa(isa, [&]() LATFLOW_KERNEL {
    over_double_lanes(x, n, [&](vec_t<double, 8> v, std::int64_t i, std::int64_t k) LATFLOW_KERNEL {
      vec_t<double, 8> s, c;
      sincos_lanes_d<8>(v, s, c);
      double rs[8], rc[8];
      store<8>(rs, s);
      store<8>(rc, c);
      std::copy(rs, rs + k, sn + i);
      std::copy(rc, rc + k, cs + i);
    });
  });
}

template <class T>
void half_sum_difference(const T* a, const T* b, std::int64_t n, T* sum, T* diff, Isa isa) {
  with_isa(isa, [&]() LATFLOW_KERNEL { half_sum_difference_body(a, b, n, sum, diff); });
}

template <class T>
void half_sum_difference_pairs(const T* a, const T* b, std::int64_t rows, int C, T* out, Isa isa) {
  with_isa(isa, [&]() LATFLOW_KERNEL { half_sum_difference_pairs_body(a, b, rows, C, out); });
}

template <class T>
void half_sum_difference_backward(const T* gs, const T* gd, std::int64_t n, const Act* act, const T* pre_a,
                                  const T* pre_b, T* ga, T* gb, Isa isa) {
  with_isa(isa, [&]() LATFLOW_KERNEL { half_sum_difference_backward_body(gs, gd, n, act, pre_a, pre_b, ga, gb); });
}

#define LATFLOW_INSTANTIATE(T)                                                                                        \
  template void tanh_and_exp<T>(const T*, std::int64_t, bool, T*, T*, Isa);                                           \
  template void half_sum_difference<T>(const T*, const T*, std::int64_t, T*, T*, Isa);                                \
  template void half_sum_difference_pairs<T>(const T*, const T*, std::int64_t, int, T*, Isa);                         \
  template void half_sum_difference_backward<T>(const T*, const T*, std::int64_t, const Act*, const T*, const T*, T*, \
                                                T*, Isa);
LATFLOW_INSTANTIATE(float)
LATFLOW_INSTANTIATE(double)
#undef LATFLOW_INSTANTIATE

}  // namespace latflow::pconv
