// SPDX-License-Identifier: MIT
#include "latflow/flows/flow.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <cstring>
#include <iomanip>
#include <sstream>

#include "latflow/core/error.hpp"
#include "latflow/flows/gauge.hpp"

namespace latflow {
namespace {

std::vector<std::int64_t> site_dims(int d, int first = 1) {
  std::vector<std::int64_t> dims(d);
  for (int mu = 0; mu < d; ++mu) dims[mu] = mu + first;
  return dims;
}

torch::Dtype torch_dtype(NetDtype d) { return d == NetDtype::float64 ? torch::kFloat64 : torch::kFloat32; }

}  // namespace

torch::Tensor checkerboard(const std::vector<std::int64_t>& extents, int parity, torch::TensorOptions opt) {
  auto sum = torch::zeros(extents, torch::kInt64);
  for (std::size_t mu = 0; mu < extents.size(); ++mu) {
    std::vector<std::int64_t> shape(extents.size(), 1);
    shape[mu] = extents[mu];
    sum = sum + torch::arange(extents[mu], torch::kInt64).view(shape);
  }
  return (sum.remainder(2) == parity).to(opt);
}

// ---------------------------------------------------------------------------------------------------------------
AffineCoupling::AffineCoupling(const torch::Tensor& frozen_mask, const FlowParams& p, int dim) : z2_(p.z2) {
  mask_ = register_buffer("mask", frozen_mask.unsqueeze(0));
  active_ = register_buffer("active", 1 - mask_);
  net_ = register_module("net", ConvNet(dim, 1, p.hidden, 2, p.kernel, p.activation));
}

std::pair<torch::Tensor, torch::Tensor> AffineCoupling::scale_shift(const torch::Tensor& x) {
  auto xf = (x * mask_).unsqueeze(1);
  torch::Tensor s, t;
  if (z2_) {
    const auto B = x.size(0);
    auto out = net_->forward(torch::cat({xf, -xf}, 0));
    auto a = out.narrow(0, 0, B), b = out.narrow(0, B, B);
    s = torch::tanh(0.5 * (a.select(1, 0) + b.select(1, 0)));  // even in the frozen field
    t = 0.5 * (a.select(1, 1) - b.select(1, 1));               // odd in the frozen field
  } else {
    auto out = net_->forward(xf);
    s = torch::tanh(out.select(1, 0));
    t = out.select(1, 1);
  }
  return {s * active_, t * active_};
}

// Whether the kernels can run this layer on x (with or without autograd).
bool AffineCoupling::runs_as_node(const torch::Tensor& x) const {
  return net_->policy().fused && x.device().is_cpu() &&
         (x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kFloat64) &&
         x.sizes().slice(1) == active_.sizes().slice(1);
}

bool AffineCoupling::runs_in_place(const torch::Tensor& x) const {
  return !torch::GradMode::is_enabled() && runs_as_node(x);
}

const torch::Tensor& AffineCoupling::active_sites() {
  if (!active_sites_.defined()) {
    // A normal tensor even when first made while sampling, since later training passes keep it in their graphs.
    c10::InferenceMode normal_tensors(false);
    active_sites_ = active_.flatten().nonzero().flatten().to(torch::kCPU, torch::kInt32).contiguous();
  }
  return active_sites_;
}

void AffineCoupling::apply_in_place(torch::Tensor& x, torch::Tensor& log_det, bool inverse) {
  net_->affine_coupling(x, active_sites(), z2_, inverse, log_det);
}

std::pair<torch::Tensor, torch::Tensor> AffineCoupling::forward(const torch::Tensor& x) {
  if (runs_as_node(x) && !runs_in_place(x)) return net_->affine_coupling_node(x, active_sites(), z2_, false);
  if (runs_in_place(x)) {
    auto y = x.clone(at::MemoryFormat::Contiguous);
    auto log_det = torch::zeros({x.size(0)}, x.options().dtype(torch::kFloat64));
    apply_in_place(y, log_det, false);
    return {y, log_det};
  }
  auto [s, t] = scale_shift(x);
  return {x * torch::exp(s) + t, s.sum(site_dims(x.dim() - 1))};
}

std::pair<torch::Tensor, torch::Tensor> AffineCoupling::inverse(const torch::Tensor& y) {
  if (runs_as_node(y) && !runs_in_place(y)) return net_->affine_coupling_node(y, active_sites(), z2_, true);
  if (runs_in_place(y)) {
    auto x = y.clone(at::MemoryFormat::Contiguous);
    auto log_det = torch::zeros({y.size(0)}, y.options().dtype(torch::kFloat64));
    apply_in_place(x, log_det, true);
    return {x, log_det};
  }
  auto [s, t] = scale_shift(y);  // the frozen sites are unchanged, so the net sees the same input
  return {(y - t) * torch::exp(-s), -s.sum(site_dims(y.dim() - 1))};
}

torch::Tensor spline_knots(const torch::Tensor& fractions, double lo, double hi) {
  const auto K = fractions.size(-1);
  auto c = torch::cumsum(fractions, -1) * (hi - lo) + lo;
  auto first = torch::full_like(c.narrow(-1, 0, 1), lo);
  // The last knot is exactly hi so that [lo, hi] is covered whatever the rounding of the cumulative sum.
  return torch::cat({first, c.narrow(-1, 0, K - 1), torch::full_like(first, hi)}, -1);
}

std::pair<torch::Tensor, torch::Tensor> rational_quadratic(const torch::Tensor& v_in, const torch::Tensor& xk,
                                                           const torch::Tensor& yk, const torch::Tensor& dk,
                                                           bool inverse) {
  const auto K = xk.size(-1) - 1;
  auto v = v_in.unsqueeze(-1);
  auto search = (inverse ? yk : xk).narrow(-1, 1, K - 1).contiguous();
  auto bin = torch::searchsorted(search, v.contiguous(), /*out_int32=*/false, /*right=*/true);
  auto g = [&](const torch::Tensor& t, int off) { return t.gather(-1, bin + off).squeeze(-1); };
  auto x0 = g(xk, 0), x1 = g(xk, 1), y0 = g(yk, 0), y1 = g(yk, 1), d0 = g(dk, 0), d1 = g(dk, 1);
  auto w = x1 - x0, h = y1 - y0, s = h / w;
  auto vv = v_in;

  torch::Tensor xi;
  if (!inverse) {
    xi = ((vv - x0) / w).clamp(0, 1);
  } else {
    // Solve the rational-quadratic for xi (Durkan et al. eq. 6-8), the root that lies in [0, 1].
    auto dy = vv - y0;
    auto c2 = d1 + d0 - 2 * s;
    auto a = h * (s - d0) + dy * c2;
    auto b = h * d0 - dy * c2;
    auto c = -s * dy;
    auto disc = (b * b - 4 * a * c).clamp_min(0);
    xi = (2 * c / (-b - torch::sqrt(disc))).clamp(0, 1);
  }
  auto xi1 = xi * (1 - xi);
  auto den = s + (d1 + d0 - 2 * s) * xi1;
  auto log_slope =
      2 * torch::log(s) + torch::log(d1 * xi * xi + 2 * s * xi1 + d0 * (1 - xi) * (1 - xi)) - 2 * torch::log(den);
  if (!inverse) return {y0 + h * (s * xi * xi + d0 * xi1) / den, log_slope};
  return {x0 + xi * w, -log_slope};
}

// ---------------------------------------------------------------------------------------------------------------
SplineCoupling::SplineCoupling(const torch::Tensor& frozen_mask, const FlowParams& p, int dim)
    : bins_(p.spline_bins), bound_(p.spline_bound), z2_(p.z2) {
  mask_ = register_buffer("mask", frozen_mask.unsqueeze(0));
  active_ = register_buffer("active", 1 - mask_);
  net_ = register_module("net", ConvNet(dim, 1, p.hidden, 3 * p.spline_bins - 1, p.kernel, p.activation));
}

std::pair<torch::Tensor, torch::Tensor> SplineCoupling::apply(const torch::Tensor& in, bool inverse) {
  using torch::indexing::Slice;
  const int K = bins_;
  const double B = bound_;
  constexpr double kMinBin = 1e-3, kMinDeriv = 1e-3;
  // softplus(kDerivShift) = 1 - kMinDeriv: a zero net output gives unit slopes, so a fresh layer is the identity.
  const double kDerivShift = std::log(std::expm1(1.0 - kMinDeriv));

  const int d = in.dim() - 1;
  std::vector<std::int64_t> perm{0};
  for (int mu = 0; mu < d; ++mu) perm.push_back(mu + 2);
  perm.push_back(1);
  auto xf = (in * mask_).unsqueeze(1);
  torch::Tensor raw;  // [B, 3K-1, L...]: K width logits, K height logits, K-1 interior slopes
  if (z2_) {
    // raw(c) = (net(c) + mirror(net(-c))) / 2, mirror reversing each group, so raw(-c) = mirror(raw(c)): the
    // spline of -c is the point reflection of the spline of c.
    const auto B = in.size(0);
    auto out = net_->forward(torch::cat({xf, -xf}, 0));
    auto b = out.narrow(0, B, B);
    auto mirrored =
        torch::cat({b.narrow(1, 0, K).flip({1}), b.narrow(1, K, K).flip({1}), b.narrow(1, 2 * K, K - 1).flip({1})}, 1);
    raw = 0.5 * (out.narrow(0, 0, B) + mirrored);
  } else {
    raw = net_->forward(xf);
  }
  raw = raw.permute(perm);  // [B, L..., 3K-1]
  auto widths = kMinBin + (1 - K * kMinBin) * torch::softmax(raw.narrow(-1, 0, K), -1);
  auto heights = kMinBin + (1 - K * kMinBin) * torch::softmax(raw.narrow(-1, K, K), -1);
  auto derivs = kMinDeriv + torch::softplus(raw.narrow(-1, 2 * K, K - 1) + kDerivShift);

  auto xk = spline_knots(widths, -B, B), yk = spline_knots(heights, -B, B);
  auto ones = torch::ones_like(derivs.narrow(-1, 0, 1));
  auto dk = torch::cat({ones, derivs, ones}, -1);  // unit slopes at +-B match the identity tails

  // Clamp before the bin search so every element, selected or not, gets finite values (no NaN in gradients).
  auto inside = (in > -B) & (in < B) & (active_ > 0.5);
  auto [out, log_slope] = rational_quadratic(torch::clamp(in, -B, B), xk, yk, dk, inverse);
  out = torch::where(inside, out, in);
  auto ld = torch::where(inside, log_slope, torch::zeros_like(log_slope)).sum(site_dims(d));
  return {out, ld};
}

std::pair<torch::Tensor, torch::Tensor> SplineCoupling::forward(const torch::Tensor& x) { return apply(x, false); }
std::pair<torch::Tensor, torch::Tensor> SplineCoupling::inverse(const torch::Tensor& y) { return apply(y, true); }

// ---------------------------------------------------------------------------------------------------------------
FourierScale::FourierScale(int dim) : dim_(dim) { nodes_ = register_parameter("nodes", torch::zeros({kNodes})); }

torch::Tensor FourierScale::log_scale(const std::vector<std::int64_t>& extents) const {
  // |p^| on the grid (float64, then interpolation weights; only the node values carry gradients).
  auto opt = torch::TensorOptions().dtype(torch::kFloat64);
  auto phat2 = torch::zeros(extents, opt);
  const int d = static_cast<int>(extents.size());
  for (int mu = 0; mu < d; ++mu) {
    std::vector<std::int64_t> shape(d, 1);
    shape[mu] = extents[mu];
    auto k = torch::arange(extents[mu], opt) * (2 * M_PI / static_cast<double>(extents[mu]));
    phat2 = phat2 + (4 * torch::sin(0.5 * k).square()).reshape(shape);
  }
  auto u = (torch::sqrt(phat2) / (2 * std::sqrt(static_cast<double>(d))) * (kNodes - 1)).clamp(0, kNodes - 1);
  auto i0 = u.floor().clamp_max(kNodes - 2).to(torch::kLong);
  // The grid is built on the CPU; the weights and indices go to the nodes' device (CUDA runs too).
  auto f = (u - i0.to(torch::kFloat64)).to(nodes_.device(), nodes_.scalar_type());
  auto flat = i0.flatten().to(nodes_.device());
  auto a0 = nodes_.index_select(0, flat).reshape(extents), a1 = nodes_.index_select(0, flat + 1).reshape(extents);
  return a0 * (1 - f) + a1 * f;
}

std::pair<torch::Tensor, torch::Tensor> FourierScale::apply(const torch::Tensor& x, double sign) {
  std::vector<std::int64_t> extents(x.sizes().begin() + 1, x.sizes().end()), dims;
  for (int mu = 1; mu <= dim_; ++mu) dims.push_back(mu);
  auto a = log_scale(extents).to(x.device());
  // The real FFT keeps the last dimension's momenta 0..L/2; a(p) = a(-p), so the product is a real circulant.
  auto half = a.narrow(-1, 0, extents.back() / 2 + 1);
  auto y = torch::fft::irfftn(torch::fft::rfftn(x, c10::nullopt, dims) * torch::exp(sign * half), extents, dims);
  auto ld = (sign * a.to(torch::kFloat64).sum()).expand({x.size(0)});
  return {y.to(x.scalar_type()), ld};
}

std::pair<torch::Tensor, torch::Tensor> FourierScale::forward(const torch::Tensor& x) { return apply(x, 1.0); }
std::pair<torch::Tensor, torch::Tensor> FourierScale::inverse(const torch::Tensor& y) { return apply(y, -1.0); }

// ---------------------------------------------------------------------------------------------------------------
FlowModelImpl::FlowModelImpl(const FlowParams& params) : dtype_(torch_dtype(params.dtype)) {}

void FlowModelImpl::add_layer(std::shared_ptr<CouplingLayer> layer) {
  layers_.push_back(register_module("layer" + std::to_string(layers_.size()), std::move(layer)));
}

void FlowModelImpl::to_device(torch::Device dev) {
  device_ = dev;
  this->to(dev);
  for (auto& b : blocks_) b->device_ = dev;
}

void FlowModelImpl::add_block(std::shared_ptr<FlowModelImpl> block, std::int64_t step) {
  blocks_.push_back(register_module("block" + std::to_string(blocks_.size()), std::move(block)));
  block_steps_.push_back(step);
}

ScalarFlowImpl::ScalarFlowImpl(const LatticeParams& lattice, const FlowParams& params)
    : FlowModelImpl(params), extents_(lattice.extents) {
  const int d = lattice.dim();
  if (params.prior == Prior::fourier) add_layer(std::make_shared<FourierScale>(d));
  for (int i = params.first_layer; i < params.first_layer + params.layers; ++i) {
    auto mask = checkerboard(extents_, i % 2, torch::TensorOptions().dtype(dtype_));
    if (params.coupling == Coupling::spline)
      add_layer(std::make_shared<SplineCoupling>(mask, params, d));
    else
      add_layer(std::make_shared<AffineCoupling>(mask, params, d));
  }
  this->to(dtype_);
}

torch::Tensor ScalarFlowImpl::prior_log_prob(const torch::Tensor& z) const {
  auto zd = z.to(torch::kFloat64);
  const double V = static_cast<double>(zd[0].numel());
  return -0.5 * (zd * zd).sum(site_dims(zd.dim() - 1)) - 0.5 * V * std::log(2 * M_PI);
}

torch::Tensor standard_normal(const std::vector<std::int64_t>& shape, std::uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto opt = torch::TensorOptions().dtype(torch::kFloat64);
  std::int64_t n = 1;
  for (auto e : shape) n *= e;
  // LibTorch draws fewer than 16 numbers one by one (a different algorithm): leave those to it.
  if (n < 16) return torch::randn(shape, gen, opt);
  // LibTorch's CPU normal_ on 16 or more contiguous numbers: uniform u in [0, 1) for every element in order, then
  // Box-Muller on blocks of 16, (u_j, u_{j+8}) -> r cos(theta) at j and r sin(theta) at j + 8, r = sqrt(-2 log(1 -
  // u_j)), theta = 2 pi u_{j+8}; when n is not a multiple of 16 the last 16 numbers are made again from 16 further
  // uniforms. The uniform draws of torch::rand are the same numbers (the same 53-bit conversion).
  const std::int64_t tail = n % 16 ? 16 : 0;
  auto u = torch::rand({n + tail}, gen, opt);
  auto z = torch::empty({n}, opt);
  const double* ud = u.data_ptr<double>();
  double* zd = z.data_ptr<double>();
  auto box_muller = [](const double* in, double* out) {
    for (int j = 0; j < 8; ++j) {
      const double radius = std::sqrt(-2 * std::log(1 - in[j]));
      const double theta = 2.0 * M_PI * in[j + 8];
      out[j] = radius * std::cos(theta);
      out[j + 8] = radius * std::sin(theta);
    }
  };
  at::parallel_for(0, n / 16, 256, [&](std::int64_t b0, std::int64_t b1) {
    for (std::int64_t b = b0; b < b1; ++b) box_muller(ud + 16 * b, zd + 16 * b);
  });
  if (tail) box_muller(ud + n, zd + n - 16);
  return z.view(shape);
}

torch::Tensor ScalarFlowImpl::draw_prior(std::int64_t batch, std::uint64_t stream_seed) const {
  std::vector<std::int64_t> shape{batch};
  shape.insert(shape.end(), extents_.begin(), extents_.end());
  return standard_normal(shape, stream_seed).to(device_, dtype_);
}

FlowModel make_scalar_flow(const LatticeParams& lattice, const FlowParams& params) {
  return FlowModel(std::shared_ptr<FlowModelImpl>(std::make_shared<ScalarFlowImpl>(lattice, params)));
}

FlowModel make_flow(const Config& cfg) {
  if (cfg.ne.steps > 0) {
    FlowModel model = make_flow(ne_stage(cfg, 0));
    for (std::int64_t j = 0; j < cfg.ne.blocks; ++j) {
      // A block maps fields at the coupling of its step; it has no prior of its own (the theory's default is
      // built and never used), and works in float64 on the updates' float64 fields, so its map is exactly the
      // one whose log|det| the weights carry.
      Config b = ne_stage(cfg, ne_block_step(cfg, j));
      b.flow.layers = cfg.ne.block_layers;
      b.flow.prior = theory_info(cfg.theory).default_prior;
      b.flow.dtype = NetDtype::float64;
      b.flow.first_layer = static_cast<int>(j) * cfg.ne.block_layers;
      model->add_block(make_flow(b).ptr(), ne_block_step(cfg, j));
    }
    return model;
  }
  // In d = 3, 4 gauge flows start from the Haar prior (the plaquette priors are 2D).
  const auto prior = cfg.flow.prior;
  if (theory_info(cfg.theory).gauge && cfg.lattice.dim() != 2 && prior != Prior::haar && prior != Prior::automatic)
    throw ConfigError("flow.prior = " + choice_name(prior) +
                      ": the plaquette priors are 2-dimensional (lattice.extents "
                      "has " +
                      std::to_string(cfg.lattice.dim()) + " entries); use haar");
  switch (cfg.theory) {
    case TheoryId::sun:
      return FlowModel(std::shared_ptr<FlowModelImpl>(
          std::make_shared<SUNFlowImpl>(cfg.lattice, cfg.sun.n, cfg.flow, cfg.sun.beta)));
    case TheoryId::u1:
      return FlowModel(
          std::shared_ptr<FlowModelImpl>(std::make_shared<U1FlowImpl>(cfg.lattice, cfg.flow, cfg.u1.beta)));
    case TheoryId::phi4: break;
  }
  return make_scalar_flow(cfg.lattice, cfg.flow);
}

// Runs the layers (in reverse order for inverse) on x, adding their log|dets| to log_det. Layers with an inference
// kernel work in place on one copy of x, so that a batch is not copied once per layer; x itself is not modified.
void FlowModelImpl::run_layers(torch::Tensor& x, torch::Tensor& log_det, bool inverse) {
  bool owned = false;  // x is a contiguous copy of our own (not the caller's tensor, not a layer's input)
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    auto& layer = *layers_[inverse ? layers_.size() - 1 - i : i];
    if (layer.runs_in_place(x)) {
      if (!owned) x = x.clone(at::MemoryFormat::Contiguous);
      owned = true;
      layer.apply_in_place(x, log_det, inverse);
      continue;
    }
    auto [y, ld] = inverse ? layer.inverse(x) : layer.forward(x);
    x = y;
    owned = false;  // a layer's output may alias its input
    log_det = log_det + ld.to(torch::kFloat64);
  }
}

std::pair<torch::Tensor, torch::Tensor> FlowModelImpl::forward(const torch::Tensor& z_in) {
  auto x = z_in.to(device_, dtype_);
  auto log_q = prior_log_prob(x);
  auto log_det = torch::zeros_like(log_q);
  run_layers(x, log_det, false);
  return {finish(x), log_q - log_det};
}

std::pair<torch::Tensor, torch::Tensor> FlowModelImpl::sample(std::int64_t batch, std::uint64_t stream_seed) {
  return forward(draw_prior(batch, stream_seed));
}

std::pair<torch::Tensor, torch::Tensor> FlowModelImpl::log_prob(const torch::Tensor& x_in) {
  // finish() maps x to its canonical representative (U(1): angles into [0, 2 pi)), on which q is defined; fields
  // from elsewhere (HMC's unwrapped angles in a mixed chain) need it, the flow's own samples are unchanged.
  auto z = finish(x_in).to(device_, dtype_);
  auto log_det = torch::zeros({z.size(0)}, z.options().dtype(torch::kFloat64));
  run_layers(z, log_det, true);
  return {prior_log_prob(z) + log_det, z};
}

std::pair<torch::Tensor, torch::Tensor> FlowModelImpl::transform(const torch::Tensor& x_in) {
  auto x = finish(x_in).to(device_, dtype_);
  auto log_det = torch::zeros({x.size(0)}, x.options().dtype(torch::kFloat64));
  run_layers(x, log_det, false);
  return {finish(x), log_det};
}

std::string FlowModelImpl::weights_hash() {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (const auto& p : parameters()) {
    auto c = p.detach().to(torch::kCPU).contiguous();
    const auto* bytes = static_cast<const unsigned char*>(c.data_ptr());
    for (std::size_t i = 0; i < c.nbytes(); ++i) h = (h ^ bytes[i]) * 0x100000001b3ULL;
  }
  std::ostringstream os;
  os << std::hex << std::setw(16) << std::setfill('0') << h;
  return os.str();
}

}  // namespace latflow
