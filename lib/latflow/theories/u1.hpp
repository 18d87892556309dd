// SPDX-License-Identifier: MIT
// U(1) lattice gauge theory on a periodic L0 x ... x L_{d-1} lattice, d = 2, 3, 4 (docs/physics.md "U(1) gauge
// theory"). Links U_mu(x) = exp(i theta_mu(x)) are stored as angles, batch-first [B, d, L0, ..., L_{d-1}]
// (docs/design.md "Interfaces and parameters"); any real representative of an angle is valid (flows and
// observables reduce mod 2 pi where it matters). Plaquette angle in the (mu, nu) plane, mu < nu,
//   theta_munu(x) = theta_mu(x) + theta_nu(x + e_mu) - theta_mu(x + e_nu) - theta_nu(x),
// Wilson action S = -beta sum_x sum_{mu < nu} cos theta_munu(x); with a defect (U1Params::defect = c != 1, the stages
// of a u1.defect protocol) the (0, 1)-plane plaquette at the last site x* = (L0 - 1, ..., L_{d-1} - 1) has coupling
// c beta instead of beta: S_c = S - (c - 1) beta cos theta_01(x*). Gauge transformations
// theta_mu(x) -> theta_mu(x) + a(x) - a(x + e_mu) leave every plaquette angle unchanged.
//
// HMC: the angles live on a torus, which is flat, so the Theory defaults (theta += dt p, Gaussian momenta) are the
// exact molecular dynamics of U <- exp(i dt p) U; nothing to override.
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "latflow/core/params.hpp"
#include "latflow/theories/theory.hpp"

namespace latflow {

class U1 : public Theory {
 public:
  U1(const LatticeParams& lattice, const U1Params& params);

  at::Tensor action(const at::Tensor& theta) const override;  // [B]
  at::Tensor force(const at::Tensor& theta) const override;   // -dS/dtheta, analytic, [B, d, L0, ..., L_{d-1}]

  // Scalars per configuration, in this order: plaq = <cos theta_P> over all plaquettes, action_density = S / V;
  // d = 2: Q (the topological charge, rounded to the integer it is up to float rounding), Q2 = Q^2; d >= 3:
  // plaq_munu = <cos theta_munu> per plane, monopole = the DeGrand-Toussaint monopole density (monopoles),
  // poly = |volume average of the Polyakov loop|; then wilson_RxR = mean over positions and planes of cos(sum of
  // the R x R plaquette angles inside), R = 2 .. min(4, L/2). Correlator: Polyakov loops along the last direction
  // P(x) = exp(i sum_{x_{d-1}} theta_{d-1}(x)), c(t) = mean over x of Re P(x) P*(x + t e0).
  Measurement measure(const at::Tensor& theta) const override;
  const std::vector<std::string>& observable_names() const override { return names_; }
  std::vector<std::int64_t> field_shape() const override;
  // One heat-bath sweep and `overrelax` overrelaxation sweeps of every chain (theories/heatbath.hpp).
  void heatbath_sweep(at::Tensor& theta, const std::vector<std::uint64_t>& streams, int overrelax) const override;

  double beta() const { return beta_; }
  double defect() const { return defect_; }
  // theta_01(x*), the defect plaquette's angle (unreduced), [B].
  static at::Tensor defect_plaquette(const at::Tensor& theta);
  const std::vector<std::int64_t>& extents() const { return extents_; }
  // The Wilson-loop sizes R of the wilson_RxR observables.
  const std::vector<std::int64_t>& loop_sizes() const { return loop_sizes_; }

  // theta_munu(x), [B, L0, ..., L_{d-1}], same dtype as theta (unreduced: any real number); d from theta.size(1).
  static at::Tensor plaquette(const at::Tensor& theta, int mu, int nu);
  // The (0, 1) plane's plaquette angles: all of them in 2D.
  static at::Tensor plaquettes(const at::Tensor& theta) { return plaquette(theta, 0, 1); }
  // 2D: (1/2 pi) sum_P arg(e^{i theta_P}) with arg in [-pi, pi): an integer up to rounding; not rounded here.
  static at::Tensor topological_charge(const at::Tensor& theta);
  // d >= 3: the DeGrand-Toussaint magnetic charges of the elementary 3-cubes, [B, C(d, 3), L0, ..., L_{d-1}], cube
  // (mu < nu < rho) at x in lexicographic order of (mu, nu, rho); integers up to rounding, not rounded here.
  static at::Tensor monopole_charges(const at::Tensor& theta);
  // theta_mu(x) + a(x) - a(x + e_mu) for a gauge function a [B, L0, ..., L_{d-1}].
  static at::Tensor gauge_transform(const at::Tensor& theta, const at::Tensor& a);
  // Reduce angles to [0, 2 pi).
  static at::Tensor wrap(const at::Tensor& angle);

 private:
  std::vector<std::int64_t> extents_;
  double beta_, defect_;
  std::vector<std::int64_t> loop_sizes_;
  std::vector<std::string> names_;
};

}  // namespace latflow
