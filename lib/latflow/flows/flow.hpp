// SPDX-License-Identifier: MIT
// Normalizing flows for real scalar fields on a periodic lattice: an N(0,1) prior pushed through coupling layers
// that alternate the two checkerboard parities. Conventions (torchlft / Albergo et al. 2019 vocabulary):
//   forward: z -> x,  log q(x) = log r(z) - sum_layers log|det J_layer|
//   inverse: x -> z,  used for log q of a given configuration.
// Nets run in FlowParams::dtype; log-densities are accumulated in float64.
#pragma once
#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "latflow/core/params.hpp"
#include "latflow/kernels/policy.hpp"

namespace latflow {

// Periodic conv net on [B, C, L_0..L_{d-1}] (d = 1..4). The last layer is zero-initialised so that a fresh flow is
// the identity map (training starts from the prior). Two implementations of the same function and parameters:
//   fused (default on the CPU, float32/float64): the whole net is one autograd node running the hand-written
//     kernels of periodic_conv.hpp, forward and backward (2-3x faster per training step on the tutorial nets,
//     docs/benchmarks.md "latflow against PyTorch, L = 8");
//   LibTorch ops (other devices and dtypes, or a policy with fused = false): explicit wrap padding followed by
//     unpadded convolutions (identical to circular padding and measurably faster;
//     docs/design.md "Fused kernels").
// The fused path supports first derivatives only (all that reverse-KL training and the Jacobian tests need).
// Which path, and which instruction set, is the net's KernelPolicy (set_kernel_policy for a whole model).
class ConvNetImpl : public torch::nn::Module {
 public:
  ConvNetImpl(int dim, int in_channels, const std::vector<int>& hidden, int out_channels, int kernel,
              Activation activation);
  torch::Tensor forward(torch::Tensor x);
  // The fused kernels (x [B, C, L...] contiguous, CPU, float32/float64): the net's output at the flat site
  // indices `sites` (int32, CPU) only, channels last [B, sites, C_out]; the last conv is evaluated nowhere else, in
  // the backward too. With autograd (x or the weights requiring gradients) one node, as forward's fused path.
  torch::Tensor forward_at(const torch::Tensor& x, const torch::Tensor& sites);
  // An affine coupling layer's update in inference, in place on x [B, L...] (contiguous, CPU, float32/float64;
  // this net's last conv has 2 outputs): pconv::affine_coupling with this net, adding sum s (forward) or -sum s
  // (inverse) to log_det [B] (float64).
  // active: the flat indices of the updated sites (int32, CPU).
  void affine_coupling(torch::Tensor& x, const torch::Tensor& active, bool z2, bool inverse, torch::Tensor& log_det);
  // The same layer with autograd, as one node (pconv::affine_coupling_forward / _backward): (y, log|det|) for x
  // [B, L...] (CPU, float32/float64), log|det| [B] in float64.
  std::pair<torch::Tensor, torch::Tensor> affine_coupling_node(const torch::Tensor& x, const torch::Tensor& active,
                                                               bool z2, bool inverse);
  const pconv::KernelPolicy& policy() const { return policy_; }
  void set_policy(const pconv::KernelPolicy& policy);

 private:
  const torch::Tensor& neighbours(const std::vector<std::int64_t>& extents);
  std::vector<torch::Tensor> params();  // (weight, bias) of each conv
  std::int64_t taps() const;            // kernel^dim
  torch::Tensor wrap_pad(const torch::Tensor& x) const;
  torch::Tensor forward_fused(const torch::Tensor& x);
  int dim_, pad_, kernel_;
  Activation activation_;
  std::vector<torch::nn::AnyModule> convs_;
  // Periodic neighbour tables per lattice shape seen (a model can be applied to other volumes).
  // (int32 tensors, so that an autograd graph holds a reference to the one its backward needs).
  std::map<std::vector<std::int64_t>, torch::Tensor> neighbours_;
  std::vector<torch::Tensor> tapes_;  // affine_coupling_node's, reused across training steps
  pconv::KernelPolicy policy_;
};
TORCH_MODULE(ConvNet);

// Sets the kernel policy of every ConvNet in `model` (a flow, a layer or a net): the fused kernels or the LibTorch
// ops, Winograd or not, the instruction set. Throws std::invalid_argument for an instruction set the CPU lacks.
void set_kernel_policy(torch::nn::Module& model, const pconv::KernelPolicy& policy);

// One coupling layer: sites of one checkerboard parity are frozen and condition the update of the others.
class CouplingLayer : public torch::nn::Module {
 public:
  // Returns (y, log|det dy/dx|) with the log-det of shape [B] (in the layer's dtype or float64).
  virtual std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& x) = 0;
  virtual std::pair<torch::Tensor, torch::Tensor> inverse(const torch::Tensor& y) = 0;
  // Whether the layer has an inference kernel for x (no autograd), which apply_in_place runs: the forward (or
  // inverse) map applied to x (contiguous) in place, its log|det| added to log_det [B] (float64).
  virtual bool runs_in_place(const torch::Tensor& /*x*/) const { return false; }
  virtual void apply_in_place(torch::Tensor& /*x*/, torch::Tensor& /*log_det*/, bool /*inverse*/) {}
};

// x_active -> x_active * exp(s) + t with s, t from the net of the frozen sites. With z2, s is made even and t
// odd in the frozen field by symmetrising the net over (x, -x), so the layer commutes with phi -> -phi.
// On the CPU with fused nets the layer runs as one kernel: without autograd (sampling, log q of given fields) in
// place (ConvNetImpl::affine_coupling), with autograd as one node with a hand-written backward
// (ConvNetImpl::affine_coupling_node); its log-det is then float64. Otherwise as LibTorch ops.
class AffineCoupling : public CouplingLayer {
 public:
  AffineCoupling(const torch::Tensor& frozen_mask, const FlowParams& p, int dim);
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& x) override;
  std::pair<torch::Tensor, torch::Tensor> inverse(const torch::Tensor& y) override;
  bool runs_in_place(const torch::Tensor& x) const override;
  void apply_in_place(torch::Tensor& x, torch::Tensor& log_det, bool inverse) override;

 private:
  std::pair<torch::Tensor, torch::Tensor> scale_shift(const torch::Tensor& x);
  torch::Tensor mask_, active_;
  bool runs_as_node(const torch::Tensor& x) const;
  const torch::Tensor& active_sites();
  torch::Tensor active_sites_;  // flat indices of the updated sites, int32 on the CPU (made on first use)
  bool z2_;
  ConvNet net_{nullptr};
};

// Monotone rational-quadratic spline on [-B, B] (Durkan et al. 2019, arXiv:1906.04032), identity with unit slope
// outside; K bins whose widths, heights and interior derivatives come from the net of the frozen sites. With z2,
// the spline's parameters are symmetrised so that the frozen field -c gives the mirrored spline,
// g_{-c}(y) = -g_c(-y) (bins, heights and knot slopes in reverse order): the layer commutes with phi -> -phi.
class SplineCoupling : public CouplingLayer {
 public:
  SplineCoupling(const torch::Tensor& frozen_mask, const FlowParams& p, int dim);
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& x) override;
  std::pair<torch::Tensor, torch::Tensor> inverse(const torch::Tensor& y) override;

 private:
  std::pair<torch::Tensor, torch::Tensor> apply(const torch::Tensor& in, bool inverse);
  torch::Tensor mask_, active_;
  int bins_;
  double bound_;
  bool z2_;
  ConvNet net_{nullptr};
};

// A Gaussian prior with a learned covariance (flow.prior = fourier): the first layer maps the N(0,1) draws by
// x = C z, C the symmetric circulant (a translation-invariant linear map) whose eigenvalue at lattice momentum p
// is exp(a(|p^|)), |p^|^2 = sum_mu 4 sin^2(p_mu / 2). a is piecewise linear between kNodes learned values on
// [0, 2 sqrt(d)] (|p^| ranges there on every lattice), so the parameters do not depend on the volume and
// train.init_from works across volumes. Linear, it commutes with phi -> -phi; diagonal in momentum space, with
// translations. log|det C| = sum_p a(|p^|), independent of x. Zero-initialised: a fresh layer is the identity.
// It gives the couplings a start with the two-point function's long-range part, which near criticality
// (E3..E5) is what local conv nets learn slowest.
class FourierScale : public CouplingLayer {
 public:
  static constexpr int kNodes = 32;
  explicit FourierScale(int dim);
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& x) override;
  std::pair<torch::Tensor, torch::Tensor> inverse(const torch::Tensor& y) override;
  // a(|p^|) on the full momentum grid of `extents` [L_0..L_{d-1}] (float64 when the nodes are).
  torch::Tensor log_scale(const std::vector<std::int64_t>& extents) const;

 private:
  std::pair<torch::Tensor, torch::Tensor> apply(const torch::Tensor& x, double sign);
  int dim_;
  torch::Tensor nodes_;
};

// Checkerboard mask of the sites with (sum_mu x_mu) % 2 == parity, shape [L_0..L_{d-1}].
torch::Tensor checkerboard(const std::vector<std::int64_t>& extents, int parity, torch::TensorOptions opt);

// Knots lo = k_0 < ... < k_K = hi from bin fractions [..., K] that sum to 1 (k_K is exactly hi).
torch::Tensor spline_knots(const torch::Tensor& fractions, double lo, double hi);
// Rational-quadratic spline (Durkan et al. 2019, eqs. 4-8) through knots (xk, yk), both [..., K+1] and
// increasing, with slopes dk [..., K+1] at the knots, evaluated at v [...] inside [xk_0, xk_K] (clamp first). Returns
// (y, log|dy/dv|), or for inverse = true (x, -log|dy/dx| at x) with v read as y. Shared by the real-line spline
// coupling and the circular spline kernel of the U(1) flows.
std::pair<torch::Tensor, torch::Tensor> rational_quadratic(const torch::Tensor& v, const torch::Tensor& xk,
                                                           const torch::Tensor& yk, const torch::Tensor& dk,
                                                           bool inverse);

// Standard normal float64 draws of the shape, from a CPU generator seeded with `seed`: the numbers of
// torch::randn(shape, that generator) of this LibTorch, bit for bit (tests/test_flows.cpp), with the Box-Muller
// transform, which costs more than the uniform draws, split over the threads (the uniform draws stay serial, in
// the generator's order); so the draws do not depend on the thread count.
torch::Tensor standard_normal(const std::vector<std::int64_t>& shape, std::uint64_t seed);

// A flow: a prior density r(z) that can be sampled exactly, pushed through coupling layers. The layers and the
// float64 bookkeeping of log q live here; each field type provides its prior (ScalarFlow: N(0,1) per site;
// U1Flow in gauge.hpp: uniform angles).
class FlowModelImpl : public torch::nn::Module {
 public:
  ~FlowModelImpl() override = default;

  // x = f(z) and log q(x) in float64 for prior draws z (any dtype; cast to the model's dtype).
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& z);
  // draw_prior + forward: `batch` samples x ~ q and log q(x), from the stream derived from `stream_seed`.
  std::pair<torch::Tensor, torch::Tensor> sample(std::int64_t batch, std::uint64_t stream_seed);
  // log q(x) in float64 through the inverse; also returns z = f^{-1}(x).
  std::pair<torch::Tensor, torch::Tensor> log_prob(const torch::Tensor& x);
  // log of the prior density, [B] float64.
  virtual torch::Tensor prior_log_prob(const torch::Tensor& z) const = 0;
  // Prior draws [batch, field...] made in float64 on the CPU from the stream derived from `stream_seed`, then
  // moved to the model's device and dtype: the numbers do not depend on the device.
  virtual torch::Tensor draw_prior(std::int64_t batch, std::uint64_t stream_seed) const = 0;

  torch::Dtype dtype() const { return dtype_; }
  torch::Device device() const { return device_; }
  void to_device(torch::Device d);
  std::size_t num_layers() const { return layers_.size(); }
  CouplingLayer& layer(std::size_t i) { return *layers_[i]; }
  std::string weights_hash();  // FNV-1a over parameter bytes: the model's identity in output files

  // The layers alone as a map of fields: (y, log|det dy/dx|) for x [B, field...] (any representative: U(1)
  // angles are reduced first), in the model's dtype, log|det| float64; differentiable when autograd is on.
  std::pair<torch::Tensor, torch::Tensor> transform(const torch::Tensor& x);
  // Stochastic normalizing flows (make_flow with ne.blocks > 0): the flow blocks placed in the protocol, block j
  // acting before the update of step block_step(j) (increasing). Their parameters are the model's too.
  std::size_t num_blocks() const { return blocks_.size(); }
  FlowModelImpl& block(std::size_t j) { return *blocks_[j]; }
  std::int64_t block_step(std::size_t j) const { return block_steps_[j]; }
  void add_block(std::shared_ptr<FlowModelImpl> block, std::int64_t step);

 protected:
  explicit FlowModelImpl(const FlowParams& params);
  void add_layer(std::shared_ptr<CouplingLayer> layer);
  // Applied to the output of the last layer (e.g. angles reduced to [0, 2 pi)); identity by default.
  virtual torch::Tensor finish(const torch::Tensor& x) const { return x; }
  void run_layers(torch::Tensor& x, torch::Tensor& log_det, bool inverse);
  torch::Dtype dtype_;
  torch::Device device_{torch::kCPU};

 private:
  std::vector<std::shared_ptr<CouplingLayer>> layers_;
  std::vector<std::shared_ptr<FlowModelImpl>> blocks_;
  std::vector<std::int64_t> block_steps_;
};
TORCH_MODULE(FlowModel);

// Real scalar fields [B, L_0..L_{d-1}]: N(0,1) prior, checkerboard couplings of alternating parity.
class ScalarFlowImpl : public FlowModelImpl {
 public:
  ScalarFlowImpl(const LatticeParams& lattice, const FlowParams& params);
  torch::Tensor prior_log_prob(const torch::Tensor& z) const override;
  torch::Tensor draw_prior(std::int64_t batch, std::uint64_t stream_seed) const override;

 private:
  std::vector<std::int64_t> extents_;
};

FlowModel make_scalar_flow(const LatticeParams& lattice, const FlowParams& params);

class Theory;
// One training batch's reverse-KL objective: per sample log q(x) + S(x) with x = f(z), whose batch mean
// estimates KL(q || p) - ln Z and whose gradient is the training gradient; log_q and action are its parts,
// detached (log q from the forward pass, float64).
//   path = false (train.gradient = reparam): the gradient through x and through the weights' explicit
//     appearance in log q. That second part, the score E_q[d log q / d theta] = 0, has zero mean but a variance
//     that does not vanish as q -> p.
//   path = true (train.gradient = path): log q(x) evaluated by the inverse with the weights held constant, so
//     the weights enter only through x: the same value, the same expected gradient, without the score term;
//     its variance vanishes as q -> p (Vaitl et al. 2022, arXiv:2207.08219). Costs one inverse pass.
struct KLObjective {
  torch::Tensor objective, log_q, action;
};
KLObjective reverse_kl_objective(FlowModelImpl& model, const Theory& theory, const torch::Tensor& z, bool path);

// The flow for cfg.theory (phi4: ScalarFlow; u1: U1Flow; sun: SUNFlow), weights initialised from LibTorch's default
// generator. With a non-equilibrium protocol (ne.steps > 0) the flow of its start physics, carrying ne.blocks flow
// blocks of ne.block_layers layers (float64, the same nets, identity when fresh).
FlowModel make_flow(const Config& cfg);

}  // namespace latflow
