// SPDX-License-Identifier: MIT
// Exact results of the free field (lam = 0, m2 > 0) in the no-1/2 convention, weight exp(-phi^T A phi) with
// A_k = khat^2 + m2 in momentum space, khat^2 = sum_mu 4 sin^2(k_mu / 2), k_mu = 2 pi n_mu / L_mu
// (docs/physics.md "Free field, exact").
#pragma once
#include <cstdint>
#include <vector>

namespace latflow {

struct FreeFieldExact {
  double chi2;            // <M^2>/V = G~(0) = 1/(2 m2)
  double abs_mag;         // <|M|>/V: M is Gaussian with variance V chi2
  double mag;             // 0
  double m4;              // <m^4> = 3 <m^2>^2
  double phi2;            // (1/V) sum_k 1/(2 A_k)
  double action_density;  // 1/2 (equipartition: V Gaussian modes, each <quadratic form> = 1/2)
  double g_pmin;          // G~(p_min) = 1/(2 A_pmin), p_min = 2 pi / L_0 along one direction
  double binder;          // 0 for a Gaussian
  double xi_2nd;          // sqrt(A_pmin/m2 - 1) / (2 sin(pi/L_0))
  double m_eff;           // arccosh(1 + m2/2): the zero-momentum correlator is a pure cosh
  double free_energy;     // -ln Z = -(V/2) ln(2 pi) + (1/2) sum_k ln(2 A_k)
};

FreeFieldExact free_field_exact(const std::vector<std::int64_t>& extents, double m2);

}  // namespace latflow
