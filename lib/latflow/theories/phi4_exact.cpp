// SPDX-License-Identifier: MIT
#include "latflow/theories/phi4_exact.hpp"

#include <cmath>

namespace latflow {

FreeFieldExact free_field_exact(const std::vector<std::int64_t>& extents, double m2) {
  const int d = static_cast<int>(extents.size());
  std::int64_t V = 1;
  for (auto l : extents) V *= l;
  // Sum over all momenta with an odometer over n_mu in [0, L_mu).
  std::vector<std::int64_t> n(d, 0);
  double sum_inv = 0, sum_log = 0;
  for (std::int64_t s = 0; s < V; ++s) {
    double khat2 = 0;
    for (int mu = 0; mu < d; ++mu) {
      const double sk = std::sin(M_PI * n[mu] / extents[mu]);
      khat2 += 4 * sk * sk;
    }
    const double A = khat2 + m2;
    sum_inv += 1 / (2 * A);
    sum_log += std::log(2 * A);
    for (int mu = 0; mu < d && ++n[mu] == extents[mu]; ++mu) n[mu] = 0;
  }
  const double Vd = static_cast<double>(V), L0 = static_cast<double>(extents[0]);
  const double s1 = std::sin(M_PI / L0);
  const double A_pmin = 4 * s1 * s1 + m2;
  FreeFieldExact e{};
  e.chi2 = 1 / (2 * m2);
  e.abs_mag = std::sqrt(2 * e.chi2 / (M_PI * Vd));
  e.mag = 0;
  e.m4 = 3 * (e.chi2 / Vd) * (e.chi2 / Vd);
  e.phi2 = sum_inv / Vd;
  e.action_density = 0.5;
  e.g_pmin = 1 / (2 * A_pmin);
  e.binder = 0;
  e.xi_2nd = std::sqrt(A_pmin / m2 - 1) / (2 * s1);
  e.m_eff = std::acosh(1 + m2 / 2);
  e.free_energy = -0.5 * Vd * std::log(2 * M_PI) + 0.5 * sum_log;
  return e;
}

}  // namespace latflow
