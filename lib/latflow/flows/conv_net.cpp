// SPDX-License-Identifier: MIT
// The periodic conv nets of the coupling layers (ConvNetImpl): the LibTorch-ops path and the fused kernels as
// autograd nodes (the whole net, and a whole affine coupling layer), and the per-net kernel policy.
#include "latflow/flows/flow.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <cstring>
#include <iomanip>
#include <sstream>

#include "latflow/core/error.hpp"
#include "latflow/kernels/periodic_conv.hpp"

// at::parallel_for is inline: compiled without OpenMP it runs the kernels' chunks serially whatever run.threads
// says (lib/CMakeLists.txt links OpenMP).
#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#error "latflow's kernels must be compiled with OpenMP (at::parallel_for would be serial)"
#endif

namespace latflow {
namespace {

// A 4D convolution without padding (LibTorch has no Conv4d): the same weight [out, in, k, k, k, k] and bias, the
// same default initialisation and the same cross-correlation as Conv1d..3d. The fused kernels read its weights like
// theirs; this forward is the LibTorch-ops path (CUDA, and the reference the tests compare the kernels with):
// every k^4 window by unfold, then one contraction.
class Conv4dImpl : public torch::nn::Module {
 public:
  Conv4dImpl(int in, int out, int kernel) : kernel_(kernel) {
    weight_ = register_parameter("weight", torch::empty({out, in, kernel, kernel, kernel, kernel}));
    bias_ = register_parameter("bias", torch::empty({out}));
    torch::NoGradGuard no_grad;
    torch::nn::init::kaiming_uniform_(weight_, std::sqrt(5.0));  // as LibTorch's ConvNd
    const double bound = 1.0 / std::sqrt(static_cast<double>(in) * kernel * kernel * kernel * kernel);
    bias_.uniform_(-bound, bound);
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto u = x;
    for (int ax = 2; ax < 6; ++ax) u = u.unfold(ax, kernel_, 1);  // [B, C, L0..L3, k, k, k, k]
    return torch::einsum("bcwxyzijkl,ocijkl->bowxyz", {u, weight_}) + bias_.view({1, -1, 1, 1, 1, 1});
  }

 private:
  int kernel_;
  torch::Tensor weight_, bias_;
};
TORCH_MODULE(Conv4d);

torch::nn::AnyModule make_conv(int dim, int in, int out, int kernel) {
  switch (dim) {
    case 1: return torch::nn::AnyModule(torch::nn::Conv1d(torch::nn::Conv1dOptions(in, out, kernel)));
    case 2: return torch::nn::AnyModule(torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, kernel)));
    case 3: return torch::nn::AnyModule(torch::nn::Conv3d(torch::nn::Conv3dOptions(in, out, kernel)));
    case 4: return torch::nn::AnyModule(Conv4d(in, out, kernel));
    default: throw ConfigError("lattice.extents: flows need 1 to 4 dimensions, got " + std::to_string(dim));
  }
}

pconv::Act kernel_activation(Activation a) {
  switch (a) {
    case Activation::leaky_relu: return pconv::Act::leaky_relu;
    case Activation::tanh: return pconv::Act::tanh;
    case Activation::silu: break;
  }
  return pconv::Act::silu;
}

// The number of chunks for_chunks makes of n.
std::int64_t chunk_count(std::int64_t n) {
  return std::max<std::int64_t>(1, std::min<std::int64_t>(at::get_num_threads(), n));
}

// Splits [0, n) into `chunks` chunks (default one per thread, at most n), runs f(chunk, begin, end) on them in
// parallel.
template <class F>
void for_chunks(std::int64_t n, F&& f, std::int64_t chunks = 0) {
  if (chunks <= 0) chunks = chunk_count(n);
  at::parallel_for(0, chunks, 1, [&](std::int64_t c0, std::int64_t c1) {
    for (std::int64_t c = c0; c < c1; ++c) f(c, n * c / chunks, n * (c + 1) / chunks);
  });
}

// [B, rows, C] of sample pairs (pconv::to_pairs) from the ordinary layout, or back (to = false); B even.
template <class T>
torch::Tensor repaired(const torch::Tensor& t, bool to) {
  auto out = torch::empty_like(t);
  (to ? pconv::to_pairs<T> : pconv::from_pairs<T>)(t.data_ptr<T>(), t.size(0), t.size(1), static_cast<int>(t.size(2)),
                                                   out.data_ptr<T>());
  return out;
}

// for_chunks over samples, or (pairs) over sample pairs: f(chunk, b0, b1) with b0, b1 even.
template <class F>
void for_sample_chunks(std::int64_t B, bool pairs, F&& f) {
  if (pairs)
    for_chunks(B / 2, [&](std::int64_t c, std::int64_t p0, std::int64_t p1) { f(c, 2 * p0, 2 * p1); });
  else
    for_chunks(B, f);
}

// The whole periodic conv net as one autograd node (kernels in lib/latflow/kernels). Arguments: the input
// [B, C, L...], the parameters (w0, b0, w1, b1, ...) in LibTorch's Conv layout, the geometry.
struct FusedGeometry {
  torch::Tensor nbr;  // int32 [V * taps], pconv::neighbour_table
  std::int64_t V;
  int taps;
  pconv::Act act;
  bool differentiable;  // a backward pass can follow: keep what it needs (values before the activations)
  pconv::Isa isa;
  torch::Tensor sites;  // int32: the last conv only at these sites, output [B, sites, C] (undefined: everywhere)
};

// [B, V, C] channels-last -> [B, C, L...] contiguous, with L... taken from like = [B, C', L...].
torch::Tensor channels_first(const torch::Tensor& t, at::IntArrayRef like) {
  std::vector<std::int64_t> sizes{like[0]};
  sizes.insert(sizes.end(), like.begin() + 2, like.end());
  sizes.push_back(t.size(-1));
  return t.view(sizes).movedim(-1, 1).contiguous();
}

class FusedConvNet : public torch::autograd::Function<FusedConvNet> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, at::TensorList params,
                               FusedGeometry geo) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const auto B = x.size(0);
    const auto layers = static_cast<std::int64_t>(params.size() / 2);
    const bool keep_pre = geo.differentiable;
    std::vector<torch::Tensor> acts{x.movedim(1, -1).reshape({B, geo.V, x.size(1)}).contiguous()}, pres;  // [B, V, C]
    // On sample pairs where that fills the vector registers (pconv::pairs_pay): the net's input and output are
    // converted, everything between stays in that layout.
    const bool pairs = pconv::pairs_pay(geo.isa, x.scalar_type() == torch::kFloat) && B % 2 == 0 && layers >= 2;
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_conv_forward", [&] {
      if (pairs) acts[0] = repaired<scalar_t>(acts[0], true);
      for (std::int64_t l = 0; l < layers; ++l) {
        const auto& w = params[2 * l];
        const int cout = static_cast<int>(w.size(0)), cin = static_cast<int>(w.size(1));
        const bool last = l + 1 == layers;
        auto wk = w.detach().contiguous();
        auto bias = params[2 * l + 1].detach().contiguous();
        const bool at_sites = last && geo.sites.defined();
        const std::int64_t rows = at_sites ? geo.sites.numel() : geo.V;
        auto out = torch::empty({B, rows, cout}, x.options());
        auto pre = keep_pre && !last ? torch::empty_like(out) : torch::Tensor();
        const auto& in = acts.back();
        for_sample_chunks(B, pairs, [&](std::int64_t, std::int64_t b0, std::int64_t b1) {
          const auto off = b0 * rows * cout;
          if (at_sites) {
            (pairs ? pconv::conv_forward_at_pairs<scalar_t>
                   : pconv::conv_forward_at<scalar_t>)(in.data_ptr<scalar_t>() + b0 * geo.V * cin, b1 - b0, geo.V,
                                                       geo.taps, geo.nbr.data_ptr<std::int32_t>(),
                                                       geo.sites.data_ptr<std::int32_t>(), rows, cin, cout,
                                                       wk.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(),
                                                       out.data_ptr<scalar_t>() + off, geo.isa);
            return;
          }
          (pairs ? pconv::conv_forward_pairs<scalar_t>
                 : pconv::conv_forward<scalar_t>)(in.data_ptr<scalar_t>() + b0 * geo.V * cin, b1 - b0, geo.V, geo.taps,
                                                  geo.nbr.data_ptr<std::int32_t>(), cin, cout, wk.data_ptr<scalar_t>(),
                                                  bias.data_ptr<scalar_t>(), last ? nullptr : &geo.act,
                                                  pre.defined() ? pre.data_ptr<scalar_t>() + off : nullptr,
                                                  out.data_ptr<scalar_t>() + off, geo.isa);
        });
        pres.push_back(pre);
        acts.push_back(out);
      }
      if (pairs) acts.back() = repaired<scalar_t>(acts.back(), false);
    });
    auto result = geo.sites.defined() ? acts.back() : channels_first(acts.back(), x.sizes());
    acts.pop_back();  // the backward needs each conv's input, not the net's output
    ctx->saved_data["acts"] = acts;
    ctx->saved_data["pres"] = pres;
    ctx->saved_data["params"] = params.vec();
    ctx->saved_data["geo_nbr"] = geo.nbr;
    ctx->saved_data["geo_sites"] = geo.sites;
    ctx->saved_data["geo_taps"] = static_cast<std::int64_t>(geo.taps);
    ctx->saved_data["geo_act"] = static_cast<std::int64_t>(geo.act);
    ctx->saved_data["geo_V"] = geo.V;
    ctx->saved_data["geo_isa"] = static_cast<std::int64_t>(geo.isa);
    ctx->saved_data["x_sizes"] = x.sizes().vec();
    ctx->saved_data["pairs"] = pairs;
    return result;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const auto acts = ctx->saved_data["acts"].toTensorVector();
    const auto pres = ctx->saved_data["pres"].toTensorVector();
    const auto params = ctx->saved_data["params"].toTensorVector();
    const auto nbr = ctx->saved_data["geo_nbr"].toTensor();
    const auto sites = ctx->saved_data["geo_sites"].toTensor();  // undefined: the whole lattice
    const int taps = static_cast<int>(ctx->saved_data["geo_taps"].toInt());
    const auto act = static_cast<pconv::Act>(ctx->saved_data["geo_act"].toInt());
    const auto isa = static_cast<pconv::Isa>(ctx->saved_data["geo_isa"].toInt());
    const auto x_sizes = ctx->saved_data["x_sizes"].toIntVector();
    const auto layers = static_cast<std::int64_t>(params.size() / 2);
    const auto B = acts[0].size(0), V = ctx->saved_data["geo_V"].toInt();
    const bool pairs = ctx->saved_data["pairs"].toBool();
    torch::autograd::variable_list grads(params.size() + 2);
    auto g = sites.defined() ? grad_out[0].contiguous() : grad_out[0].movedim(1, -1).contiguous().view({B, V, -1});
    AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "fused_conv_backward", [&] {
      if (pairs) g = repaired<scalar_t>(g, true);
      // g is dL/d(values before layer l's activation), starting from the net's output (no activation there).
      for (std::int64_t l = layers - 1; l >= 0; --l) {
        const auto& w = params[2 * l];
        const int cout = static_cast<int>(w.size(0)), cin = static_cast<int>(w.size(1));
        auto wc = w.detach().contiguous();
        const bool need_gin = l > 0 || ctx->needs_input_grad(0);
        // Weights held constant (path-gradient training evaluates log q at fixed weights): input gradients only.
        const bool need_gw = ctx->needs_input_grad(1 + 2 * l) || ctx->needs_input_grad(2 + 2 * l);
        auto gin = need_gin ? torch::empty({B, V, cin}, g.options()) : torch::Tensor();
        const std::int64_t chunks = chunk_count(B);
        auto gw = need_gw ? torch::zeros({chunks, cout, cin, taps}, g.options()) : torch::Tensor();
        auto gb = need_gw ? torch::zeros({chunks, cout}, g.options()) : torch::Tensor();
        const bool at_sites = l == layers - 1 && sites.defined();
        const std::int64_t rows = at_sites ? sites.numel() : V;
        const scalar_t* in_pre = l > 0 ? pres[l - 1].data_ptr<scalar_t>() : nullptr;  // before the activation
        for_sample_chunks(B, pairs, [&](std::int64_t c, std::int64_t b0, std::int64_t b1) {
          const scalar_t* pre = in_pre ? in_pre + b0 * V * cin : nullptr;
          scalar_t* gi = need_gin ? gin.data_ptr<scalar_t>() + b0 * V * cin : nullptr;
          scalar_t* gwc = need_gw ? gw[c].data_ptr<scalar_t>() : nullptr;
          scalar_t* gbc = need_gw ? gb[c].data_ptr<scalar_t>() : nullptr;
          if (at_sites) {
            (pairs ? pconv::conv_backward_at_pairs<scalar_t>
                   : pconv::conv_backward_at<scalar_t>)(acts[l].data_ptr<scalar_t>() + b0 * V * cin,
                                                        g.data_ptr<scalar_t>() + b0 * rows * cout, b1 - b0, V, taps,
                                                        nbr.data_ptr<std::int32_t>(), sites.data_ptr<std::int32_t>(),
                                                        rows, cin, cout, wc.data_ptr<scalar_t>(), pre, &act, gi, gwc,
                                                        gbc, isa);
            return;
          }
          (pairs ? pconv::conv_backward_pairs<scalar_t>
                 : pconv::conv_backward<scalar_t>)(acts[l].data_ptr<scalar_t>() + b0 * V * cin,
                                                   g.data_ptr<scalar_t>() + b0 * V * cout, b1 - b0, V, taps,
                                                   nbr.data_ptr<std::int32_t>(), cin, cout, wc.data_ptr<scalar_t>(),
                                                   pre, &act, gi, gwc, gbc, isa);
        });
        if (need_gw) {
          grads[1 + 2 * l] = gw.sum(0).view(w.sizes());
          grads[2 + 2 * l] = gb.sum(0);
        }
        g = gin;
      }
      if (pairs && g.defined()) g = repaired<scalar_t>(g, false);
    });
    if (g.defined()) grads[0] = channels_first(g, x_sizes);
    return grads;
  }
};

// An affine coupling layer as the kernels see it, with params = (weight, bias) per conv, contiguous, of type T.
template <class T>
pconv::AffineLayer<T> affine_layer(const std::vector<std::int64_t>& extents, std::int64_t taps,
                                   const torch::Tensor& nbr, const std::vector<torch::Tensor>& params, pconv::Act act,
                                   bool z2, const torch::Tensor& active, const pconv::KernelPolicy& policy) {
  pconv::AffineLayer<T> ly{extents,
                           static_cast<int>(taps),
                           nbr.data_ptr<std::int32_t>(),
                           {},
                           act,
                           z2,
                           active.data_ptr<std::int32_t>(),
                           active.numel(),
                           policy};
  for (std::size_t l = 0; l < params.size(); l += 2)
    ly.net.push_back({params[l].data_ptr<T>(), params[l + 1].data_ptr<T>(), static_cast<int>(params[l].size(1)),
                      static_cast<int>(params[l].size(0))});
  return ly;
}

std::vector<torch::Tensor> detached_contiguous(at::TensorList ts) {
  std::vector<torch::Tensor> out;
  for (const auto& t : ts) out.push_back(t.detach().contiguous());
  return out;
}

struct AffineNodeSetup {
  std::vector<std::int64_t> extents;
  std::int64_t taps;
  torch::Tensor nbr, active;  // int32: pconv::neighbour_table, the updated sites
  pconv::Act act;
  bool z2, inverse;
  std::vector<torch::Tensor>* tapes;  // the net's tapes, reused once no graph holds them
  pconv::KernelPolicy policy;
};

// A tape of at least n values of the given options: one of `pool` that only the pool holds (its graph is gone),
// else a new one, kept in the pool. Reusing them spares a training step the page faults of fresh memory (the tapes
// are large enough for the allocator to map them afresh each time: 1 MB per layer at batch 64 for the tutorial).
torch::Tensor pooled_tape(std::vector<torch::Tensor>& pool, std::int64_t n, const torch::TensorOptions& opt) {
  for (auto& t : pool)
    if (t.use_count() == 1 && t.storage().use_count() == 1 && t.numel() >= n && t.dtype() == opt.dtype())
      return t.narrow(0, 0, n);  // (a view: a graph holding it counts as a user of the storage)
  auto t = torch::empty({n}, opt);
  constexpr std::size_t kMaxPooled = 4;  // (a forward and an inverse per step, with room to spare)
  if (pool.size() < kMaxPooled) pool.push_back(t);
  return t;
}

// A whole affine coupling layer as one autograd node: inputs x [B, L...] and the net's parameters, outputs
// (y, log|det|) with log|det| float64. The forward keeps a tape (pconv::affine_coupling_forward) that the
// backward reads, on the same split of the batch into chunks.
class FusedAffineCoupling : public torch::autograd::Function<FusedAffineCoupling> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                                                at::TensorList params, AffineNodeSetup setup) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const auto B = x.size(0), V = x[0].numel(), chunks = chunk_count(B);
    auto y = x.detach().clone(at::MemoryFormat::Contiguous);
    auto log_det = torch::zeros({B}, x.options().dtype(torch::kFloat64));
    const auto p = detached_contiguous(params);
    torch::Tensor tape;
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "affine_coupling_forward", [&] {
      const auto ly = affine_layer<scalar_t>(setup.extents, setup.taps, setup.nbr, p, setup.act, setup.z2, setup.active,
                                             setup.policy);
      const auto per = pconv::affine_tape_size(ly, 1);
      tape = pooled_tape(*setup.tapes, B * per, x.options());
      for_chunks(
          B,
          [&](std::int64_t, std::int64_t b0, std::int64_t b1) {
            pconv::affine_coupling_forward(y.data_ptr<scalar_t>() + b0 * V, b1 - b0, ly, setup.inverse,
                                           log_det.data_ptr<double>() + b0, tape.data_ptr<scalar_t>() + b0 * per);
          },
          chunks);
    });
    std::vector<std::int64_t> versions;
    for (const auto& t : params) versions.push_back(t._version());
    ctx->saved_data["tape"] = tape;
    ctx->saved_data["params"] = params.vec();
    ctx->saved_data["versions"] = versions;
    ctx->saved_data["nbr"] = setup.nbr;
    ctx->saved_data["active"] = setup.active;
    ctx->saved_data["extents"] = setup.extents;
    ctx->saved_data["taps"] = setup.taps;
    ctx->saved_data["act"] = static_cast<std::int64_t>(setup.act);
    ctx->saved_data["z2"] = setup.z2;
    ctx->saved_data["inverse"] = setup.inverse;
    ctx->saved_data["winograd"] = setup.policy.winograd;
    ctx->saved_data["isa"] = static_cast<std::int64_t>(setup.policy.isa);
    ctx->saved_data["chunks"] = chunks;
    ctx->saved_data["x_sizes"] = x.sizes().vec();
    return {y, log_det};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const auto tape = ctx->saved_data["tape"].toTensor();
    const auto params = ctx->saved_data["params"].toTensorVector();
    const auto versions = ctx->saved_data["versions"].toIntVector();
    for (std::size_t i = 0; i < params.size(); ++i)
      TORCH_CHECK(params[i]._version() == versions[i],
                  "affine coupling backward: a weight was modified in place after the forward pass");
    const auto x_sizes = ctx->saved_data["x_sizes"].toIntVector();
    const auto extents = ctx->saved_data["extents"].toIntVector();
    const auto chunks = ctx->saved_data["chunks"].toInt();
    const bool inverse = ctx->saved_data["inverse"].toBool();
    pconv::KernelPolicy policy;
    policy.winograd = ctx->saved_data["winograd"].toBool();
    policy.isa = static_cast<pconv::Isa>(ctx->saved_data["isa"].toInt());
    const auto B = x_sizes[0];
    auto gy = grad_out[0].defined() ? grad_out[0].contiguous() : torch::zeros(x_sizes, tape.options());
    auto gld = grad_out[1].defined() ? grad_out[1].to(torch::kFloat64).contiguous() : torch::Tensor();
    bool need_gp = false;
    for (std::size_t i = 0; i < params.size(); ++i) need_gp = need_gp || ctx->needs_input_grad(1 + i);
    const auto p = detached_contiguous(params);
    auto gx = torch::empty(x_sizes, tape.options());
    const auto V = gx[0].numel();
    torch::Tensor gp;
    AT_DISPATCH_FLOATING_TYPES(tape.scalar_type(), "affine_coupling_backward", [&] {
      const auto ly =
          affine_layer<scalar_t>(extents, ctx->saved_data["taps"].toInt(), ctx->saved_data["nbr"].toTensor(), p,
                                 static_cast<pconv::Act>(ctx->saved_data["act"].toInt()),
                                 ctx->saved_data["z2"].toBool(), ctx->saved_data["active"].toTensor(), policy);
      const auto per = pconv::affine_tape_size(ly, 1);
      // Weights held constant (path-gradient training evaluates log q at fixed weights): no parameter gradients.
      if (need_gp) gp = torch::zeros({chunks, pconv::affine_param_count(ly)}, tape.options());
      for_chunks(
          B,
          [&](std::int64_t c, std::int64_t b0, std::int64_t b1) {
            pconv::affine_coupling_backward(gy.data_ptr<scalar_t>() + b0 * V,
                                            gld.defined() ? gld.data_ptr<double>() + b0 : nullptr, b1 - b0, ly, inverse,
                                            tape.data_ptr<scalar_t>() + b0 * per, gx.data_ptr<scalar_t>() + b0 * V,
                                            need_gp ? gp[c].data_ptr<scalar_t>() : nullptr);
          },
          chunks);
    });
    torch::autograd::variable_list grads(params.size() + 2);
    grads[0] = gx;
    if (need_gp) {
      auto total = gp.sum(0);
      std::int64_t off = 0;
      for (std::size_t i = 0; i < params.size(); ++i) {
        grads[1 + i] = total.narrow(0, off, params[i].numel()).view(params[i].sizes());
        off += params[i].numel();
      }
    }
    return grads;
  }
};

}  // namespace

void set_kernel_policy(torch::nn::Module& model, const pconv::KernelPolicy& policy) {
  pconv::resolve(policy.isa);  // refuses an instruction set this CPU lacks, before any kernel runs
  if (auto* net = dynamic_cast<ConvNetImpl*>(&model)) net->set_policy(policy);
  for (const auto& m : model.modules(/*include_self=*/false))  // (a model on the stack has no shared_ptr to itself)
    if (auto* net = m->as<ConvNetImpl>()) net->set_policy(policy);
}

void ConvNetImpl::set_policy(const pconv::KernelPolicy& policy) { policy_ = policy; }

// ---------------------------------------------------------------------------------------------------------------
ConvNetImpl::ConvNetImpl(int dim, int in_channels, const std::vector<int>& hidden, int out_channels, int kernel,
                         Activation activation)
    : dim_(dim), pad_(kernel / 2), kernel_(kernel), activation_(activation) {
  std::vector<int> ch{in_channels};
  ch.insert(ch.end(), hidden.begin(), hidden.end());
  ch.push_back(out_channels);
  for (std::size_t i = 0; i + 1 < ch.size(); ++i) {
    convs_.push_back(make_conv(dim, ch[i], ch[i + 1], kernel));
    register_module("conv" + std::to_string(i), convs_.back().ptr());
  }
  torch::NoGradGuard no_grad;
  for (auto& p : convs_.back().ptr()->parameters()) p.zero_();
}

torch::Tensor ConvNetImpl::wrap_pad(const torch::Tensor& x) const {
  if (pad_ == 0) return x;
  auto y = x;
  for (int mu = 0; mu < dim_; ++mu) {
    const int ax = mu + 2;
    const auto L = y.size(ax);
    y = torch::cat({y.narrow(ax, L - pad_, pad_), y, y.narrow(ax, 0, pad_)}, ax);
  }
  return y;
}

torch::Tensor ConvNetImpl::forward(torch::Tensor x) {
  const bool fusable = policy_.fused && x.device().is_cpu() &&
                       (x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kFloat64);
  if (fusable) return forward_fused(x);
  for (std::size_t i = 0; i < convs_.size(); ++i) {
    x = convs_[i].forward(wrap_pad(x));
    if (i + 1 == convs_.size()) break;
    switch (kernel_activation(activation_)) {
      case pconv::Act::leaky_relu: x = torch::leaky_relu(x, 0.01); break;
      case pconv::Act::tanh: x = torch::tanh(x); break;
      case pconv::Act::silu: x = torch::silu(x); break;
    }
  }
  return x;
}

const torch::Tensor& ConvNetImpl::neighbours(const std::vector<std::int64_t>& extents) {
  auto& nbr = neighbours_[extents];
  if (!nbr.defined()) {
    // A normal tensor even when first made while sampling, since later training passes keep it in their graphs.
    c10::InferenceMode normal_tensors(false);
    const auto table = pconv::neighbour_table(extents, kernel_);
    nbr = torch::tensor(at::ArrayRef<std::int32_t>(table), torch::kInt32);
  }
  return nbr;
}

torch::Tensor ConvNetImpl::forward_at(const torch::Tensor& x, const torch::Tensor& sites) {
  std::vector<std::int64_t> extents(x.sizes().begin() + 2, x.sizes().end());
  const auto& nbr = neighbours(extents);
  const auto ps = params();
  std::int64_t V = 1;
  for (auto L : extents) V *= L;
  bool differentiable = torch::GradMode::is_enabled() && x.requires_grad();
  for (const auto& p : ps) differentiable = differentiable || (torch::GradMode::is_enabled() && p.requires_grad());
  if (differentiable)
    return FusedConvNet::apply(
        x, at::TensorList(ps),
        FusedGeometry{nbr, V, static_cast<int>(taps()), kernel_activation(activation_), true, policy_.isa, sites});
  const auto B = x.size(0), Vr = sites.numel();
  const int T = static_cast<int>(taps());
  const auto act = kernel_activation(activation_);
  const auto layers = ps.size() / 2;
  // The hidden convs of 2D 3x3 nets by Winograd where the policy allows (pconv::conv_forward_winograd).
  const bool wino = policy_.winograd && extents.size() == 2 && T == 9;
  auto h = x.movedim(1, -1).reshape({B, V, x.size(1)}).contiguous();  // [B, V, C]
  torch::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_forward_at", [&] {
    for (std::size_t l = 0; l < layers; ++l) {
      auto w = ps[2 * l].detach().contiguous(), bias = ps[2 * l + 1].detach().contiguous();
      const int cout = static_cast<int>(w.size(0)), cin = static_cast<int>(w.size(1));
      const bool last = l + 1 == layers;
      out = torch::empty({B, last ? Vr : V, cout}, x.options());
      for_chunks(B, [&](std::int64_t, std::int64_t b0, std::int64_t b1) {
        const scalar_t* in = h.data_ptr<scalar_t>() + b0 * V * cin;
        if (last)
          pconv::conv_forward_at<scalar_t>(in, b1 - b0, V, T, nbr.data_ptr<std::int32_t>(),
                                           sites.data_ptr<std::int32_t>(), Vr, cin, cout, w.data_ptr<scalar_t>(),
                                           bias.data_ptr<scalar_t>(), out.data_ptr<scalar_t>() + b0 * Vr * cout,
                                           policy_.isa);
        else if (!(wino && pconv::conv_forward_winograd<scalar_t>(
                               in, b1 - b0, extents[0], extents[1], cin, cout, w.data_ptr<scalar_t>(),
                               bias.data_ptr<scalar_t>(), &act, out.data_ptr<scalar_t>() + b0 * V * cout, policy_.isa)))
          pconv::conv_forward<scalar_t>(in, b1 - b0, V, T, nbr.data_ptr<std::int32_t>(), cin, cout,
                                        w.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(), &act, nullptr,
                                        out.data_ptr<scalar_t>() + b0 * V * cout, policy_.isa);
      });
      h = out;
    }
  });
  return out;
}

std::vector<torch::Tensor> ConvNetImpl::params() {
  std::vector<torch::Tensor> out;
  for (auto& c : convs_)
    for (auto& p : c.ptr()->parameters()) out.push_back(p);  // weight, bias
  return out;
}

std::int64_t ConvNetImpl::taps() const {
  std::int64_t taps = 1;
  for (int mu = 0; mu < dim_; ++mu) taps *= kernel_;
  return taps;
}

void ConvNetImpl::affine_coupling(torch::Tensor& x, const torch::Tensor& active, bool z2, bool inverse,
                                  torch::Tensor& log_det) {
  std::vector<std::int64_t> extents(x.sizes().begin() + 1, x.sizes().end());
  const auto& nbr = neighbours(extents);
  const auto V = x[0].numel(), B = x.size(0);
  const auto p = detached_contiguous(params());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "affine_coupling", [&] {
    const auto ly =
        affine_layer<scalar_t>(extents, taps(), nbr, p, kernel_activation(activation_), z2, active, policy_);
    for_chunks(B, [&](std::int64_t, std::int64_t b0, std::int64_t b1) {
      pconv::affine_coupling<scalar_t>(x.data_ptr<scalar_t>() + b0 * V, b1 - b0, ly, inverse,
                                       log_det.data_ptr<double>() + b0);
    });
  });
}

std::pair<torch::Tensor, torch::Tensor> ConvNetImpl::affine_coupling_node(const torch::Tensor& x,
                                                                          const torch::Tensor& active, bool z2,
                                                                          bool inverse) {
  std::vector<std::int64_t> extents(x.sizes().begin() + 1, x.sizes().end());
  auto out = FusedAffineCoupling::apply(x, at::TensorList(params()),
                                        AffineNodeSetup{extents, taps(), neighbours(extents), active,
                                                        kernel_activation(activation_), z2, inverse, &tapes_, policy_});
  return {out[0], out[1]};
}

torch::Tensor ConvNetImpl::forward_fused(const torch::Tensor& x) {
  std::vector<std::int64_t> extents(x.sizes().begin() + 2, x.sizes().end());
  const auto& nbr = neighbours(extents);
  std::int64_t V = 1;
  for (auto L : extents) V *= L;
  const auto ps = params();
  // (Function::apply runs forward() with grad mode off, so whether a backward can follow is decided here.)
  bool differentiable = torch::GradMode::is_enabled() && x.requires_grad();
  for (const auto& p : ps) differentiable = differentiable || (torch::GradMode::is_enabled() && p.requires_grad());
  return FusedConvNet::apply(
      x, at::TensorList(ps),
      FusedGeometry{nbr, V, static_cast<int>(taps()), kernel_activation(activation_), differentiable, policy_.isa, {}});
}

}  // namespace latflow
