// SPDX-License-Identifier: MIT
#include "latflow/flows/gauge.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "latflow/core/error.hpp"
#include "latflow/flows/gauge_nodes.hpp"
#include "latflow/theories/sun.hpp"
#include "latflow/theories/u1.hpp"

namespace latflow {
namespace {

constexpr double kTwoPi = 2 * M_PI;
// log alpha of the NCP components is bounded smoothly to +-kMaxLogAlpha (alpha in [0.0025, 403]), so that alpha^2
// stays finite in float32 whatever the net outputs.
constexpr double kMaxLogAlpha = 6.0;
constexpr double kMinBin = 1e-3, kMinDeriv = 1e-3;

at::Tensor shift(const at::Tensor& t, std::int64_t by, std::int64_t dim) { return torch::roll(t, {-by}, {dim}); }
// Angles reduced to [-pi, pi).
at::Tensor centred(const at::Tensor& a) { return torch::remainder(a + M_PI, kTwoPi) - M_PI; }

// Mask [L0, ..., L_{d-1}] of the sites whose coordinate along `axis`, minus `offset`, is one of `residues` mod 4.
torch::Tensor stripes(const std::vector<std::int64_t>& ext, int axis, int offset, std::vector<int> residues) {
  auto c = torch::arange(ext[axis], torch::kInt64);
  auto r = torch::remainder(c - offset, 4);
  auto m = torch::zeros_like(c, torch::kBool);
  for (int v : residues) m = m | (r == v);
  std::vector<std::int64_t> shape(ext.size(), 1);
  shape[axis] = ext[axis];
  return m.view(shape).expand(ext).to(torch::kFloat64).contiguous();
}

// d > 2: one frozen mask per plane (a < b), [d(d-1)/2, L0, ...], for the links of direction mu at x_nu = offset
// mod 4. Plane (mu, nu): the plaquette at y holds the mu-links at y and y + e_nu; it is active at y_nu = offset,
// passive at offset - 1, frozen at the other two residues. A plane (mu, rho) holds the mu-links at y and
// y + e_rho, both updated when y_nu = offset: frozen elsewhere. Planes without mu are never touched.
torch::Tensor frozen_planes(const std::vector<std::int64_t>& ext, int mu, int nu, int offset) {
  const int d = static_cast<int>(ext.size());
  std::vector<torch::Tensor> frozen;
  for (int a = 0; a < d; ++a)
    for (int b = a + 1; b < d; ++b) {
      if ((a == mu && b == nu) || (a == nu && b == mu))
        frozen.push_back(stripes(ext, nu, offset, {1, 2}));
      else if (a == mu || b == mu)
        frozen.push_back(stripes(ext, nu, offset, {1, 2, 3}));
      else
        frozen.push_back(torch::ones(ext, torch::kFloat64));
    }
  return torch::stack(frozen);
}

// All (mu, nu) with mu != nu in lexicographic order: (0, 1), (1, 0) in 2D.
std::vector<std::pair<int, int>> ordered_pairs(int d) {
  std::vector<std::pair<int, int>> pairs;
  for (int mu = 0; mu < d; ++mu)
    for (int nu = 0; nu < d; ++nu)
      if (nu != mu) pairs.emplace_back(mu, nu);
  return pairs;
}

int kernel_channels(const FlowParams& p) {
  return p.coupling == Coupling::spline ? 3 * p.spline_bins + 1 : 2 * p.ncp_components + 1;
}

void require_period_four(const std::vector<std::int64_t>& ext) {
  for (auto l : ext)
    if (l % 4)
      throw ConfigError("lattice.extents: gauge-equivariant masks have period 4; extents must be multiples of 4");
}

// Monotone rational-quadratic spline parameters (K widths, K heights, K + 1 knot slopes) from raw net outputs
// [..., 3K + 1] on [lo, hi]: zero input gives equal bins and unit slopes.
struct SplineKnots {
  torch::Tensor xk, yk, dk;
  SplineKnots(const torch::Tensor& par, int K, double lo, double hi) {
    const double kDerivShift = std::log(std::expm1(1.0 - kMinDeriv));
    auto widths = kMinBin + (1 - K * kMinBin) * torch::softmax(par.narrow(-1, 0, K), -1);
    auto heights = kMinBin + (1 - K * kMinBin) * torch::softmax(par.narrow(-1, K, K), -1);
    xk = spline_knots(widths, lo, hi);
    yk = spline_knots(heights, lo, hi);
    dk = kMinDeriv + torch::softplus(par.narrow(-1, 2 * K, K + 1) + kDerivShift);
  }
};

// Whether a layer's kernels (kernels/gauge_kernels.hpp) can run for x; without autograd, its inference kernel.
bool kernels_for(const torch::Tensor& x, const ConvNet& net) {
  return net->policy().fused && x.device().is_cpu() &&
         (x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kFloat64);
}
bool inference_kernel_for(const torch::Tensor& x, const ConvNet& net) {
  return !torch::GradMode::is_enabled() && kernels_for(x, net);
}
// The flat site indices `sites` (int32, CPU) as int64 on `device`, kept in `cache` (a normal tensor even when
// first made while sampling, since later training passes may hold it).
const torch::Tensor& index_on(const torch::Tensor& sites, torch::Tensor& cache, const torch::Device& device) {
  if (!cache.defined() || cache.device() != device) {
    c10::InferenceMode normal_tensor(false);
    cache = sites.to(device, torch::kInt64);
  }
  return cache;
}

// (y, log|det|) of a layer through its in-place kernel, on a copy of x.
std::pair<torch::Tensor, torch::Tensor> copy_in_place(CouplingLayer& layer, const torch::Tensor& x, bool inverse) {
  auto y = x.clone(at::MemoryFormat::Contiguous);
  auto log_det = torch::zeros({x.size(0)}, x.options().dtype(torch::kFloat64));
  layer.apply_in_place(y, log_det, inverse);
  return {y, log_det};
}
}  // namespace

GaugeCoupling::GaugeCoupling(int mu, int nu, int offset, const std::vector<std::int64_t>& ext, const FlowParams& p)
    : mu_(mu),
      nu_(nu),
      dim_(static_cast<int>(ext.size())),
      spline_(p.coupling == Coupling::spline),
      components_(p.coupling == Coupling::spline ? p.spline_bins : p.ncp_components),
      loops_(p.loops) {
  require_period_four(ext);
  if (dim_ != 2) {
    if (loops_) throw ConfigError("flow.loops: the 2x1 loop features are 2D only");
    active_ = register_buffer("active", stripes(ext, nu, offset, {0}));
    frozen_planes_ = register_buffer("frozen_planes", frozen_planes(ext, mu, nu, offset));
    net_ = register_module("net", ConvNet(dim_, 2 * static_cast<int>(frozen_planes_.size(0)), p.hidden,
                                          kernel_channels(p), p.kernel, p.activation));
    return;
  }
  // 2D: the stripes run along mu, stacked along nu = 1 - mu.
  auto active = stripes(ext, nu, offset, {0});
  auto frozen = stripes(ext, nu, offset, {1, 2});
  active_ = register_buffer("active", active);
  frozen_ = register_buffer("frozen", frozen);
  // A 2x1 loop is frozen when both of its plaquettes are.
  frozen_rect0_ = register_buffer("frozen_rect0", frozen * shift(frozen, 1, 0));
  frozen_rect1_ = register_buffer("frozen_rect1", frozen * shift(frozen, 1, 1));
  net_ = register_module("net", ConvNet(2, loops_ ? 6 : 2, p.hidden, kernel_channels(p), p.kernel, p.activation));
}

torch::Tensor GaugeCoupling::parameters_of(const torch::Tensor& plaq) {
  std::vector<torch::Tensor> ctx{torch::cos(plaq) * frozen_, torch::sin(plaq) * frozen_};
  if (loops_) {
    auto r0 = plaq + shift(plaq, 1, 1), r1 = plaq + shift(plaq, 1, 2);
    ctx.insert(ctx.end(), {torch::cos(r0) * frozen_rect0_, torch::sin(r0) * frozen_rect0_,
                           torch::cos(r1) * frozen_rect1_, torch::sin(r1) * frozen_rect1_});
  }
  return net_->forward(torch::stack(ctx, 1)).permute({0, 2, 3, 1});
}

std::pair<torch::Tensor, torch::Tensor> GaugeCoupling::kernel(const torch::Tensor& plaq, const torch::Tensor& par,
                                                              bool inverse) {
  const int K = components_;
  if (spline_) {
    const double kDerivShift = std::log(std::expm1(1.0 - kMinDeriv));  // zero input -> unit slope
    auto widths = kMinBin + (1 - K * kMinBin) * torch::softmax(par.narrow(-1, 0, K), -1);
    auto heights = kMinBin + (1 - K * kMinBin) * torch::softmax(par.narrow(-1, K, K), -1);
    auto d = kMinDeriv + torch::softplus(par.narrow(-1, 2 * K, K) + kDerivShift);
    auto dk = torch::cat({d, d.narrow(-1, 0, 1)}, -1);  // equal slopes at 0 and 2 pi: smooth on the circle
    auto t = par.select(-1, 3 * K);
    auto xk = spline_knots(widths, 0, kTwoPi), yk = spline_knots(heights, 0, kTwoPi);
    auto v = torch::clamp(torch::remainder(inverse ? plaq - t : plaq, kTwoPi), 0, kTwoPi);
    auto [out, log_slope] = rational_quadratic(v, xk, yk, dk, inverse);
    return {inverse ? out : out + t, log_slope};
  }
  auto log_alpha = kMaxLogAlpha * torch::tanh(par.narrow(-1, 0, K) / kMaxLogAlpha);
  auto alpha = torch::exp(log_alpha);
  auto rho = torch::softmax(par.narrow(-1, K, K), -1);
  auto t = par.select(-1, 2 * K);
  // theta in [-pi, pi): each component maps (-pi, pi) onto itself monotonically, fixing 0 and the end points.
  auto h = [&](const torch::Tensor& theta) {
    auto half = (theta / 2).unsqueeze(-1);
    auto c = torch::cos(half), s = torch::sin(half);
    return (rho * 2 * torch::atan2(alpha * s, c)).sum(-1);
  };
  auto slope = [&](const torch::Tensor& theta) {
    auto half = (theta / 2).unsqueeze(-1);
    auto c = torch::cos(half), s = torch::sin(half);
    return (rho * alpha / (c * c + alpha * alpha * s * s)).sum(-1);
  };
  if (!inverse) {
    auto theta = centred(plaq);
    return {h(theta) + t, torch::log(slope(theta))};
  }
  // Bisection on [-pi, pi] (h is increasing with h(-pi) = -pi, h(pi) = pi): 64 halvings reach the rounding.
  auto target = centred(plaq - t);
  torch::Tensor lo, hi;
  {
    torch::NoGradGuard no_grad;
    lo = torch::full_like(target, -M_PI);
    hi = torch::full_like(target, M_PI);
    auto tgt = target.detach();
    for (int i = 0; i < 64; ++i) {
      auto mid = 0.5 * (lo + hi);
      auto below = h(mid) < tgt;
      lo = torch::where(below, mid, lo);
      hi = torch::where(below, hi, mid);
    }
  }
  // One Newton step from the root: the value is unchanged to rounding, and theta becomes differentiable in the
  // target and the parameters with the implicit-function derivative d theta = (d target - d h) / h' (the
  // path-gradient training differentiates this inverse).
  auto root = 0.5 * (lo + hi);
  auto theta = root + (target - h(root)) / slope(root);
  return {theta, -torch::log(slope(theta))};
}

std::pair<torch::Tensor, torch::Tensor> GaugeCoupling::apply(const torch::Tensor& x, bool inverse) {
  if (runs_in_place(x)) return copy_in_place(*this, x, inverse);
  if (dim_ != 2) {
    // Context: cos and sin of the frozen plaquettes of every plane; the same before and after the update.
    std::vector<torch::Tensor> ctx;
    torch::Tensor plaq;
    int k = 0;
    for (int a = 0; a < dim_; ++a)
      for (int b = a + 1; b < dim_; ++b, ++k) {
        auto P = U1::plaquette(x, a, b);
        if ((a == mu_ && b == nu_) || (a == nu_ && b == mu_)) plaq = P;
        ctx.push_back(torch::cos(P) * frozen_planes_[k]);
        ctx.push_back(torch::sin(P) * frozen_planes_[k]);
      }
    // The kernel, the net's last conv and the update at the active sites only ([B, Va, ...]).
    if (!active_sites_.defined()) active_sites_ = site_indices(active_);
    const auto& idx = index_on(active_sites_, active_index_, x.device());
    auto in = torch::stack(ctx, 1);
    auto par = kernels_for(x, net_) ? net_->forward_at(in, active_sites_)
                                    : net_->forward(in).flatten(2).index_select(2, idx).movedim(1, -1);
    auto pa = plaq.flatten(1).index_select(1, idx);
    auto [moved, log_slope] = kernel(pa, par, inverse);
    // theta_mu(x) enters the plane's plaquette P_ab(x) (a < b) with sign +1 if mu = a, -1 if mu = b.
    auto dp = centred(moved - pa) * (mu_ < nu_ ? 1.0 : -1.0);
    auto x_mu = x.select(1, mu_);
    auto shifted = x_mu.flatten(1).index_add(1, idx, dp.to(x.scalar_type())).view_as(x_mu);
    std::vector<torch::Tensor> links;
    for (int d = 0; d < dim_; ++d) links.push_back(d == mu_ ? shifted : x.select(1, d));
    return {torch::remainder(torch::stack(links, 1), kTwoPi), log_slope.sum(-1)};
  }
  if (kernels_for(x, net_)) return u1_coupling_node(x, net_, kernel_geometry(), inverse);  // training
  auto plaq = U1::plaquettes(x);
  auto par = parameters_of(plaq);  // frozen plaquettes are the same before and after: same parameters
  auto [moved, log_slope] = kernel(plaq, par, inverse);
  // The active link enters its active plaquette with sign +1 (mu = 0: theta_0(x) in P(x)) or -1 (mu = 1:
  // theta_1(x) in P(x)); a change by a multiple of 2 pi is no change, so the shift is reduced to [-pi, pi).
  const double sign = mu_ == 0 ? 1.0 : -1.0;
  auto dp = centred(moved - plaq) * active_;
  auto zero = torch::zeros_like(dp);
  auto dlink = torch::stack({mu_ == 0 ? sign * dp : zero, mu_ == 1 ? sign * dp : zero}, 1);
  auto y = torch::remainder(x + dlink, kTwoPi);
  return {y, (log_slope * active_).sum({1, 2})};
}

std::pair<torch::Tensor, torch::Tensor> GaugeCoupling::forward(const torch::Tensor& x) { return apply(x, false); }
std::pair<torch::Tensor, torch::Tensor> GaugeCoupling::inverse(const torch::Tensor& y) { return apply(y, true); }

// ---------------------------------------------------------------------------------------------------------------
U1FlowImpl::U1FlowImpl(const LatticeParams& lattice, const FlowParams& params, double beta)
    : FlowModelImpl(params), extents_(lattice.extents), beta_(beta) {
  if (params.prior == Prior::plaquette || params.prior == Prior::exact)
    plaquette_prior_ = std::make_shared<const U1PlaquettePrior>(
        extents_, beta,
        params.prior == Prior::exact ? U1PlaquettePrior::Kind::exact : U1PlaquettePrior::Kind::independent);
  else if (params.prior != Prior::automatic && params.prior != Prior::haar)
    throw ConfigError("flow.prior = " + choice_name(params.prior) + ": U(1) flows take haar, plaquette or exact");
  // Layer i updates direction mu through the (mu, nu) plane, (mu, nu) = pairs[i % |pairs|], on the stripe offset
  // (i / |pairs|) % 4. 2D: pairs (0, 1), (1, 0), eight layers visit every link once; d dimensions: d (d - 1)
  // ordered pairs, 4 d (d - 1) layers visit every link d - 1 times (once per plane).
  const auto pairs = ordered_pairs(static_cast<int>(extents_.size()));
  const int np = static_cast<int>(pairs.size());
  for (int i = params.first_layer; i < params.first_layer + params.layers; ++i)
    add_layer(
        std::make_shared<GaugeCoupling>(pairs[i % np].first, pairs[i % np].second, (i / np) % 4, extents_, params));
  this->to(dtype_);
}

torch::Tensor U1FlowImpl::prior_log_prob(const torch::Tensor& z) const {
  const auto f64 = z.options().dtype(torch::kFloat64);
  if (!plaquette_prior_) {
    const double links = static_cast<double>(z[0].numel());
    return torch::full({z.size(0)}, -links * std::log(kTwoPi), f64);
  }
  auto c = torch::cos(U1::plaquettes(z.to(torch::kFloat64)));  // [B, L0, L1]
  auto sum = c.sum({1, 2});
  if (plaquette_prior_->kind() == U1PlaquettePrior::Kind::independent)
    sum = sum - c.select(1, extents_[0] - 1).select(1, extents_[1] - 1);
  return beta_ * sum + plaquette_prior_->log_normalisation();
}

torch::Tensor U1FlowImpl::draw_prior(std::int64_t batch, std::uint64_t stream_seed) const {
  if (!plaquette_prior_) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(stream_seed);
    std::vector<std::int64_t> shape{batch, static_cast<std::int64_t>(extents_.size())};
    shape.insert(shape.end(), extents_.begin(), extents_.end());
    auto z = torch::rand(shape, gen, torch::TensorOptions().dtype(torch::kFloat64));
    return (z * kTwoPi).to(device_, dtype_);
  }
  auto z = torch::empty({batch, 2, extents_[0], extents_[1]}, torch::TensorOptions().dtype(torch::kFloat64));
  const std::int64_t per = z[0].numel();
  double* data = z.data_ptr<double>();
  SplitMix64 rng(stream_seed);
  for (std::int64_t b = 0; b < batch; ++b) plaquette_prior_->draw(rng, data + b * per);
  return z.to(device_, dtype_);
}

torch::Tensor U1FlowImpl::finish(const torch::Tensor& x) const { return torch::remainder(x, kTwoPi); }

}  // namespace latflow

namespace latflow {

// ---------------------------------------------------------------------------------------------------------------
SpectralCoupling::SpectralCoupling(int n, int mu, int nu, int offset, const std::vector<std::int64_t>& ext,
                                   const FlowParams& p)
    : n_(n), mu_(mu), nu_(nu), dim_(static_cast<int>(ext.size())), bins_(p.spline_bins) {
  require_period_four(ext);
  active_ = register_buffer("active", stripes(ext, nu, offset, {0}));
  frozen_ =
      register_buffer("frozen", dim_ == 2 ? stripes(ext, nu, offset, {1, 2}) : frozen_planes(ext, mu, nu, offset));
  // SU(2): tr P / 2 is real (one channel per plane), one spline; SU(3): Re and Im tr P / 3, two splines.
  const int splines = n == 2 ? 1 : 2, planes = dim_ * (dim_ - 1) / 2;
  net_ = register_module("net", ConvNet(dim_, (n == 2 ? 1 : 2) * planes, p.hidden, splines * (3 * p.spline_bins + 1),
                                        p.kernel, p.activation));
}

bool GaugeCoupling::runs_in_place(const torch::Tensor& x) const { return dim_ == 2 && inference_kernel_for(x, net_); }

const U1LayerGeometry& GaugeCoupling::kernel_geometry() {
  if (masks_.empty()) {
    if (!active_sites_.defined()) active_sites_ = site_indices(active_);
    masks_ = {mask_bytes(frozen_), mask_bytes(frozen_rect0_), mask_bytes(frozen_rect1_)};
    geometry_ = U1LayerGeometry{
        active_sites_, masks_[0],  loops_ ? masks_[1] : torch::Tensor(), loops_ ? masks_[2] : torch::Tensor(), mu_,
        spline_,       components_};
  }
  return geometry_;
}

bool SpectralCoupling::runs_in_place(const torch::Tensor& x) const {
  return dim_ == 2 && inference_kernel_for(x, net_);
}

std::pair<torch::Tensor, torch::Tensor> SpectralCoupling::apply(const torch::Tensor& x, bool inverse) {
  if (runs_in_place(x)) return copy_in_place(*this, x, inverse);
  auto u = SUN::matrices(x);
  torch::Tensor P, ctx;  // the (mu, nu) plaquettes [B, L0, ..., N, N]; the context [B, channels, L0, ...]
  if (dim_ == 2) {
    P = SUN::plaquettes(u);
    auto tr = P.diagonal(0, -2, -1).sum(-1) / n_;  // gauge invariant
    ctx = n_ == 2 ? (torch::real(tr) * frozen_).unsqueeze(1)
                  : torch::stack({torch::real(tr) * frozen_, torch::imag(tr) * frozen_}, 1);
  } else {
    std::vector<torch::Tensor> channels;
    int k = 0;
    for (int a = 0; a < dim_; ++a)
      for (int b = a + 1; b < dim_; ++b, ++k) {
        auto Pab = SUN::plaquette(u, a, b);
        if ((a == mu_ && b == nu_) || (a == nu_ && b == mu_)) P = Pab;
        auto tr = Pab.diagonal(0, -2, -1).sum(-1) / n_;
        channels.push_back(torch::real(tr) * frozen_[k]);
        if (n_ != 2) channels.push_back(torch::imag(tr) * frozen_[k]);
      }
    ctx = torch::stack(channels, 1);
  }
  // Only the active sites are moved: the kernel and the net's last conv run there alone ([B, Va, ...]).
  if (!active_sites_.defined()) active_sites_ = site_indices(active_);
  const auto& idx = index_on(active_sites_, active_index_, x.device());
  auto par = kernels_for(x, net_) ? net_->forward_at(ctx, active_sites_)
                                  : net_->forward(ctx).flatten(2).index_select(2, idx).movedim(1, -1);
  auto [R, ld] = n_ == 2 ? su2_kernel(P.flatten(1, dim_).index_select(1, idx), par, inverse)
                         : su3_kernel(P.flatten(1, dim_).index_select(1, idx), par, inverse);
  // P' = R P with R a function of P (it commutes with P): U_mu <- R U_mu if mu comes first in the plaquette
  // (mu < nu), U_mu <- R^+ U_mu if it comes last (P' P^+ = R, P'^+ P = R^+), makes the new active plaquette P'.
  auto step = (mu_ < nu_ ? R : SUN::dagger(R)).to(P.scalar_type());
  auto u_mu = u.select(1, mu_);
  auto flat = u_mu.flatten(1, dim_);  // [B, V, N, N]
  auto moved = flat.index_copy(1, idx, torch::matmul(step, flat.index_select(1, idx)));
  std::vector<torch::Tensor> links;
  for (int d = 0; d < dim_; ++d) links.push_back(d == mu_ ? moved.view_as(u_mu) : u.select(1, d));
  return {SUN::storage(torch::stack(links, 1)).to(x.scalar_type()), ld.sum(-1)};
}

std::pair<torch::Tensor, torch::Tensor> SpectralCoupling::su2_kernel(const torch::Tensor& P, const torch::Tensor& par,
                                                                     bool inverse) {
  auto c = torch::real(P.diagonal(0, -2, -1).sum(-1)) / 2;  // cos theta
  // P = cos theta I + i sin theta n.sigma: sin theta from the antihermitian part (accurate near 0 and pi, where
  // acos is not), kept off 0 (a set of Haar measure zero) so that 1 / sin theta and the gradients stay finite.
  const double eps = P.scalar_type() == torch::kComplexDouble ? 1e-150 : 1e-30;
  auto a = (P - SUN::dagger(P)) / 2;
  auto s = torch::sqrt(
      ((torch::real(a) * torch::real(a) + torch::imag(a) * torch::imag(a)).sum({-2, -1}) / 2).clamp_min(eps));
  auto theta = torch::atan2(s, c);
  const SplineKnots k(par, bins_, 0, M_PI);
  auto [moved, log_slope] = rational_quadratic(theta, k.xk, k.yk, k.dk, inverse);
  // R = exp(i (h - theta) n.sigma) = cos(h - theta) I + (sin(h - theta) / sin theta)(P - cos theta I).
  auto d = moved - theta;
  auto eye = torch::eye(2, torch::TensorOptions().dtype(P.scalar_type()).device(P.device()));
  auto col = [](const torch::Tensor& t) { return t.unsqueeze(-1).unsqueeze(-1); };
  auto R = col(torch::cos(d)) * eye + col(torch::sin(d) / s) * (P - col(c) * eye);
  return {R, log_slope + 2 * torch::log(torch::sin(moved)) - 2 * torch::log(s)};
}

namespace {
// log |Delta(e^{i theta})|^2 = sum_{i<j} log(4 sin^2((theta_i - theta_j)/2)) over the last axis (size 3).
torch::Tensor log_vandermonde(const torch::Tensor& th) {
  auto out = torch::zeros_like(th.select(-1, 0));
  for (int i = 0; i < 3; ++i)
    for (int j = i + 1; j < 3; ++j)
      out = out + torch::log(4 * torch::sin((th.select(-1, i) - th.select(-1, j)) / 2).pow(2));
  return out;
}

// For lambda = e^{i theta} a root of the characteristic polynomial lambda^3 - t lambda^2 + conj(t) lambda - 1 of
// an SU(3) matrix with trace t: e^{-3 i theta / 2} p(e^{i theta}) = 2 i g(theta) with the real function
// g = sin(3 theta / 2) - Im(t e^{i theta / 2}). Returns g / g', the Newton step (0 where g' vanishes).
torch::Tensor newton_step(const torch::Tensor& theta, const torch::Tensor& t) {
  auto half = torch::polar(torch::ones_like(theta), theta / 2) * t;
  auto g = torch::sin(1.5 * theta) - torch::imag(half);
  auto gp = 1.5 * torch::cos(1.5 * theta) - 0.5 * torch::real(half);
  auto ok = gp.abs() > 1e-12;
  return torch::where(ok, g / torch::where(ok, gp, torch::ones_like(gp)), torch::zeros_like(g));
}

// num / den, and 0 where |den| is below rounding (coincident eigenvalues; see su3_kernel).
torch::Tensor divided(const torch::Tensor& num, const torch::Tensor& den) {
  auto ok = den.abs() > 1e-13;
  return torch::where(ok, num / torch::where(ok, den, torch::ones_like(den)), torch::zeros_like(num));
}
}  // namespace

torch::Tensor su3_alcove_phases(const torch::Tensor& P) {
  auto t = P.to(torch::kComplexDouble).diagonal(0, -2, -1).sum(-1);
  torch::Tensor phi;
  {
    torch::NoGradGuard ng;
    auto tt = t.detach();
    // lambda = mu + t / 3 turns p into the depressed cubic mu^3 + a mu + b = 0; Cardano with the larger of the two
    // cube-root arguments (no cancellation), C = 0 only for the triple root (then a = b = 0, mu = 0).
    auto a = tt.conj() - tt * tt / 3;
    auto b = tt * tt.conj() / 3 - 2.0 / 27 * tt * tt * tt - 1;
    auto disc = torch::sqrt(b * b / 4 + a * a * a / 27);
    auto c_plus = -b / 2 + disc, c_minus = -b / 2 - disc;
    auto C3 = torch::where(c_plus.abs() >= c_minus.abs(), c_plus, c_minus);
    auto nonzero = C3.abs() > 0;
    auto C = torch::pow(torch::where(nonzero, C3, torch::ones_like(C3)), 1.0 / 3);
    std::vector<torch::Tensor> roots;
    for (int k = 0; k < 3; ++k) {
      auto Ck = C * c10::complex<double>(std::cos(2 * M_PI * k / 3), std::sin(2 * M_PI * k / 3));
      auto mu = torch::where(nonzero, Ck - a / (3 * Ck), torch::zeros_like(Ck));
      auto th = torch::angle(mu + tt / 3);
      // Newton polishes the phases to rounding (Cardano loses digits where roots nearly coincide; a root of
      // multiplicity m is determined by t only to ~rounding^(1/m), as for any method that goes through t).
      for (int it = 0; it < 3; ++it) th = th - newton_step(th, tt).clamp(-1e-3, 1e-3);
      roots.push_back(th);
    }
    phi = torch::remainder(torch::stack(roots, -1) + M_PI, 2 * M_PI) - M_PI;  // [-pi, pi)
    // Sort descending, then move the branch so that the phases sum to 0 with theta_1 - theta_3 <= 2 pi.
    phi = std::get<0>(torch::sort(phi, -1, /*descending=*/true));
    auto m = torch::round(phi.sum(-1) / (2 * M_PI));  // -1, 0 or 1
    auto opts = torch::TensorOptions().dtype(torch::kInt64);
    auto rot_up = torch::tensor({1, 2, 0}, opts), rot_down = torch::tensor({2, 0, 1}, opts),
         same = torch::tensor({0, 1, 2}, opts);
    auto mm = m.unsqueeze(-1);
    auto cyc = torch::where(mm > 0.5, rot_up, torch::where(mm < -0.5, rot_down, same));
    phi = phi.gather(-1, cyc);
    auto zero = torch::zeros_like(m), turn = torch::full_like(m, 2 * M_PI);
    phi = phi + torch::stack({torch::where(m < -0.5, turn, zero), zero, torch::where(m > 0.5, -turn, zero)}, -1);
    phi = phi - phi.mean(-1, true);  // det = 1 exactly (the sum is off by rounding, more at multiple roots)
  }
  // The derivative: a Newton step from phi, differentiable in t, is -(dg/dt) / g' at a root (g = 0), the implicit
  // d theta / dt; only its derivative is added, so the values stay phi.
  auto step = newton_step(phi, t.unsqueeze(-1));
  return phi - (step - step.detach());
}

std::pair<torch::Tensor, torch::Tensor> SpectralCoupling::su3_kernel(const torch::Tensor& P, const torch::Tensor& par,
                                                                     bool inverse) {
  const int np = 3 * bins_ + 1;
  auto th = su3_alcove_phases(P);  // float64
  // Barycentric coordinates of the alcove and the stick-breaking map.
  const double lo = 1e-12;
  auto w1 = ((th.select(-1, 0) - th.select(-1, 1)) / (2 * M_PI)).clamp(lo, 1 - lo);
  auto w2 = ((th.select(-1, 1) - th.select(-1, 2)) / (2 * M_PI)).clamp(lo, 1 - lo);
  auto v = (w2 / (1 - w1)).clamp(lo, 1 - lo);
  const SplineKnots k1(par.narrow(-1, 0, np), bins_, 0, 1), k2(par.narrow(-1, np, np), bins_, 0, 1);
  auto [w1n, ls1] = rational_quadratic(w1, k1.xk, k1.yk, k1.dk, inverse);
  auto [vn, ls2] = rational_quadratic(v, k2.xk, k2.yk, k2.dk, inverse);
  auto w2n = vn * (1 - w1n);
  auto a = 2 * M_PI * w1n, b = 2 * M_PI * w2n;
  auto t2 = (b - a) / 3;
  auto thn = torch::stack({t2 + a, t2, t2 - b}, -1);
  // R = r(P) for the polynomial r with r(lambda_k) = rho_k = e^{i (theta'_k - theta_k)} (Newton's divided
  // differences on the eigenvalues lambda_k = e^{i theta_k}); by Cayley-Hamilton degree 2 suffices, and R P = P'
  // without eigenvectors. An error in a divided difference of nearly coincident lambdas cancels on the
  // eigenvectors to rounding; exactly coincident ones (Haar measure zero) drop the term.
  auto ones = torch::ones_like(th);
  auto lam = torch::polar(ones, th), rho = torch::polar(ones, thn - th);
  auto l1 = lam.select(-1, 0), l2 = lam.select(-1, 1), l3 = lam.select(-1, 2);
  auto r1 = rho.select(-1, 0), r2 = rho.select(-1, 1), r3 = rho.select(-1, 2);
  auto d12 = divided(r2 - r1, l2 - l1), d23 = divided(r3 - r2, l3 - l2);
  auto d123 = divided(d23 - d12, l3 - l1);
  auto Pd = P.to(torch::kComplexDouble);
  auto eye = torch::eye(3, Pd.options());
  auto col = [](const torch::Tensor& z) { return z.unsqueeze(-1).unsqueeze(-1); };
  auto R =
      col(r1 - d12 * l1 + d123 * l1 * l2) * eye + col(d12 - d123 * (l1 + l2)) * Pd + col(d123) * torch::matmul(Pd, Pd);
  auto ld = ls1 + ls2 + torch::log(1 - w1n) - torch::log(1 - w1) + log_vandermonde(thn) - log_vandermonde(th);
  return {R, ld};
}

SUNFlowImpl::SUNFlowImpl(const LatticeParams& lattice, int n, const FlowParams& params, double beta)
    : FlowModelImpl(params), extents_(lattice.extents), n_(n), beta_(beta) {
  if (n != 2 && n != 3)
    throw ConfigError("sun.n = " + std::to_string(n) +
                      ": SU(N) flows are implemented for N = 2 and 3 only (latflow hmc works for any N)");
  if (params.prior == Prior::plaquette || params.prior == Prior::exact) {
    plaquette_prior_ = std::make_shared<const SUNPlaquettePrior>(
        n, extents_, beta,
        params.prior == Prior::exact ? SUNPlaquettePrior::Kind::exact : SUNPlaquettePrior::Kind::independent);
  } else if (params.prior != Prior::automatic && params.prior != Prior::haar) {
    throw ConfigError("flow.prior = " + choice_name(params.prior) + ": SU(N) flows take haar, plaquette or exact");
  }
  // The layer order of U1FlowImpl: ordered pairs (mu, nu), then the stripe offsets.
  const auto pairs = ordered_pairs(static_cast<int>(extents_.size()));
  const int np = static_cast<int>(pairs.size());
  for (int i = params.first_layer; i < params.first_layer + params.layers; ++i)
    add_layer(std::make_shared<SpectralCoupling>(n, pairs[i % np].first, pairs[i % np].second, (i / np) % 4, extents_,
                                                 params));
  this->to(dtype_);
}

torch::Tensor SUNFlowImpl::prior_log_prob(const torch::Tensor& z) const {
  if (!plaquette_prior_) return torch::zeros({z.size(0)}, z.options().dtype(torch::kFloat64));
  // (beta / N) Re tr P per plaquette, from the links in float64.
  auto plaq = SUN::plaquettes(SUN::matrices(z.to(torch::kFloat64)));
  auto re_tr = torch::real(plaq.diagonal(0, -2, -1).sum(-1)) * (beta_ / n_);  // [B, L0, L1]
  auto sum = re_tr.sum({1, 2});
  if (plaquette_prior_->kind() == SUNPlaquettePrior::Kind::independent)
    sum = sum - re_tr.select(1, extents_[0] - 1).select(1, extents_[1] - 1);
  return sum + plaquette_prior_->log_normalisation();
}

torch::Tensor SUNFlowImpl::draw_prior(std::int64_t batch, std::uint64_t stream_seed) const {
  if (!plaquette_prior_) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(stream_seed);
    std::vector<std::int64_t> shape{batch, static_cast<std::int64_t>(extents_.size())};
    shape.insert(shape.end(), extents_.begin(), extents_.end());
    return SUN::storage(SUN::haar(n_, shape, gen)).to(device_, dtype_);
  }
  auto z = torch::empty({batch, 2, extents_[0], extents_[1], n_, n_, 2}, torch::TensorOptions().dtype(torch::kFloat64));
  const std::int64_t per = z[0].numel();
  double* data = z.data_ptr<double>();
  SplitMix64 rng(stream_seed);
  for (std::int64_t b = 0; b < batch; ++b) plaquette_prior_->draw(rng, data + b * per);
  return z.to(device_, dtype_);
}

}  // namespace latflow
