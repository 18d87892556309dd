// SPDX-License-Identifier: MIT
// The derivation is in sun_exact.hpp.
#include "latflow/theories/sun_exact.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <string>

#include "latflow/core/error.hpp"

namespace latflow {
namespace {

constexpr double kNegligible = 1e-15;  // |c_r / c_0| below this is rounding of the determinant sum: set to 0

void check(int n, double beta) {
  if (n < 2 || n > 6) throw ConfigError("SU(N) exact results: N must be in 2..6, got " + std::to_string(n));
  if (!(beta >= 0) || beta > 200) throw ConfigError("SU(N) exact results: beta must be in [0, 200]");
}

// Determinant of a small dense matrix (row-major, size m x m) by Gaussian elimination with partial pivoting.
double det(std::vector<double> a, int m) {
  double d = 1;
  for (int c = 0; c < m; ++c) {
    int p = c;
    for (int r = c + 1; r < m; ++r)
      if (std::abs(a[r * m + c]) > std::abs(a[p * m + c])) p = r;
    if (a[p * m + c] == 0) return 0;
    if (p != c) {
      for (int k = 0; k < m; ++k) std::swap(a[p * m + k], a[c * m + k]);
      d = -d;
    }
    d *= a[c * m + c];
    for (int r = c + 1; r < m; ++r) {
      const double f = a[r * m + c] / a[c * m + c];
      for (int k = c; k < m; ++k) a[r * m + k] -= f * a[c * m + k];
    }
  }
  return d;
}

// d_r c_r = sum_n det[I_{lambda_i - i + j + n}(x)], x = beta / N. Bessel values I_k(x) for |k| <= K are cached.
class BesselTable {
 public:
  BesselTable(double x, int K) : K_(K), v_(static_cast<std::size_t>(K) + 1) {
    for (int k = 0; k <= K; ++k) v_[static_cast<std::size_t>(k)] = std::cyl_bessel_i(static_cast<double>(k), x);
  }
  double operator()(int k) const {
    k = std::abs(k);
    return k > K_ ? 0.0 : v_[static_cast<std::size_t>(k)];
  }
  int reach() const { return K_; }

 private:
  int K_;
  std::vector<double> v_;
};

double coefficient_times_dim(int N, const std::vector<int>& lam, const BesselTable& I) {
  // Terms vanish once every index exceeds the table's reach (I_k negligible there); n runs over that window.
  const int K = I.reach();
  double s = 0;
  std::vector<double> m(static_cast<std::size_t>(N * N));
  for (int n = -K - lam[0] - N; n <= K + N; ++n) {
    for (int i = 0; i < N; ++i)
      for (int j = 0; j < N; ++j)
        m[static_cast<std::size_t>(i * N + j)] = I(lam[static_cast<std::size_t>(i)] - i + j + n);
    s += det(m, N);
  }
  return s;
}

int dimension(int N, const std::vector<int>& lam) {
  double d = 1;
  for (int i = 0; i < N; ++i)
    for (int j = i + 1; j < N; ++j)
      d *= static_cast<double>(lam[static_cast<std::size_t>(i)] - lam[static_cast<std::size_t>(j)] + j - i) / (j - i);
  return static_cast<int>(std::lround(d));
}

// The representations with lambda_1 <= M, their dimensions and rho_r = c_r / c_0, and c_0.
struct Reps {
  int N;
  std::vector<std::vector<int>> lam;
  std::vector<double> dim, rho;
  std::map<std::vector<int>, std::size_t> index;
  double c0 = 1;

  Reps(int n, double beta) : N(n) {
    const double x = beta / n;
    const BesselTable I(x, static_cast<int>(40 + 4 * x));
    c0 = coefficient_times_dim(N, std::vector<int>(static_cast<std::size_t>(N), 0), I);
    // Cut: the smallest M >= 4 at which the symmetric representation (M, 0, ...) is negligible. Larger N enumerate
    // M^{N-1}/(N-1)! diagrams; the cap keeps that below ~10^5.
    const int cap = N == 2 ? 400 : N == 3 ? 120 : N == 4 ? 50 : 24;
    int M = 4;
    for (; M < cap; ++M) {
      std::vector<int> sym(static_cast<std::size_t>(N), 0);
      sym[0] = M;
      if (std::abs(coefficient_times_dim(N, sym, I) / dimension(N, sym) / c0) < kNegligible) break;
    }
    std::vector<int> cur(static_cast<std::size_t>(N), 0);
    enumerate(cur, 0, M, I);
    // |c_r| <= c_0 exactly; the alternating determinant sums lose that (and everything) to cancellation for
    // large N and beta (e.g. N = 6, beta = 60): refuse rather than return garbage.
    for (double r : rho)
      if (!std::isfinite(r) || std::abs(r) > 1 + 1e-9 || !std::isfinite(c0) || c0 <= 0)
        throw ConfigError("SU(N) exact results: the character expansion loses precision at N = " + std::to_string(N) +
                          ", beta = " + std::to_string(beta));
  }

  void enumerate(std::vector<int>& cur, int row, int bound, const BesselTable& I) {
    if (row == N - 1) {
      const int d = dimension(N, cur);
      double r = coefficient_times_dim(N, cur, I) / d / c0;
      if (std::abs(r) < kNegligible) r = 0;
      index[cur] = lam.size();
      lam.push_back(cur);
      dim.push_back(d);
      rho.push_back(r);
      return;
    }
    for (int v = 0; v <= bound; ++v) {
      cur[static_cast<std::size_t>(row)] = v;
      enumerate(cur, row + 1, v, I);
    }
    cur[static_cast<std::size_t>(row)] = 0;
  }

  // The representations r' in fundamental (x) r (one box added to a row, keeping a diagram; a full first column
  // removed), restricted to the table.
  std::vector<std::size_t> fuse_fundamental(std::size_t r) const {
    std::vector<std::size_t> out;
    const auto& l = lam[r];
    for (int i = 0; i < N; ++i) {
      if (i > 0 && l[static_cast<std::size_t>(i)] + 1 > l[static_cast<std::size_t>(i - 1)]) continue;
      auto s = l;
      s[static_cast<std::size_t>(i)] += 1;
      if (s[static_cast<std::size_t>(N - 1)] > 0)
        for (auto& v : s) v -= 1;
      if (auto it = index.find(s); it != index.end()) out.push_back(it->second);
    }
    return out;
  }
};

double power(double v, std::int64_t k) { return k == 0 ? 1.0 : std::pow(v, static_cast<double>(k)); }

double z_ratio(const Reps& R, std::int64_t V) {  // Z / c_0^V
  double z = 0;
  for (double r : R.rho) z += power(r, V);
  return z;
}

// sum_{r, r'} N_{f r}^{r'} weight(r, r') rho_r^{V-A} rho_{r'}^A / (Z / c_0^V)
template <class Weight>
double glued(const Reps& R, std::int64_t V, std::int64_t A, Weight weight) {
  if (A < 0 || A > V) throw ConfigError("SU(N) exact results: a loop area must be in 0..V");
  double s = 0;
  for (std::size_t r = 0; r < R.lam.size(); ++r) {
    const double outside = power(R.rho[r], V - A);
    if (outside == 0) continue;
    for (auto rp : R.fuse_fundamental(r)) s += weight(r, rp) * outside * power(R.rho[rp], A);
  }
  return s / z_ratio(R, V);
}

}  // namespace

double sun_character_coefficient_times_dim(int n, const std::vector<int>& lambda, double beta) {
  check(n, beta);
  if (static_cast<int>(lambda.size()) != n) throw ConfigError("SU(N) exact results: a diagram needs N rows");
  const double x = beta / n;
  return coefficient_times_dim(n, lambda, BesselTable(x, static_cast<int>(40 + 4 * x + lambda[0])));
}

int sun_dimension(int n, const std::vector<int>& lambda) { return dimension(n, lambda); }

double sun_wilson_loop(int n, std::int64_t V, double beta, std::int64_t A) {
  check(n, beta);
  const Reps R(n, beta);
  return glued(R, V, A, [&](std::size_t r, std::size_t rp) { return R.dim[rp] / R.dim[r]; }) / n;
}

double sun_plaquette(int n, std::int64_t V, double beta) { return sun_wilson_loop(n, V, beta, 1); }

double sun_wilson_loop_infinite(int n, double beta, std::int64_t A) {
  check(n, beta);
  std::vector<int> f(static_cast<std::size_t>(n), 0);
  f[0] = 1;
  const double ratio = sun_character_coefficient_times_dim(n, f, beta) / n /
                       sun_character_coefficient_times_dim(n, std::vector<int>(static_cast<std::size_t>(n), 0), beta);
  return power(ratio, A);
}

double sun_polyakov_correlator(int n, std::int64_t V, double beta, std::int64_t A) {
  check(n, beta);
  const Reps R(n, beta);
  return glued(R, V, A, [](std::size_t, std::size_t) { return 1.0; });
}

double sun_free_energy(int n, std::int64_t V, double beta) {
  check(n, beta);
  if (V < 1) throw ConfigError("SU(N) exact results: volume must be >= 1");
  const Reps R(n, beta);
  return -(static_cast<double>(V) * std::log(R.c0) + std::log(z_ratio(R, V)));
}

}  // namespace latflow
