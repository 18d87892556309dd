// SPDX-License-Identifier: MIT
#include "latflow/theories/u1_exact.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "latflow/core/error.hpp"

namespace latflow {
namespace {

constexpr double kTiny = -69.0;  // ln(1e-30): terms below this relative to the largest are dropped
constexpr int kMaxN = 2000;

double log_bessel_i(int n, double beta) {
  if (beta == 0) return n == 0 ? 0.0 : -std::numeric_limits<double>::infinity();
  return std::log(std::cyl_bessel_i(static_cast<double>(std::abs(n)), beta));
}

void check(std::int64_t volume, double beta) {
  if (volume < 1) throw ConfigError("U(1) exact results: volume must be >= 1");
  if (!(beta >= 0) || beta > 500) throw ConfigError("U(1) exact results: beta must be in [0, 500]");
}

// log sum_{n in Z} exp(term(n)) for a term that decays in |n|: sums n = 0, +-1, +-2, ... until both tails are
// below kTiny relative to the running maximum.
double log_sum_over_n(const std::function<double(int)>& term) {
  std::vector<double> t{term(0)};
  double mx = t[0];
  for (int n = 1; n <= kMaxN; ++n) {
    const double a = term(n), b = term(-n);
    t.push_back(a);
    t.push_back(b);
    mx = std::max({mx, a, b});
    if (n > 3 && a - mx < kTiny && b - mx < kTiny) break;
  }
  double s = 0;
  for (double v : t) s += std::exp(v - mx);
  return mx + std::log(s);
}

double log_z(std::int64_t V, double beta) {
  return log_sum_over_n([&](int n) { return static_cast<double>(V) * log_bessel_i(n, beta); });
}

}  // namespace

double u1_wilson_loop(std::int64_t V, double beta, std::int64_t A) {
  check(V, beta);
  if (A < 0 || A > V) throw ConfigError("U(1) exact results: a loop area must be in 0..V");
  if (beta == 0) return A == 0 ? 1.0 : (A == V ? 1.0 : 0.0);
  const double a = static_cast<double>(A), rest = static_cast<double>(V - A);
  const double lw = log_sum_over_n([&](int n) {
    const double in = V == A ? 0.0 : rest * log_bessel_i(n, beta);
    return in + (A == 0 ? 0.0 : a * log_bessel_i(n + 1, beta));
  });
  return std::exp(lw - log_z(V, beta));
}

double u1_plaquette(std::int64_t V, double beta) { return u1_wilson_loop(V, beta, 1); }

double u1_free_energy(std::int64_t V, double beta) {
  check(V, beta);
  return -log_z(V, beta) - 2.0 * static_cast<double>(V) * std::log(2 * M_PI);
}

// Q = (1/2 pi) sum_P p_P with p_P = arg(e^{i theta_P}) in (-pi, pi]. With the constraint sum_P theta_P = 0 mod 2 pi
// written as (1/2 pi) sum_n e^{i n sum_P p_P}, the V plaquette integrals factorise:
//   <Q^2> = (1/4 pi^2) sum_n [V f_n^{V-1} g_n - V (V-1) f_n^{V-2} h_n^2] / sum_n f_n^V,
// f_n = int e^{beta cos p} cos(n p) dp = 2 pi I_n(beta), g_n = int p^2 cos(n p) e^{beta cos p} dp,
// h_n = int p sin(n p) e^{beta cos p} dp over (-pi, pi] (docs/physics.md "U(1) gauge theory"). g_n and h_n come from
// composite Simpson quadrature of the even integrands on [0, pi] with the factor e^{-beta} taken out (ratios to f_n
// only).
double u1_topological_susceptibility_q2(std::int64_t V, double beta) {
  check(V, beta);
  const int M = 20000;  // Simpson intervals: relative error ~1e-13 for the dominant n
  const double h = M_PI / M;
  std::vector<double> p(M + 1), e(M + 1), wgt(M + 1);
  for (int i = 0; i <= M; ++i) {
    p[i] = i * h;
    e[i] = std::exp(beta * (std::cos(p[i]) - 1));
    wgt[i] = (i == 0 || i == M ? 1.0 : (i % 2 ? 4.0 : 2.0)) * h / 3;
  }
  const double Vd = static_cast<double>(V);
  const double log_f0 = log_bessel_i(0, beta);
  double num = 0, den = 0;
  for (int n = 0; n <= kMaxN; ++n) {
    // log(f_n / f_0) with f_n = 2 pi I_n, and g_n / f_n, h_n / f_n; f_n e^{-beta} = 2 pi I_n e^{-beta}.
    const double log_ratio = log_bessel_i(n, beta) - log_f0;
    const double weight = std::exp(Vd * log_ratio);
    if (weight == 0 || (n > 3 && Vd * log_ratio < kTiny)) break;  // I_n decreases in |n|
    double g = 0, hh = 0;
    for (int i = 0; i <= M; ++i) {
      g += wgt[i] * p[i] * p[i] * std::cos(n * p[i]) * e[i];
      hh += wgt[i] * p[i] * std::sin(n * p[i]) * e[i];
    }
    const double f_scaled = 2 * M_PI * std::exp(log_bessel_i(n, beta) - beta);
    const double gr = 2 * g / f_scaled, hr = 2 * hh / f_scaled;
    const double term = weight * (Vd * gr - Vd * (Vd - 1) * hr * hr);
    const int mult = n == 0 ? 1 : 2;  // n and -n contribute equally (g even, h odd in n -> h^2 even)
    num += mult * term;
    den += mult * weight;
  }
  return num / den / (4 * M_PI * M_PI);
}

}  // namespace latflow
