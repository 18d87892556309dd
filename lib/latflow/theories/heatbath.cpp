// SPDX-License-Identifier: MIT
#include "latflow/theories/heatbath.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <stdexcept>

namespace latflow::heatbath {
namespace {
using cd = std::complex<double>;
constexpr int kMaxN = 6;
using Mat = std::array<cd, kMaxN * kMaxN>;  // row-major n x n in the first n * n entries

// c = a b, c = a b^+, c = a^+ b for n x n row-major matrices.
void mul(int n, const cd* a, const cd* b, cd* c) {
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      cd s = 0;
      for (int k = 0; k < n; ++k) s += a[i * n + k] * b[k * n + j];
      c[i * n + j] = s;
    }
}
void mul_dag(int n, const cd* a, const cd* b, cd* c) {
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      cd s = 0;
      for (int k = 0; k < n; ++k) s += a[i * n + k] * std::conj(b[j * n + k]);
      c[i * n + j] = s;
    }
}
void dag_mul(int n, const cd* a, const cd* b, cd* c) {
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      cd s = 0;
      for (int k = 0; k < n; ++k) s += std::conj(a[k * n + i]) * b[k * n + j];
      c[i * n + j] = s;
    }
}

// An SU(2) matrix x0 + i (x1 s1 + x2 s2 + x3 s3) as 2 x 2 row-major entries.
std::array<cd, 4> su2(double x0, double x1, double x2, double x3) {
  return {cd(x0, x3), cd(x2, x1), cd(-x2, x1), cd(x0, -x3)};
}
std::array<cd, 4> mul2(const std::array<cd, 4>& a, const std::array<cd, 4>& b) {
  return {a[0] * b[0] + a[1] * b[2], a[0] * b[1] + a[1] * b[3], a[2] * b[0] + a[3] * b[2], a[2] * b[1] + a[3] * b[3]};
}
std::array<cd, 4> dag2(const std::array<cd, 4>& a) {
  return {std::conj(a[0]), std::conj(a[2]), std::conj(a[1]), std::conj(a[3])};
}

// A random SU(2) matrix with X_0 = x0 and (X_1, X_2, X_3) uniform on the sphere of radius sqrt(1 - x0^2).
std::array<cd, 4> su2_with_x0(double x0, SplitMix64& rng) {
  const double r = std::sqrt(std::max(0.0, 1.0 - x0 * x0));
  const double c = 2.0 * rng.uniform() - 1.0, phi = 2.0 * M_PI * rng.uniform();
  const double s = std::sqrt(std::max(0.0, 1.0 - c * c));
  return su2(x0, r * s * std::cos(phi), r * s * std::sin(phi), r * c);
}
}  // namespace

Lattice::Lattice(const std::vector<std::int64_t>& extents) : d(static_cast<int>(extents.size())), V(1) {
  for (auto l : extents) V *= l;
  up.resize(static_cast<std::size_t>(V * d));
  down.resize(static_cast<std::size_t>(V * d));
  std::vector<std::int64_t> stride(static_cast<std::size_t>(d), 1);
  for (int k = d - 2; k >= 0; --k) stride[k] = stride[k + 1] * extents[k + 1];
  for (std::int64_t x = 0; x < V; ++x)
    for (int mu = 0; mu < d; ++mu) {
      const std::int64_t c = (x / stride[mu]) % extents[mu];
      const std::int64_t base = x - c * stride[mu];
      up[x * d + mu] = base + ((c + 1) % extents[mu]) * stride[mu];
      down[x * d + mu] = base + ((c + extents[mu] - 1) % extents[mu]) * stride[mu];
    }
}

double von_mises(double kappa, SplitMix64& rng) {
  if (kappa < 1.0) {
    // Uniform proposals, acceptance >= exp(-2 kappa) > 0.13 (on average I_0(kappa) e^{-kappa} > 0.46).
    for (;;) {
      const double phi = M_PI * (2.0 * rng.uniform() - 1.0);
      if (rng.uniform() < std::exp(kappa * (std::cos(phi) - 1.0))) return phi;
    }
  }
  const double tau = 1.0 + std::sqrt(1.0 + 4.0 * kappa * kappa);
  const double rho = (tau - std::sqrt(2.0 * tau)) / (2.0 * kappa);
  const double s = (1.0 + rho * rho) / (2.0 * rho);
  double f;
  for (;;) {
    const double z = std::cos(M_PI * rng.uniform());
    f = (1.0 + s * z) / (s + z);
    const double c = kappa * (s - f);
    const double u = rng.uniform();
    if (c * (2.0 - c) - u > 0 || std::log(c / u) + 1.0 - c >= 0) break;
  }
  const double phi = std::acos(std::clamp(f, -1.0, 1.0));
  return rng.uniform() < 0.5 ? -phi : phi;
}

double su2_x0(double a, SplitMix64& rng) {
  if (a >= 2.0) {
    // Kennedy-Pendleton: lambda^2 from exp(-2 a lambda^2) lambda^2, accepted with probability sqrt(1 -
    // lambda^2).
    for (;;) {
      const double r1 = 1.0 - rng.uniform(), r2 = rng.uniform(), r3 = 1.0 - rng.uniform();
      const double c = std::cos(2.0 * M_PI * r2);
      const double lambda2 = -(std::log(r1) + c * c * std::log(r3)) / (2.0 * a);
      const double r4 = rng.uniform();
      if (r4 * r4 <= 1.0 - lambda2) return 1.0 - 2.0 * lambda2;
    }
  }
  // Creutz: x from exp(a x) on [-1, 1] by inversion, accepted with probability sqrt(1 - x^2).
  for (;;) {
    const double u = rng.uniform();
    const double x = a > 1e-12 ? std::min(1.0, -1.0 + std::log1p(u * std::expm1(2.0 * a)) / a) : 2.0 * u - 1.0;
    if (rng.uniform() < std::sqrt(std::max(0.0, 1.0 - x * x))) return x;
  }
}

void u1_sweep(double* theta, const Lattice& lattice, double beta, Move move, SplitMix64& rng) {
  const int d = lattice.d;
  const std::int64_t V = lattice.V;
  auto link = [&](int mu, std::int64_t x) -> double& { return theta[mu * V + x]; };
  for (std::int64_t x = 0; x < V; ++x)
    for (int mu = 0; mu < d; ++mu) {
      // A = sum_nu e^{i [theta_nu(x+mu) - theta_mu(x+nu) - theta_nu(x)]}
      //          + e^{i [-theta_nu(x+mu-nu) - theta_mu(x-nu) + theta_nu(x-nu)]}.
      cd A = 0;
      const std::int64_t xm = lattice.up[x * d + mu];
      for (int nu = 0; nu < d; ++nu) {
        if (nu == mu) continue;
        const std::int64_t xn = lattice.up[x * d + nu], xdn = lattice.down[x * d + nu],
                           xmdn = lattice.down[xm * d + nu];
        A += std::polar(1.0, link(nu, xm) - link(mu, xn) - link(nu, x)) +
             std::polar(1.0, -link(nu, xmdn) - link(mu, xdn) + link(nu, xdn));
      }
      const double alpha = std::arg(A);
      const double next =
          move == Move::kHeatBath ? von_mises(beta * std::abs(A), rng) - alpha : -link(mu, x) - 2.0 * alpha;
      link(mu, x) = std::remainder(next, 2.0 * M_PI);
    }
}

void sun_sweep(cd* u, const Lattice& lattice, int n, double beta, Move move, SplitMix64& rng) {
  if (n < 2 || n > kMaxN) throw std::invalid_argument("heatbath::sun_sweep: N must be in 2..6");
  const int d = lattice.d, nn = n * n;
  const std::int64_t V = lattice.V;
  auto link = [&](int mu, std::int64_t x) { return u + (mu * V + x) * nn; };
  Mat A, t1, t2, W;
  const bool heatbath = move == Move::kHeatBath;
  for (std::int64_t x = 0; x < V; ++x)
    for (int mu = 0; mu < d; ++mu) {
      // Staple sum A = sum_nu U_nu(x+mu) U_mu(x+nu)^+ U_nu(x)^+ + U_nu(x+mu-nu)^+ U_mu(x-nu)^+ U_nu(x-nu).
      std::fill(A.begin(), A.begin() + nn, cd(0));
      const std::int64_t xm = lattice.up[x * d + mu];
      for (int nu = 0; nu < d; ++nu) {
        if (nu == mu) continue;
        const std::int64_t xn = lattice.up[x * d + nu], xdn = lattice.down[x * d + nu],
                           xmdn = lattice.down[xm * d + nu];
        mul_dag(n, link(nu, xm), link(mu, xn), t1.data());
        mul_dag(n, t1.data(), link(nu, x), t2.data());
        for (int k = 0; k < nn; ++k) A[k] += t2[k];
        mul(n, link(mu, xdn), link(nu, xmdn), t1.data());  // [U_mu(x-nu) U_nu(x+mu-nu)]^+ U_nu(x-nu)
        dag_mul(n, t1.data(), link(nu, xdn), t2.data());
        for (int k = 0; k < nn; ++k) A[k] += t2[k];
      }
      cd* U = link(mu, x);
      for (int i = 0; i < n; ++i)
        for (int j = i + 1; j < n; ++j) {
          mul(n, U, A.data(), W.data());
          const cd w00 = W[i * n + i], w01 = W[i * n + j], w10 = W[j * n + i], w11 = W[j * n + j];
          const double r0 = 0.5 * std::real(w00 + w11), r1 = 0.5 * std::imag(w01 + w10),
                       r2 = 0.5 * std::real(w01 - w10), r3 = 0.5 * std::imag(w00 - w11);
          const double k = std::sqrt(r0 * r0 + r1 * r1 + r2 * r2 + r3 * r3);
          std::array<cd, 4> R;
          if (k < 1e-300) {  // no coupling to the rest: Haar (heat bath) or nothing to reflect
            if (!heatbath) continue;
            R = su2_with_x0(su2_x0(0.0, rng), rng);
          } else {
            const auto Vq = su2(r0 / k, r1 / k, r2 / k, r3 / k);
            R = heatbath ? mul2(su2_with_x0(su2_x0(2.0 * beta * k / n, rng), rng), dag2(Vq)) : mul2(dag2(Vq), dag2(Vq));
          }
          for (int c = 0; c < n; ++c) {
            const cd ui = U[i * n + c], uj = U[j * n + c];
            U[i * n + c] = R[0] * ui + R[1] * uj;
            U[j * n + c] = R[2] * ui + R[3] * uj;
          }
        }
    }
}

}  // namespace latflow::heatbath
