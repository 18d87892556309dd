// SPDX-License-Identifier: MIT
// Plaquette priors for 2D SU(2) flows (flow.prior = plaquette | exact), the non-abelian counterpart of
// theories/u1_prior.hpp; the derivation is in docs/physics.md, "SU(2) priors from the plaquettes". Torch-free.
//
// Maximal tree as for U(1): U_0(x0, x1) = 1 for x0 < L0 - 1, U_1(0, x1) = 1 for x1 < L1 - 1; with the holonomies
// A = U_0(L0-1, 0), B = U_1(0, L1-1) the other links follow from the plaquettes P(x) = U_0(x) U_1(x+e0)
// U_0(x+e1)^+ U_1(x)^+ by
//   U_1(x0 + 1, x1) = P(x0, x1) U_1(x0, x1)                                                   (x0 < L0 - 1)
//   U_0(L0-1, x1 + 1) = U_1(L0-1, x1)^+ P(L0-1, x1)^+ U_0(L0-1, x1) U_1(0, x1)                (x1 < L1 - 1)
// and a Haar-random gauge transformation g(x). Every step multiplies by fixed matrices, which preserves the Haar
// measure, so the density of the links with respect to the (normalised) Haar measure is that of the V - 1 free
// plaquettes. The defect P(L0-1, L1-1) is fixed: with Q(x1) = P(L0-1, x1) P(L0-2, x1) ... P(0, x1) the product of
// row x1 and R = P(L0-2, L1-1) ... P(0, L1-1) that of the last row without the defect,
//   P_defect = (Q(0) Q(1) ... Q(L1-2))^+ A B A^+ B^+ R^+,
// i.e. the ordered product of all V plaquettes, the defect in its place, is the commutator A B A^+ B^+. The free
// plaquettes in that order (x1 = 0, 1, ..; within a row x0 = L0 - 1 down to 0) are M_1 .. M_{V-1}, and
// T = M_1 M_2 ... M_{V-1} = Q(0) ... Q(L1-2) R.
//
// plaquette: the free plaquettes independent, each from f(U) = exp((beta/2) tr U) / c_0 (Haar), A, B, g Haar:
//   log q = beta sum_{P != defect} (tr P / 2) - (V - 1) ln c_0,   c_0 = 2 I_1(beta) / beta.
// exact: with f = sum_j d_j c_j chi_j (c_j = 2 I_{2j+1}(beta) / beta, d_j = 2j + 1, chi_j the spin-j character),
//   the plaquettes still to come after M_k (m of them with the defect) and the holonomies integrate to
//   G_m(X) = sum_j c_j^m chi_j(X^+) / d_j of the product X so far, so M_k is drawn from f(M) G_m(X_{k-1} M) by
//   rejection from f (G_m is largest at X = 1), and A, B from f(P_defect) by rejection from Haar. The density of
//   the result is exp(-S) / Z: log q = -S + F (sun_free_energy), every importance weight equal.
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "latflow/core/seed.hpp"
#include "latflow/theories/u1_prior.hpp"

namespace latflow {

// An SU(2) matrix a0 + i (a1 sigma_1 + a2 sigma_2 + a3 sigma_3), a unit quaternion.
using Quaternion = std::array<double, 4>;
Quaternion quaternion_mul(const Quaternion& p, const Quaternion& q);  // the matrix product
Quaternion quaternion_dag(const Quaternion& q);
Quaternion haar_su2(SplitMix64& rng);
// A draw from exp(beta a0) with respect to Haar (the one-plaquette Boltzmann weight of SU(2)).
Quaternion boltzmann_su2(double beta, SplitMix64& rng);

class SU2PlaquettePrior {
 public:
  using Kind = U1PlaquettePrior::Kind;
  // Extents L0, L1 >= 1, beta in [0, 200].
  SU2PlaquettePrior(const std::vector<std::int64_t>& extents, double beta, Kind kind);

  // One configuration [2, L0, L1, 2, 2, 2] (link, row, column, (re, im)) from the stream `rng`.
  void draw(SplitMix64& rng, double* links) const;
  // log q(links) = beta * (sum_P tr P / 2 - [plaquette only] tr P(defect) / 2) + log_normalisation().
  double log_normalisation() const { return log_norm_; }
  Kind kind() const { return kind_; }

  // The links as quaternions [2][L0][L1] from all V plaquettes [L0][L1] (the defect's entry unused), A, B and the
  // gauge function [L0][L1]; exposed for the tests.
  std::vector<Quaternion> build_links(const std::vector<Quaternion>& plaq, const Quaternion& A, const Quaternion& B,
                                      const std::vector<Quaternion>& gauge) const;
  // The free plaquettes' sites in the order of the product T, as flat indices x0 L1 + x1.
  const std::vector<std::int64_t>& order() const { return order_; }

 private:
  double accept_ratio(std::int64_t m, const Quaternion& x) const;  // G_m(x) / G_m(1)

  std::int64_t L0_, L1_;
  double beta_;
  Kind kind_;
  double log_norm_;
  std::vector<std::int64_t> order_;
  // exact: coeff_[m - 1][n - 1] = (I_n / I_1)^m / n for the spin (n - 1)/2 terms >= 1e-18 (n = 2j + 1), with
  // the normalisation sum_n (I_n / I_1)^m in norm_[m - 1]; m = 1 .. coeff_.size(), G_m = const beyond.
  std::vector<std::vector<double>> coeff_;
  std::vector<double> norm_;
};

}  // namespace latflow
