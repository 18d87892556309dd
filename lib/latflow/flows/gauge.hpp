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

// ---------------------------------------------------------------------------------------------------------------
// SU(2) gauge-equivariant flows (Boyda et al., PRD 103 (2021) 074504). Links are stored as in SUN (theories/sun.hpp),
// [B, 2, L0, L1, 2, 2, 2]; the prior is the normalised Haar measure (exact sampler SUN::haar, log density 0, so
// log q and F = -ln Z refer to the normalised Haar measure, like sun_free_energy).
//
// Masks as for U(1): layer i updates direction i % 2 on the stripe (i / 2) % 4. The spectral kernel acts on the
// untraced active plaquette P = V diag(e^{i theta}, e^{-i theta}) V^+ with theta in [0, pi] (cos theta = tr P / 2):
// theta -> h(theta), a monotone rational-quadratic spline of [0, pi] onto itself (ends fixed, so the map is smooth
// at P = +-1) whose parameters a periodic CNN computes from the gauge-invariant traces tr P / 2 of the frozen
// plaquettes; V is kept: P' = cos h I + (sin h / sin theta)(P - cos theta I). This commutes with conjugation
// P -> g P g^+, hence with gauge transformations. The link moves as U_0(x) <- P' P^+ U_0(x) (mu = 0) or
// U_1(x) <- P'^+ P U_1(x) (mu = 1), which makes the new active plaquette P'. The Haar measure in class
// coordinates is (2/pi) sin^2 theta d theta d^2 n, so with respect to Haar
// log|det| = sum_active [log h'(theta) + 2 log sin h(theta) - 2 log sin theta].
// A zero net output gives equal bins and unit slopes: a fresh layer is the identity. N = 2 only; SU(3) and larger
// need a kernel on the N - 1 independent eigenphases (the canonical cell of Boyda et al.), not implemented.
class SU2Coupling : public CouplingLayer {
 public:
  SU2Coupling(int mu, int offset, const std::vector<std::int64_t>& extents, const FlowParams& p);
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& x) override { return apply(x, false); }
  std::pair<torch::Tensor, torch::Tensor> inverse(const torch::Tensor& y) override { return apply(y, true); }

 private:
  std::pair<torch::Tensor, torch::Tensor> apply(const torch::Tensor& x, bool inverse);
  int mu_, bins_;
  torch::Tensor active_, frozen_;  // [L0, L1]
  ConvNet net_{nullptr};
};

class SUNFlowImpl : public FlowModelImpl {
 public:
  SUNFlowImpl(const LatticeParams& lattice, int n, const FlowParams& params);
  torch::Tensor prior_log_prob(const torch::Tensor& z) const override;  // 0: normalised Haar measure
  torch::Tensor draw_prior(std::int64_t batch, std::uint64_t stream_seed) const override;

 private:
  std::vector<std::int64_t> extents_;
  int n_;
};

}  // namespace latflow
