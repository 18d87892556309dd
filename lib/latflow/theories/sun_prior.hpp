// SPDX-License-Identifier: MIT
// Plaquette priors for 2D SU(N) flows, N = 2 and 3 (flow.prior = plaquette | exact), the non-abelian counterpart
// of theories/u1_prior.hpp; the derivation is in docs/physics.md, "SU(N) priors from the plaquettes". Torch-free.
//
// Maximal tree as for U(1): U_0(x0, x1) = 1 for x0 < L0 - 1, U_1(0, x1) = 1 for x1 < L1 - 1; with the holonomies
// A = U_0(L0-1, 0), B = U_1(0, L1-1) the other links follow from the plaquettes P(x) = U_0(x) U_1(x+e0)
// U_0(x+e1)^+ U_1(x)^+ by
//   U_1(x0 + 1, x1) = P(x0, x1) U_1(x0, x1)                                                   (x0 < L0 - 1)
//   U_0(L0-1, x1 + 1) = U_1(L0-1, x1)^+ P(L0-1, x1)^+ U_0(L0-1, x1) U_1(0, x1)                (x1 < L1 - 1)
// and a Haar-random gauge transformation g(x). Every step multiplies by fixed matrices, which preserves the Haar
// measure, so the density of the links with respect to the (normalised) Haar measure is that of the V - 1 free
// plaquettes. With Q(x1) = P(L0-1, x1) P(L0-2, x1) ... P(0, x1) the product of row x1 and
// R = P(L0-2, L1-1) ... P(0, L1-1) that of the last row without the defect, the walk closes the defect as
//   P_defect = (Q(0) Q(1) ... Q(L1-2))^+ A B A^+ B^+ R^+:
// the ordered product of all V plaquettes is the commutator of the holonomies. The free plaquettes in that order
// (x1 = 0, 1, ..; within a row x0 = L0 - 1 down to 0) are M_1 .. M_{V-1}, T = M_1 ... M_{V-1}.
//
// plaquette: each M_k independently from f(U) = exp((beta/N) Re tr U) / c_0 (Haar), A, B, g Haar:
//   log q = (beta/N) sum_{P != defect} Re tr P - (V - 1) ln c_0.
// exact: with f = sum_r d_r c_r chi_r (theories/sun_exact.hpp), the plaquettes still to come after M_k (m of them
//   with the defect) and the holonomies integrate to G_m(X) = sum_r c_r^m chi_r(X^+) / d_r of the product X so
//   far, so M_k is drawn from f(M) G_m(X_{k-1} M) by rejection from f (c_r >= 0 and |chi_r| <= d_r, so G_m is
//   largest at X = 1), and A, B from f(P_defect) by rejection from Haar. The result is distributed as
//   exp(-S) / Z: log q = -S + F (sun_free_energy), every importance weight equal.
// One plaquette from f: its eigenphases a_1 .. a_N (sum 0) have the density |Delta(e^{ia})|^2 exp((beta/N)
// sum cos a_i); drawn by rejection from independent von Mises(beta/N) a_1 .. a_{N-1}, accepted with
// |Delta|^2 exp((beta/N) cos a_N) / (N^N exp(beta/N)) <= 1, then conjugated by a Haar matrix. Characters from
// the Jacobi-Trudi determinants of the complete symmetric polynomials h_k of the eigenvalues, which follow from
// tr U alone for N <= 3 (elementary symmetric polynomials tr U, (tr U)^* and 1).
#pragma once
#include <array>
#include <complex>
#include <cstdint>
#include <vector>

#include "latflow/core/seed.hpp"
#include "latflow/theories/u1_prior.hpp"

namespace latflow {

// An N x N complex matrix (N <= 3), row-major in the first N * N entries.
using SmallMatrix = std::array<std::complex<double>, 9>;
SmallMatrix small_identity(int n);
SmallMatrix small_mul(int n, const SmallMatrix& a, const SmallMatrix& b);
SmallMatrix small_dag(int n, const SmallMatrix& a);
std::complex<double> small_trace(int n, const SmallMatrix& a);
// A Haar-random SU(N) matrix: Gram-Schmidt of a complex Gaussian (Haar on U(N)), divided by det^(1/N).
SmallMatrix haar_sun(int n, SplitMix64& rng);
// The columns of the n x n matrix q (row major, any n) orthonormalised in place by modified Gram-Schmidt, each
// column twice for orthogonality to rounding: the Q of q = Q R with R's diagonal positive, Haar on U(N) when q is a
// complex Gaussian matrix (Mezzadri 2007).
void gram_schmidt(int n, std::complex<double>* q);
// q (n <= 3, unitary) divided by the principal det^(1/N): a centre element times q, Haar on SU(N) if q is on U(N).
void divide_det_root(int n, std::complex<double>* q);
// A draw from exp((beta/N) Re tr U) with respect to Haar (the one-plaquette Boltzmann weight).
SmallMatrix boltzmann_sun(int n, double beta, SplitMix64& rng);

class SUNPlaquettePrior {
 public:
  using Kind = U1PlaquettePrior::Kind;
  // N = 2 or 3, extents L0, L1 >= 1, beta in [0, 200] (ConfigError otherwise).
  SUNPlaquettePrior(int n, const std::vector<std::int64_t>& extents, double beta, Kind kind);

  // One configuration [2, L0, L1, N, N, 2] (link, row, column, (re, im)) from the stream `rng`.
  void draw(SplitMix64& rng, double* links) const;
  // log q(links) = (beta/N) (sum_P Re tr P - [plaquette only] Re tr P(defect)) + log_normalisation().
  double log_normalisation() const { return log_norm_; }
  Kind kind() const { return kind_; }
  int colors() const { return n_; }

  // The links [2][L0][L1] from all V plaquettes [L0][L1] (the defect's entry unused), A, B and the gauge
  // function [L0][L1]; exposed for the tests.
  std::vector<SmallMatrix> build_links(const std::vector<SmallMatrix>& plaq, const SmallMatrix& A, const SmallMatrix& B,
                                       const std::vector<SmallMatrix>& gauge) const;
  // The free plaquettes' sites in the order of the product T, as flat indices x0 L1 + x1.
  const std::vector<std::int64_t>& order() const { return order_; }
  // G_m(X) / G_m(1), for the tests (m >= 1; 1 where G_m is constant to 1e-18).
  double accept_ratio(std::int64_t m, const SmallMatrix& x) const;

 private:
  int n_;
  std::int64_t L0_, L1_;
  double beta_;
  Kind kind_;
  double log_norm_;
  std::vector<std::int64_t> order_;
  // exact: the representations lambda = (l1, l2) (N = 3) or (l1) (N = 2) kept, their dimensions, and per m the
  // coefficients (c_r / c_0)^m / d_r (zero below 1e-18) with their sum of (c_r / c_0)^m in norm_[m - 1].
  std::vector<std::array<int, 2>> reps_;
  std::vector<std::vector<double>> coeff_;
  std::vector<double> norm_;
  int max_row_ = 0;  // the largest l1 among reps_
};

}  // namespace latflow
