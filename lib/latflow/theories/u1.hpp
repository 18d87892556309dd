// SPDX-License-Identifier: MIT
// 2D U(1) lattice gauge theory on a periodic L0 x L1 torus (docs/physics.md "U(1) gauge theory"). Links
// U_mu(x) = exp(i theta_mu(x)) are stored as angles, batch-first [B, 2, L0, L1] (docs/design.md "Interfaces and
// parameters"); any real representative of an angle is valid (flows and observables reduce mod 2 pi where it
// matters). Plaquette angle
//   theta_P(x) = theta_0(x) + theta_1(x + e0) - theta_0(x + e1) - theta_1(x),
// Wilson action S = -beta sum_x cos theta_P(x). Gauge transformations theta_mu(x) -> theta_mu(x) + a(x) - a(x + e_mu)
// leave every plaquette angle unchanged.
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
  at::Tensor force(const at::Tensor& theta) const override;   // -dS/dtheta, analytic, [B, 2, L0, L1]

  // Scalars per configuration, in this order: plaq = <cos theta_P> over the lattice, action_density = S / V,
  // Q (the topological charge, rounded to the integer it is up to float rounding), Q2 = Q^2, and
  // wilson_RxR = mean over positions of cos(sum of the R x R plaquette angles inside), R = 2 .. min(4, L/2).
  // Correlator: Polyakov loops P(x0) = exp(i sum_{x1} theta_1(x0, x1)), c(t) = (1/L0) sum_{x0} Re P(x0) P*(x0 + t).
  Measurement measure(const at::Tensor& theta) const override;
  const std::vector<std::string>& observable_names() const override { return names_; }
  std::vector<std::int64_t> field_shape() const override { return {2, extents_[0], extents_[1]}; }

  double beta() const { return beta_; }
  const std::vector<std::int64_t>& extents() const { return extents_; }
  // The Wilson-loop sizes R of the wilson_RxR observables.
  const std::vector<std::int64_t>& loop_sizes() const { return loop_sizes_; }

  // theta_P(x), [B, L0, L1], same dtype as theta (unreduced: any real number).
  static at::Tensor plaquettes(const at::Tensor& theta);
  // (1/2 pi) sum_P arg(e^{i theta_P}) with arg in [-pi, pi): an integer up to rounding; not rounded here.
  static at::Tensor topological_charge(const at::Tensor& theta);
  // theta_mu(x) + a(x) - a(x + e_mu) for a gauge function a [B, L0, L1].
  static at::Tensor gauge_transform(const at::Tensor& theta, const at::Tensor& a);
  // Reduce angles to [0, 2 pi).
  static at::Tensor wrap(const at::Tensor& angle);

 private:
  std::vector<std::int64_t> extents_;
  double beta_;
  std::vector<std::int64_t> loop_sizes_;
  std::vector<std::string> names_;
};

}  // namespace latflow
