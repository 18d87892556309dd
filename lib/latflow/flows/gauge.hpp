// SPDX-License-Identifier: MIT
// Gauge-equivariant flows for 2D U(1) (Kanwar et al., PRL 125 (2020) 121601). Links are angles [B, 2, L0, L1]; the
// prior is uniform (Haar) on [0, 2 pi) per link.
//
// A coupling layer updates the links of one direction mu on the stripe x_nu = offset (mod 4), nu != mu. Each such
// link sits in exactly one plaquette of that stripe (the "active" plaquettes; the other plaquette containing it, on
// x_nu = offset - 1, is "passive" and changes as a consequence) and no active plaquette holds a second updated
// link. The two stripes x_nu = offset + 1, offset + 2 are "frozen": they contain no updated link. An invertible
// map of the circle, whose parameters a periodic CNN computes from the frozen plaquettes (as cos, sin; optionally
// also the frozen 2x1 and 1x2 loops), moves each active plaquette angle P -> h(P); the link changes by +-(h(P) - P)
// (the sign with which it enters P), so the new plaquette is h(P) and log|det| = sum_active log h'(P).
// Plaquettes and loops are gauge invariant and the link moves by a gauge-invariant amount, so the layer commutes
// with gauge transformations; it commutes with translations that preserve the masks (by 4 along nu).
//
// Kernels (Rezende et al., ICML 2020, arXiv:2002.02428) on the circle, each followed by a rotation P -> P + t:
//   ncp:    mixtures of non-compact projections, P -> sum_k rho_k 2 atan(alpha_k tan(P/2)) on (-pi, pi),
//           slope sum_k rho_k alpha_k / (cos^2(P/2) + alpha_k^2 sin^2(P/2)); inverse by bisection (monotone).
//   spline: a rational-quadratic spline of [0, 2 pi] onto itself with equal slopes at 0 and 2 pi (so smooth on the
//           circle), inverse in closed form.
// A zero net output gives alpha = 1, equal bins, unit slopes and t = 0: a fresh layer is the identity.
#pragma once
#include <torch/torch.h>

#include "latflow/flows/flow.hpp"

namespace latflow {

class GaugeCoupling : public CouplingLayer {
 public:
  GaugeCoupling(int mu, int offset, const std::vector<std::int64_t>& extents, const FlowParams& p);
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& x) override;
  std::pair<torch::Tensor, torch::Tensor> inverse(const torch::Tensor& y) override;

 private:
  // The kernel's parameters per plaquette, [B, L0, L1, C], from the frozen plaquettes of x.
  torch::Tensor parameters_of(const torch::Tensor& plaq);
  // Maps plaquette angles (forward: P -> h(P), inverse: h(P) -> P); returns the angles and log h' at the old P
  // (the inverse returns -log h'), for every site (the caller masks).
  std::pair<torch::Tensor, torch::Tensor> kernel(const torch::Tensor& plaq, const torch::Tensor& par, bool inverse);
  std::pair<torch::Tensor, torch::Tensor> apply(const torch::Tensor& x, bool inverse);

  int mu_;
  std::string kind_;
  int components_;
  bool loops_;
  torch::Tensor active_, frozen_, frozen_rect0_, frozen_rect1_;  // [L0, L1]
  ConvNet net_{nullptr};
};

class U1FlowImpl : public FlowModelImpl {
 public:
  U1FlowImpl(const LatticeParams& lattice, const FlowParams& params);
  torch::Tensor prior_log_prob(const torch::Tensor& z) const override;  // -2 V ln(2 pi)
  torch::Tensor draw_prior(std::int64_t batch, std::uint64_t stream_seed) const override;

 protected:
  torch::Tensor finish(const torch::Tensor& x) const override;  // angles reduced to [0, 2 pi)

 private:
  std::vector<std::int64_t> extents_;
};

}  // namespace latflow
