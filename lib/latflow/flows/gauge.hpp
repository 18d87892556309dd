// SPDX-License-Identifier: MIT
// Gauge-equivariant flows for U(1) (Kanwar et al., PRL 125 (2020) 121601) and SU(2), SU(3) in d = 2..4. Links are
// angles [B, d, L0, ..., L_{d-1}] (U(1)); the prior is uniform (Haar) on [0, 2 pi) per link. The description below
// is the 2D case; in d = 3, 4 the context holds every plane (docs/physics.md "Gauge-equivariant flows").
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
#include "latflow/flows/gauge_nodes.hpp"
#include "latflow/theories/sun_prior.hpp"
#include "latflow/theories/u1_prior.hpp"

namespace latflow {

class GaugeCoupling : public CouplingLayer {
 public:
  // Updates the links of direction mu at x_nu = offset mod 4 through their plaquettes in the (mu, nu) plane. In
  // d = 3, 4 the context is every plaquette of every plane that contains no updated link (docs/physics.md
  // "Gauge-equivariant flows"); the inference kernels and the 2x1 loop features are 2D only.
  GaugeCoupling(int mu, int nu, int offset, const std::vector<std::int64_t>& extents, const FlowParams& p);
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& x) override;
  std::pair<torch::Tensor, torch::Tensor> inverse(const torch::Tensor& y) override;
  // Without autograd, on the CPU with the fused nets on: kernels/gauge_kernels.hpp; with autograd (2D U(1)):
  // the nodes of gauge_nodes.hpp.
  bool runs_in_place(const torch::Tensor& x) const override;
  void apply_in_place(torch::Tensor& x, torch::Tensor& log_det, bool inverse) override;

 private:
  // The kernel's parameters per plaquette, [B, L0, L1, C], from the frozen plaquettes of x.
  torch::Tensor parameters_of(const torch::Tensor& plaq);
  // Maps plaquette angles (forward: P -> h(P), inverse: h(P) -> P); returns the angles and log h' at the old P
  // (the inverse returns -log h'), for every site (the caller masks).
  std::pair<torch::Tensor, torch::Tensor> kernel(const torch::Tensor& plaq, const torch::Tensor& par, bool inverse);
  std::pair<torch::Tensor, torch::Tensor> apply(const torch::Tensor& x, bool inverse);
  // The tables of the kernels (2D), made on first use.
  const U1LayerGeometry& kernel_geometry();

  int mu_, nu_, dim_;
  bool spline_;  // circular spline kernel, else NCP
  int components_;
  bool loops_;
  torch::Tensor active_, frozen_, frozen_rect0_, frozen_rect1_;  // [L0, ..., L_{d-1}]; 2D: frozen, rect0, rect1
  torch::Tensor frozen_planes_;  // d > 2: [d(d-1)/2, L0, ..., L_{d-1}], one frozen mask per plane (a < b)
  torch::Tensor active_sites_;   // for the kernels: flat indices (int32) and uint8 frozen, rect0, rect1
  torch::Tensor active_index_;   // the flat indices as int64 on the device of the last input (d > 2)
  std::vector<torch::Tensor> masks_;
  U1LayerGeometry geometry_;
  ConvNet net_{nullptr};
};

// The eigenphases of SU(3) matrices P [..., 3, 3] (complex, any precision) in the alcove order above, float64
// [..., 3], in closed form: the roots of the characteristic polynomial lambda^3 - t lambda^2 + conj(t) lambda - 1
// (t = tr P) by Cardano, polished by Newton on the unit circle; differentiable in P through t.
torch::Tensor su3_alcove_phases(const torch::Tensor& P);

// The prior (flow.prior): haar, uniform angles, log density -2 V ln(2 pi); plaquette or exact, the gauge-fixed
// plaquette priors of theories/u1_prior.hpp at the coupling `beta` (independent one-plaquette Boltzmann factors
// and a defect; or the exact joint distribution), whose log density beta sum cos theta_P + const is evaluated from
// the plaquettes of z with torch ops, so that it is differentiable in z (the path gradient needs that).
class U1FlowImpl : public FlowModelImpl {
 public:
  U1FlowImpl(const LatticeParams& lattice, const FlowParams& params, double beta = 0);
  torch::Tensor prior_log_prob(const torch::Tensor& z) const override;
  torch::Tensor draw_prior(std::int64_t batch, std::uint64_t stream_seed) const override;

 protected:
  torch::Tensor finish(const torch::Tensor& x) const override;  // angles reduced to [0, 2 pi)

 private:
  std::vector<std::int64_t> extents_;
  double beta_;
  std::shared_ptr<const U1PlaquettePrior> plaquette_prior_;  // null for haar
};

// ---------------------------------------------------------------------------------------------------------------
// SU(2) and SU(3) gauge-equivariant flows (Boyda et al., PRD 103 (2021) 074504). Links are stored as in SUN
// (theories/sun.hpp), [B, 2, L0, L1, N, N, 2]; the prior is the normalised Haar measure (exact sampler SUN::haar,
// log density 0, so log q and F = -ln Z refer to the normalised Haar measure, like sun_free_energy).
//
// Masks as for U(1): layer i updates direction i % 2 on the stripe (i / 2) % 4. A spectral kernel maps the
// untraced active plaquette P to P' with the same eigenvectors and new eigenphases, conditioned (periodic CNN) on
// the gauge-invariant traces of the frozen plaquettes; it commutes with conjugation P -> g P g^+, hence the layer
// with gauge transformations. The link moves as U_0(x) <- P' P^+ U_0(x) (mu = 0) or U_1(x) <- P'^+ P U_1(x)
// (mu = 1), which makes the new active plaquette P' (the Jacobian is that of P -> P', a right translation of the
// Haar measure aside). A zero net output gives equal bins and unit slopes: a fresh layer is the identity.
//
// SU(2): P = V diag(e^{i theta}, e^{-i theta}) V^+ with theta in [0, pi]; theta -> h(theta), a monotone
// rational-quadratic spline of [0, pi] onto itself (ends fixed) conditioned on tr P / 2 of the frozen plaquettes;
// P' = cos h I + (sin h / sin theta)(P - cos theta I). Haar in class coordinates is (2/pi) sin^2 theta d theta d^2 n,
// so log|det| = sum_active [log h'(theta) + 2 log sin h(theta) - 2 log sin theta].
//
// SU(3): the eigenphases, with the branch chosen so that theta_1 >= theta_2 >= theta_3, sum = 0 and
// theta_1 - theta_3 <= 2 pi, label the conjugacy class uniquely: a point of the Weyl alcove, the triangle with
// barycentric coordinates w = (theta_1 - theta_2, theta_2 - theta_3, 2 pi - theta_1 + theta_3) / 2 pi. Sorting
// makes the map independent of the eigenvector order (permutation equivariant). The triangle is mapped onto
// itself by stick breaking, w_1 -> s_1(w_1) and v = w_2 / (1 - w_1) -> s_2(v), with two monotone splines of
// [0, 1] (ends fixed) conditioned on Re and Im tr P / 3 of the frozen plaquettes; P' = V diag(e^{i theta'}) V^+,
// built without an eigensolver as a quadratic polynomial in P (su3_kernel). w is linear in the phases, so with
// respect to Haar (density |Delta(e^{i theta})|^2 on classes) log|det| = log s_1' + log s_2' + log(1 - w_1')
// - log(1 - w_1) + log|Delta(theta')|^2 - log|Delta(theta)|^2. (A simple stand-in for the canonical-cell construction
// of Boyda et al.: the alcove is that cell; the map is a bijection of it, but not built to be smooth across its edges.)
class SpectralCoupling : public CouplingLayer {
 public:
  // Updates the links of direction mu at x_nu = offset mod 4 through their (mu, nu) plaquettes; in d = 3, 4 the
  // context is the traces of every plaquette that holds no updated link, as for GaugeCoupling.
  SpectralCoupling(int n, int mu, int nu, int offset, const std::vector<std::int64_t>& extents, const FlowParams& p);
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& x) override { return apply(x, false); }
  std::pair<torch::Tensor, torch::Tensor> inverse(const torch::Tensor& y) override { return apply(y, true); }
  // Without autograd, on the CPU with the fused nets on: kernels/gauge_kernels.hpp.
  bool runs_in_place(const torch::Tensor& x) const override;
  void apply_in_place(torch::Tensor& x, torch::Tensor& log_det, bool inverse) override;

 private:
  std::pair<torch::Tensor, torch::Tensor> apply(const torch::Tensor& x, bool inverse);
  // R [B, L0, L1, N, N], a function of P with P' = R P the new active plaquette, and the kernel's log-det per
  // site, from P and the net output.
  std::pair<torch::Tensor, torch::Tensor> su2_kernel(const torch::Tensor& P, const torch::Tensor& par, bool inverse);
  std::pair<torch::Tensor, torch::Tensor> su3_kernel(const torch::Tensor& P, const torch::Tensor& par, bool inverse);
  int n_, mu_, nu_, dim_, bins_;
  torch::Tensor active_, frozen_;  // [L0, ..., L_{d-1}]; d > 2: frozen_ is [d(d-1)/2, L0, ...], one mask per plane
  torch::Tensor active_sites_, frozen_u8_;  // for the kernels: flat indices (int32, CPU), mask (uint8)
  torch::Tensor active_index_;              // the flat indices as int64 on the device of the last input
  ConvNet net_{nullptr};
};

// The eigenphases of SU(3) matrices P [..., 3, 3] (complex, any precision) in the alcove order above, float64
// [..., 3], in closed form: the roots of the characteristic polynomial lambda^3 - t lambda^2 + conj(t) lambda - 1
// (t = tr P) by Cardano, polished by Newton on the unit circle; differentiable in P through t.
torch::Tensor su3_alcove_phases(const torch::Tensor& P);

// The prior (flow.prior): haar (log density 0), plaquette or exact, the gauge-fixed plaquette priors of
// theories/sun_prior.hpp at the coupling `beta`, whose log density (beta/N) sum Re tr P + const is evaluated
// from the plaquettes of z with torch ops (differentiable in z).
class SUNFlowImpl : public FlowModelImpl {
 public:
  SUNFlowImpl(const LatticeParams& lattice, int n, const FlowParams& params, double beta = 0);
  torch::Tensor prior_log_prob(const torch::Tensor& z) const override;
  torch::Tensor draw_prior(std::int64_t batch, std::uint64_t stream_seed) const override;

 private:
  std::vector<std::int64_t> extents_;
  int n_;
  double beta_;
  std::shared_ptr<const SUNPlaquettePrior> plaquette_prior_;  // null for haar
};

}  // namespace latflow
