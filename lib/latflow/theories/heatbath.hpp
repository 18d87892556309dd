// SPDX-License-Identifier: MIT
// Local exact updates of U(1) and SU(N) lattice gauge fields in d = 2..4 (docs/physics.md "Heat bath and
// overrelaxation"): the second exact algorithm besides HMC, torch-free, one configuration at a time.
//
// A sweep visits the links in storage order (site-major, x0 slowest, direction fastest) and replaces each by
// a draw from its conditional distribution given the others (heat bath), or by the reflection that keeps the
// action unchanged (overrelaxation, microcanonical). Each single-link move leaves exp(-S) invariant, so does
// any sequence of them; the heat bath makes the chain ergodic.
//  - U(1): the link's weight is exp(beta Re(e^{i theta} A)) = exp(beta |A| cos(theta + arg A)), A the staple
//    sum; theta + arg A is drawn from the von Mises distribution; overrelaxation theta -> -theta - 2 arg A.
//  - SU(N): Cabibbo-Marinari (PLB 119 (1982) 387): U <- R U for R in each SU(2) subgroup (i < j) in turn, R
//  drawn
//    from its exact conditional exp((beta/N) Re tr(R U A)); the 2 x 2 block of U A projected on the
//    quaternions is k V (V in SU(2)), and X = R V has the weight exp((2 beta k / N) X_0): X_0 by
//    Kennedy-Pendleton (PLB 156 (1985) 393) for a = 2 beta k / N >= 2 and by Creutz's method (PRD 21 (1980)
//    2308) below, the rest of X uniform on the sphere. Overrelaxation: R = (V^+)^2. For N = 2 the one
//    subgroup is exact SU(2) heat bath.
// Links are in the layout of the theories (theories/u1.hpp, sun.hpp) without the batch dimension: U(1) angles
// [d, L0, ..., L_{d-1}], SU(N) complex matrices [d, L0, ..., L_{d-1}, N, N] row-major.
#pragma once
#include <complex>
#include <cstdint>
#include <vector>

#include "latflow/core/seed.hpp"

namespace latflow::heatbath {

// Neighbour tables of a periodic lattice, sites numbered row-major (x0 slowest).
struct Lattice {
  explicit Lattice(const std::vector<std::int64_t>& extents);
  int d;
  std::int64_t V;
  std::vector<std::int64_t> up, down;  // [x * d + mu]: the site x + e_mu, x - e_mu
};

// phi in [-pi, pi] with density proportional to exp(kappa cos phi), kappa >= 0: uniform proposals accepted
// with probability exp(kappa (cos phi - 1)) for kappa < 1, Best and Fisher's wrapped-Cauchy rejection (Appl.
// Stat. 28 (1979) 152) above.
double von_mises(double kappa, SplitMix64& rng);
// x in [-1, 1] with density proportional to sqrt(1 - x^2) exp(a x), a >= 0 (the weight of X_0 for an SU(2)
// matrix X drawn from exp(a X_0) times the Haar measure).
double su2_x0(double a, SplitMix64& rng);

enum class Move { kHeatBath, kOverrelax };
// One sweep of `move` over every link of one configuration (overrelaxation draws no random numbers).
void u1_sweep(double* theta, const Lattice& lattice, double beta, Move move, SplitMix64& rng);
void sun_sweep(std::complex<double>* u, const Lattice& lattice, int n, double beta, Move move, SplitMix64& rng);

}  // namespace latflow::heatbath
