// SPDX-License-Identifier: MIT
// Lattice phi^4 theory on a periodic L_0 x ... x L_{d-1} lattice, no-1/2 convention
// (docs/physics.md "Scalar phi^4 theory"):
//   S[phi] = sum_x [ (2d + m2) phi^2 + lam phi^4 - 2 sum_mu phi(x) phi(x+mu) ].
// Fields are batch-first tensors [B, L_0, ..., L_{d-1}]; every function works for any dtype and device.
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "latflow/core/params.hpp"
#include "latflow/theories/theory.hpp"

namespace latflow {

// A real scalar field on a flat manifold: the Theory defaults for the MD update and momenta apply.
class Phi4 : public Theory {
 public:
  Phi4(const LatticeParams& lattice, const Phi4Params& params);  // params must be resolved

  at::Tensor action(const at::Tensor& phi) const override;  // [B], dtype of phi
  at::Tensor force(const at::Tensor& phi) const override;   // -dS/dphi, analytic, same shape as phi

  // Per-configuration observables in float64. Scalars (names below) are [B, n_scalars]; the zero-momentum
  // correlator c(t) = (1/(L_0 V_s)) sum_{t0} s(t0) s(t0+t), s(t) = sum over the time slice t, is [B, L_0].
  static const std::vector<std::string>& scalar_names();
  using Measurement = latflow::Measurement;
  Measurement measure(const at::Tensor& phi) const override;
  const std::vector<std::string>& observable_names() const override { return scalar_names(); }
  std::vector<std::int64_t> field_shape() const override { return extents_; }

  int dim() const { return static_cast<int>(extents_.size()); }
  const std::vector<std::int64_t>& extents() const { return extents_; }
  std::int64_t volume() const { return volume_; }
  double m2() const { return m2_; }
  double lam() const { return lam_; }

 private:
  std::vector<std::int64_t> extents_;
  std::int64_t volume_;
  double m2_, lam_;
};

}  // namespace latflow
