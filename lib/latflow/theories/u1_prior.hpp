// SPDX-License-Identifier: MIT
// Priors for 2D U(1) flows that carry the exact structure of the theory (flow.prior = plaquette | exact); the
// derivation is in docs/physics.md, "U(1) priors from the plaquettes". Torch-free.
//
// On the periodic L0 x L1 torus a U(1) field is fixed, up to a gauge transformation, by its V = L0 L1 plaquette
// angles and two holonomies, with one constraint: the plaquette angles sum to 0 mod 2 pi. The maximal tree
//   theta_0(x0, x1) = 0 for x0 < L0 - 1,   theta_1(0, x1) = 0 for x1 < L1 - 1   (V - 1 links)
// leaves V + 1 links, integer combinations of the V - 1 plaquettes other than the "defect" P(L0-1, L1-1) and of
// h0 = theta_0(L0-1, 0), h1 = theta_1(0, L1-1):
//   theta_1(x0 + 1, x1) = theta_1(x0, x1) + theta_P(x0, x1)                                   (x0 < L0 - 1)
//   theta_0(L0-1, x1+1) = theta_0(L0-1, x1) + theta_1(0, x1) - theta_1(L0-1, x1) - theta_P(L0-1, x1)   (x1 < L1 - 1)
// A uniform gauge transformation a(x) then spreads the field over its gauge orbit. The map
// (V - 1 plaquettes, h0, h1, V - 1 gauge angles) -> 2 V links is linear with integer coefficients and determinant
// +-1: a bijection of the torus [0, 2 pi)^{2V} with unit Jacobian. The density of the links (Lebesgue measure on
// [0, 2 pi) per link, as for the Haar prior) is therefore the density of the V - 1 plaquette angles times
// (2 pi)^-(V + 1), and log q depends on the field only through its plaquettes (gauge invariant):
//
// plaquette: the V - 1 plaquettes independently from the one-plaquette Boltzmann weight exp(beta cos t) (von
//   Mises), the defect fixed by the constraint:
//     log q = beta sum_{P != defect} cos theta_P - (V - 1) ln(2 pi I_0(beta)) - (V + 1) ln(2 pi).
//   The importance weight exp(-S)/q is exp(beta cos theta_defect) times a constant. For large V the defect is
//   nearly uniform, so Kish ESS/N -> I_0(beta)^2 / I_0(2 beta) (0.24 at beta = 6) at any volume.
// exact: the plaquettes one after the other from their exact conditional distributions. With the character
//   expansion exp(beta cos t) = sum_n I_n(beta) e^{int}, the plaquettes still to come after plaquette k (m of them,
//   the defect included) add up to -s (s the sum so far) with a weight proportional to
//     G_m(s) = 1 + 2 sum_{n >= 1} (I_n(beta) / I_0(beta))^m cos(n s),
//   so p(theta_k | earlier) is proportional to exp(beta cos theta_k) G_m(s_{k-1} + theta_k). It is drawn by
//   rejection from the von Mises proposal, accepted with probability G_m(phi) / G_m(0) <= 1 (all coefficients are
//   positive); G_1(phi) / G_1(0) = exp(beta (cos phi - 1)) exactly, and G_m = 1 to 1e-18 once (I_1/I_0)^m < 1e-18.
//   The product of the conditionals telescopes to the Boltzmann density itself:
//     log q = -S + F,   F = -ln Z = u1_free_energy(V, beta),
//   so every importance weight is exp(-F): the prior is an exact sampler of 2D U(1) on the torus. Nothing in it is
//   learned; it is the character-expansion solution of the theory turned into a sampler.
#pragma once
#include <cstdint>
#include <vector>

#include "latflow/core/seed.hpp"

namespace latflow {

// A draw from the von Mises density exp(kappa cos t) / (2 pi I_0(kappa)) on [-pi, pi] (Best and Fisher, Appl.
// Statist. 28 (1979) 152); uniform for kappa = 0.
double von_mises(double kappa, SplitMix64& rng);

class U1PlaquettePrior {
 public:
  enum class Kind { independent, exact };
  // Extents L0, L1 >= 1; beta in [0, 500] (ConfigError otherwise).
  U1PlaquettePrior(const std::vector<std::int64_t>& extents, double beta, Kind kind);

  // One configuration of link angles [2, L0, L1] (row-major, in [0, 2 pi)) from the stream `rng`.
  void draw(SplitMix64& rng, double* links) const;
  // log q(links) = beta * (sum_P cos theta_P - [plaquette only] cos theta_P(defect)) + log_normalisation().
  double log_normalisation() const { return log_norm_; }
  Kind kind() const { return kind_; }

  // Links [2, L0, L1] from the V plaquette angles (summing to 0 mod 2 pi), the holonomies and a gauge function
  // a [L0, L1] (the map above); not reduced mod 2 pi. Exposed for the tests.
  void build_links(const double* plaq, double h0, double h1, const double* gauge, double* links) const;

 private:
  // theta_k given the sum s of the earlier plaquettes, with m plaquettes (the defect included) still to come.
  double conditional(std::int64_t m, double s, SplitMix64& rng) const;

  std::int64_t L0_, L1_;
  double beta_;
  Kind kind_;
  double log_norm_;
  // exact: coeff_[m - 1][n - 1] = (I_n / I_0)^m for the terms >= 1e-18, m = 2 .. coeff_.size(); G_m(0) in g0_.
  std::vector<std::vector<double>> coeff_;
  std::vector<double> g0_;
};

}  // namespace latflow
