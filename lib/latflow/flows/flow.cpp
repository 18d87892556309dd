// SPDX-License-Identifier: MIT
#include "latflow/flows/flow.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <cstring>
#include <iomanip>
#include <sstream>

#include "latflow/core/error.hpp"
#include "latflow/flows/gauge.hpp"
#include "latflow/kernels/periodic_conv.hpp"

// at::parallel_for is inline: compiled without OpenMP it runs the kernels' chunks serially whatever run.threads
// says (lib/CMakeLists.txt links OpenMP).
#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#error "latflow's kernels must be compiled with OpenMP (at::parallel_for would be serial)"
#endif

namespace latflow {
namespace {

std::vector<std::int64_t> site_dims(int d, int first = 1) {
  std::vector<std::int64_t> dims(d);
  for (int mu = 0; mu < d; ++mu) dims[mu] = mu + first;
  return dims;
}

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

torch::Dtype parse_dtype(const std::string& s) { return s == "float64" ? torch::kFloat64 : torch::kFloat32; }

// Config::validate admits only these names; a ConvNet built around it (tests, benchmarks) gets the same check.
pconv::Act parse_activation(const std::string& a) {
  if (a == "leaky_relu") return pconv::Act::leaky_relu;
  if (a == "tanh") return pconv::Act::tanh;
  if (a == "silu") return pconv::Act::silu;
  throw ConfigError("flow.activation = " + a + ": must be leaky_relu, tanh or silu");
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

// The whole periodic conv net as one autograd node (kernels in lib/latflow/kernels). Arguments: the input
// [B, C, L...], the parameters (w0, b0, w1, b1, ...) in LibTorch's Conv layout, the geometry.
struct FusedGeometry {
  torch::Tensor nbr;  // int32 [V * taps], pconv::neighbour_table
  std::int64_t V;
  int taps;
  pconv::Act act;
  bool differentiable;  // a backward pass can follow: keep what it needs (values before the activations)
  pconv::Isa isa;
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
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_conv_forward", [&] {
      for (std::int64_t l = 0; l < layers; ++l) {
        const auto& w = params[2 * l];
        const int cout = static_cast<int>(w.size(0)), cin = static_cast<int>(w.size(1));
        const bool last = l + 1 == layers;
        auto wk = w.detach().contiguous();
        auto bias = params[2 * l + 1].detach().contiguous();
        auto out = torch::empty({B, geo.V, cout}, x.options());
        auto pre = keep_pre && !last ? torch::empty_like(out) : torch::Tensor();
        const auto& in = acts.back();
        for_chunks(B, [&](std::int64_t, std::int64_t b0, std::int64_t b1) {
          const auto off = b0 * geo.V * cout;
          pconv::conv_forward<scalar_t>(in.data_ptr<scalar_t>() + b0 * geo.V * cin, b1 - b0, geo.V, geo.taps,
                                        geo.nbr.data_ptr<std::int32_t>(), cin, cout, wk.data_ptr<scalar_t>(),
                                        bias.data_ptr<scalar_t>(), last ? nullptr : &geo.act,
                                        pre.defined() ? pre.data_ptr<scalar_t>() + off : nullptr,
                                        out.data_ptr<scalar_t>() + off, geo.isa);
        });
        pres.push_back(pre);
        acts.push_back(out);
      }
    });
    auto result = channels_first(acts.back(), x.sizes());
    acts.pop_back();  // the backward needs each conv's input, not the net's output
    ctx->saved_data["acts"] = acts;
    ctx->saved_data["pres"] = pres;
    ctx->saved_data["params"] = params.vec();
    ctx->saved_data["geo_nbr"] = geo.nbr;
    ctx->saved_data["geo_taps"] = static_cast<std::int64_t>(geo.taps);
    ctx->saved_data["geo_act"] = static_cast<std::int64_t>(geo.act);
    ctx->saved_data["geo_V"] = geo.V;
    ctx->saved_data["geo_isa"] = static_cast<std::int64_t>(geo.isa);
    ctx->saved_data["x_sizes"] = x.sizes().vec();
    return result;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const auto acts = ctx->saved_data["acts"].toTensorVector();
    const auto pres = ctx->saved_data["pres"].toTensorVector();
    const auto params = ctx->saved_data["params"].toTensorVector();
    const auto nbr = ctx->saved_data["geo_nbr"].toTensor();
    const int taps = static_cast<int>(ctx->saved_data["geo_taps"].toInt());
    const auto act = static_cast<pconv::Act>(ctx->saved_data["geo_act"].toInt());
    const auto isa = static_cast<pconv::Isa>(ctx->saved_data["geo_isa"].toInt());
    const auto x_sizes = ctx->saved_data["x_sizes"].toIntVector();
    const auto layers = static_cast<std::int64_t>(params.size() / 2);
    const auto B = acts[0].size(0), V = ctx->saved_data["geo_V"].toInt();
    torch::autograd::variable_list grads(params.size() + 2);
    auto g = grad_out[0].movedim(1, -1).contiguous().view({B, V, -1});
    AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "fused_conv_backward", [&] {
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
        for_chunks(B, [&](std::int64_t c, std::int64_t b0, std::int64_t b1) {
          pconv::conv_backward<scalar_t>(
              acts[l].data_ptr<scalar_t>() + b0 * V * cin, g.data_ptr<scalar_t>() + b0 * V * cout, b1 - b0, V, taps,
              nbr.data_ptr<std::int32_t>(), cin, cout, wc.data_ptr<scalar_t>(),
              l > 0 ? pres[l - 1].data_ptr<scalar_t>() + b0 * V * cin : nullptr, &act,
              need_gin ? gin.data_ptr<scalar_t>() + b0 * V * cin : nullptr,
              need_gw ? gw[c].data_ptr<scalar_t>() : nullptr, need_gw ? gb[c].data_ptr<scalar_t>() : nullptr, isa);
        });
        if (need_gw) {
          grads[1 + 2 * l] = gw.sum(0).view(w.sizes());
          grads[2 + 2 * l] = gb.sum(0);
        }
        g = gin;
      }
    });
    if (g.defined()) grads[0] = channels_first(g, x_sizes);
    return grads;
  }
};

// An affine coupling layer as the kernels see it, with params = (weight, bias) per conv, contiguous, of type T.
template <class T>
pconv::AffineLayer<T> affine_layer(const std::vector<std::int64_t>& extents, std::int64_t taps,
                                   const torch::Tensor& nbr, const std::vector<torch::Tensor>& params,
                                   pconv::Act act, bool z2, const torch::Tensor& active,
                                   const pconv::KernelPolicy& policy) {
  pconv::AffineLayer<T> ly{extents, static_cast<int>(taps), nbr.data_ptr<std::int32_t>(), {}, act, z2,
                           active.data_ptr<std::int32_t>(), active.numel(), policy};
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
      const auto ly = affine_layer<scalar_t>(setup.extents, setup.taps, setup.nbr, p, setup.act, setup.z2,
                                             setup.active, setup.policy);
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
      const auto ly = affine_layer<scalar_t>(extents, ctx->saved_data["taps"].toInt(),
                                             ctx->saved_data["nbr"].toTensor(), p,
                                             static_cast<pconv::Act>(ctx->saved_data["act"].toInt()),
                                             ctx->saved_data["z2"].toBool(), ctx->saved_data["active"].toTensor(),
                                             policy);
      const auto per = pconv::affine_tape_size(ly, 1);
      // Weights held constant (path-gradient training evaluates log q at fixed weights): no parameter gradients.
      if (need_gp) gp = torch::zeros({chunks, pconv::affine_param_count(ly)}, tape.options());
      for_chunks(
          B,
          [&](std::int64_t c, std::int64_t b0, std::int64_t b1) {
            pconv::affine_coupling_backward(gy.data_ptr<scalar_t>() + b0 * V,
                                            gld.defined() ? gld.data_ptr<double>() + b0 : nullptr, b1 - b0, ly,
                                            inverse, tape.data_ptr<scalar_t>() + b0 * per,
                                            gx.data_ptr<scalar_t>() + b0 * V,
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
                         const std::string& activation)
    : dim_(dim), pad_(kernel / 2), kernel_(kernel), activation_(activation) {
  parse_activation(activation);  // an unknown name is refused here, not silently computed as another
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
    switch (parse_activation(activation_)) {
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
  std::int64_t V = 1;
  for (auto L : extents) V *= L;
  const auto B = x.size(0), Vr = sites.numel();
  const int T = static_cast<int>(taps());
  const auto act = parse_activation(activation_);
  const auto ps = params();
  const auto layers = ps.size() / 2;
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
        else
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
        affine_layer<scalar_t>(extents, taps(), nbr, p, parse_activation(activation_), z2, active, policy_);
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
  auto out = FusedAffineCoupling::apply(
      x, at::TensorList(params()),
      AffineNodeSetup{extents, taps(), neighbours(extents), active, parse_activation(activation_), z2, inverse,
                      &tapes_, policy_});
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
  return FusedConvNet::apply(x, at::TensorList(ps),
                             FusedGeometry{nbr, V, static_cast<int>(taps()), parse_activation(activation_),
                                           differentiable, policy_.isa});
}

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
AffineCoupling::AffineCoupling(const torch::Tensor& frozen_mask, const FlowParams& p, int dim)
    : z2_(p.z2) {
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
  auto log_slope = 2 * torch::log(s) + torch::log(d1 * xi * xi + 2 * s * xi1 + d0 * (1 - xi) * (1 - xi)) -
                   2 * torch::log(den);
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
    auto mirrored = torch::cat(
        {b.narrow(1, 0, K).flip({1}), b.narrow(1, K, K).flip({1}), b.narrow(1, 2 * K, K - 1).flip({1})}, 1);
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
FlowModelImpl::FlowModelImpl(const FlowParams& params) : dtype_(parse_dtype(params.dtype)) {}

void FlowModelImpl::add_layer(std::shared_ptr<CouplingLayer> layer) {
  layers_.push_back(register_module("layer" + std::to_string(layers_.size()), std::move(layer)));
}

void FlowModelImpl::to_device(torch::Device dev) {
  device_ = dev;
  this->to(dev);
}

ScalarFlowImpl::ScalarFlowImpl(const LatticeParams& lattice, const FlowParams& params)
    : FlowModelImpl(params), extents_(lattice.extents) {
  const int d = lattice.dim();
  if (params.prior == "fourier") add_layer(std::make_shared<FourierScale>(d));
  for (int i = 0; i < params.layers; ++i) {
    auto mask = checkerboard(extents_, i % 2, torch::TensorOptions().dtype(dtype_));
    if (params.coupling == "spline")
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

torch::Tensor ScalarFlowImpl::draw_prior(std::int64_t batch, std::uint64_t stream_seed) const {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(stream_seed);
  std::vector<std::int64_t> shape{batch};
  shape.insert(shape.end(), extents_.begin(), extents_.end());
  auto z = torch::randn(shape, gen, torch::TensorOptions().dtype(torch::kFloat64));
  return z.to(device_, dtype_);
}

FlowModel make_scalar_flow(const LatticeParams& lattice, const FlowParams& params) {
  return FlowModel(std::shared_ptr<FlowModelImpl>(std::make_shared<ScalarFlowImpl>(lattice, params)));
}

FlowModel make_flow(const Config& cfg) {
  // In d = 3, 4 gauge flows start from the Haar prior (the plaquette priors are 2D).
  if (cfg.theory != "phi4" && cfg.lattice.dim() != 2 && cfg.flow.prior != "haar")
    throw ConfigError("flow.prior = " + cfg.flow.prior + ": the plaquette priors are 2-dimensional (lattice.extents "
                      "has " + std::to_string(cfg.lattice.dim()) + " entries); use haar");
  if (cfg.theory == "sun")
    return FlowModel(std::shared_ptr<FlowModelImpl>(std::make_shared<SUNFlowImpl>(cfg.lattice, cfg.sun.n, cfg.flow, cfg.sun.beta)));
  if (cfg.theory == "u1")
    return FlowModel(std::shared_ptr<FlowModelImpl>(std::make_shared<U1FlowImpl>(cfg.lattice, cfg.flow, cfg.u1.beta)));
  if (cfg.theory == "phi4") return make_scalar_flow(cfg.lattice, cfg.flow);
  throw ConfigError("theory = " + cfg.theory + ": must be phi4, u1 or sun");
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
