// SPDX-License-Identifier: MIT
#include "latflow/flows/gauge_nodes.hpp"

#include "latflow/flows/gauge.hpp"

#include "latflow/kernels/gauge_kernels.hpp"

// at::parallel_for is inline: compiled without OpenMP it runs the kernels' chunks serially whatever run.threads
// says (lib/CMakeLists.txt links OpenMP).
#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#error "latflow's kernels must be compiled with OpenMP (at::parallel_for would be serial)"
#endif

namespace latflow {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

const std::uint8_t* bytes(const torch::Tensor& t) { return t.defined() ? t.data_ptr<std::uint8_t>() : nullptr; }

// f(shape, b0) on slices [b0, b0 + shape.batch) of the B samples in parallel (each sample's result is independent
// of the split).
template <class F>
void over_batch(std::int64_t B, std::int64_t L0, std::int64_t L1, F&& f) {
  if (B == 0) return;
  at::parallel_for(0, B, 1, [&](std::int64_t b0, std::int64_t b1) { f(gauge_kernels::Shape{b1 - b0, L0, L1, 1}, b0); });
}

void save_geometry(AutogradContext* ctx, const U1LayerGeometry& g) {
  ctx->saved_data["active"] = g.active;
  ctx->saved_data["frozen"] = g.frozen;
  ctx->saved_data["rect0"] = g.rect0;
  ctx->saved_data["rect1"] = g.rect1;
  ctx->saved_data["mu"] = static_cast<std::int64_t>(g.mu);
  ctx->saved_data["spline"] = g.spline;
  ctx->saved_data["components"] = static_cast<std::int64_t>(g.components);
  ctx->saved_data["isa"] = static_cast<std::int64_t>(g.isa);
}
U1LayerGeometry load_geometry(AutogradContext* ctx) {
  auto& d = ctx->saved_data;
  return U1LayerGeometry{d["active"].toTensor(),
                         d["frozen"].toTensor(),
                         d["rect0"].toTensor(),
                         d["rect1"].toTensor(),
                         static_cast<int>(d["mu"].toInt()),
                         d["spline"].toBool(),
                         static_cast<int>(d["components"].toInt()),
                         static_cast<pconv::Isa>(d["isa"].toInt())};
}

// x -> the net's input [B, C, L0, L1].
class U1Context : public torch::autograd::Function<U1Context> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, U1LayerGeometry g) {
    const auto B = x.size(0), L0 = x.size(2), L1 = x.size(3);
    const int C = g.rect0.defined() ? 6 : 2;
    auto out = torch::empty({B, C, L0, L1}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "u1_context", [&] {
      const scalar_t* xp = x.data_ptr<scalar_t>();
      scalar_t* op = out.data_ptr<scalar_t>();
      over_batch(B, L0, L1, [&](const gauge_kernels::Shape& s, std::int64_t b0) {
        gauge_kernels::u1_context<scalar_t>(xp + b0 * 2 * L0 * L1, s, bytes(g.frozen), bytes(g.rect0), bytes(g.rect1),
                                            op + b0 * C * L0 * L1, g.isa);
      });
    });
    ctx->save_for_backward({out});
    ctx->saved_data["x_sizes"] = x.sizes().vec();
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto out = ctx->get_saved_variables()[0];
    const auto B = out.size(0), C = out.size(1), L0 = out.size(2), L1 = out.size(3);
    const auto gctx = grad[0].contiguous();
    auto gx = torch::zeros(ctx->saved_data["x_sizes"].toIntVector(), out.options());
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "u1_context_backward", [&] {
      const scalar_t* op = out.data_ptr<scalar_t>();
      const scalar_t* gp = gctx.data_ptr<scalar_t>();
      scalar_t* gxp = gx.data_ptr<scalar_t>();
      over_batch(B, L0, L1, [&](const gauge_kernels::Shape& s, std::int64_t b0) {
        gauge_kernels::u1_context_backward<scalar_t>(op + b0 * C * L0 * L1, s, C == 6, gp + b0 * C * L0 * L1,
                                                     gxp + b0 * 2 * L0 * L1);
      });
    });
    return {gx, torch::Tensor()};
  }
};

// (x, par [B, Va, channels]) -> (y, log|det| float64 [B]).
class U1Update : public torch::autograd::Function<U1Update> {
 public:
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& par,
                               U1LayerGeometry g, bool inverse) {
    const auto B = x.size(0), L0 = x.size(2), L1 = x.size(3), Va = g.active.numel();
    auto y = x.clone(at::MemoryFormat::Contiguous);
    auto log_det = torch::zeros({B}, x.options().dtype(torch::kFloat64));
    const auto p = par.contiguous();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "u1_update", [&] {
      scalar_t* yp = y.data_ptr<scalar_t>();
      const scalar_t* pp = p.data_ptr<scalar_t>();
      double* lp = log_det.data_ptr<double>();
      const auto channels = p.size(2);
      over_batch(B, L0, L1, [&](const gauge_kernels::Shape& s, std::int64_t b0) {
        gauge_kernels::u1_update<scalar_t>(yp + b0 * 2 * L0 * L1, pp + b0 * Va * channels, s,
                                           g.active.data_ptr<std::int32_t>(), Va, g.mu, g.spline, g.components, inverse,
                                           lp + b0, g.isa);
      });
    });
    ctx->save_for_backward({x, p});
    save_geometry(ctx, g);
    ctx->saved_data["inverse"] = inverse;
    return {y, log_det};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &par = saved[1];
    const auto g = load_geometry(ctx);
    const bool inverse = ctx->saved_data["inverse"].toBool();
    const auto B = x.size(0), L0 = x.size(2), L1 = x.size(3), Va = g.active.numel(), channels = par.size(2);
    const auto gy = grad[0].defined() ? grad[0].contiguous() : torch::zeros_like(x);
    const auto gld = grad[1].defined() ? grad[1].to(torch::kFloat64).contiguous() : torch::Tensor();
    auto gx = torch::empty_like(x);
    auto gpar = torch::empty_like(par);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "u1_update_backward", [&] {
      const scalar_t *xp = x.data_ptr<scalar_t>(), *pp = par.data_ptr<scalar_t>(), *gyp = gy.data_ptr<scalar_t>();
      const double* glp = gld.defined() ? gld.data_ptr<double>() : nullptr;
      scalar_t *gxp = gx.data_ptr<scalar_t>(), *gpp = gpar.data_ptr<scalar_t>();
      const std::int64_t per_x = 2 * L0 * L1, per_p = Va * channels;
      over_batch(B, L0, L1, [&](const gauge_kernels::Shape& s, std::int64_t b0) {
        gauge_kernels::u1_update_backward<scalar_t>(
            xp + b0 * per_x, pp + b0 * per_p, s, g.active.data_ptr<std::int32_t>(), Va, g.mu, g.spline, g.components,
            inverse, gyp + b0 * per_x, glp ? glp + b0 : nullptr, gxp + b0 * per_x, gpp + b0 * per_p, g.isa);
      });
    });
    return {gx, gpar, torch::Tensor(), torch::Tensor()};
  }
};

// Runs f(shape, x, ctx, par, log_det) of a gauge kernel on slices of the batch in parallel (at::parallel_for over
// the samples: each sample's result is independent of the split, so the output is the same for any thread count).
// x [B, ...], ctx [B, ...], par [B, ...] (undefined: null), log_det [B].
template <class T, class F>
void over_samples(torch::Tensor& x, torch::Tensor& ctx, const torch::Tensor& par, torch::Tensor& log_det, int n,
                  F&& f) {
  const auto B = x.size(0);
  if (B == 0) return;
  const auto per_x = x.numel() / B, per_c = ctx.numel() / B, per_p = par.defined() ? par.numel() / B : 0;
  T* xp = x.data_ptr<T>();
  T* cp = ctx.data_ptr<T>();
  const T* pp = par.defined() ? par.data_ptr<T>() : nullptr;
  double* lp = log_det.data_ptr<double>();
  at::parallel_for(0, B, 1, [&](std::int64_t b0, std::int64_t b1) {
    const gauge_kernels::Shape s{b1 - b0, x.size(2), x.size(3), n};
    f(s, xp + b0 * per_x, cp + b0 * per_c, pp ? pp + b0 * per_p : pp, lp + b0);
  });
}

}  // namespace

std::pair<torch::Tensor, torch::Tensor> u1_coupling_node(const torch::Tensor& x, ConvNet& net,
                                                         const U1LayerGeometry& geometry, bool inverse) {
  auto xc = x.contiguous();
  auto g = geometry;
  g.isa = net->policy().isa;
  auto ctx = U1Context::apply(xc, g);
  auto par = net->forward_at(ctx, g.active);  // [B, Va, channels], one node
  auto out = U1Update::apply(xc, par, g, inverse);
  return {out[0], out[1]};
}

torch::Tensor site_indices(const torch::Tensor& mask) {
  c10::InferenceMode normal_tensors(false);
  return mask.flatten().nonzero().flatten().to(torch::kCPU, torch::kInt32).contiguous();
}

torch::Tensor mask_bytes(const torch::Tensor& mask) {
  c10::InferenceMode normal_tensors(false);
  return (mask > 0.5).to(torch::kCPU, torch::kUInt8).contiguous();
}

void GaugeCoupling::apply_in_place(torch::Tensor& x, torch::Tensor& log_det, bool inverse) {
  kernel_geometry();
  const auto isa = net_->policy().isa;
  auto ctx = torch::empty({x.size(0), loops_ ? 6 : 2, x.size(2), x.size(3)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "u1_context", [&] {
    over_samples<scalar_t>(x, ctx, {}, log_det, 1, [&](const auto& s, auto* xs, auto* cs, auto*, double*) {
      gauge_kernels::u1_context<scalar_t>(xs, s, masks_[0].data_ptr<std::uint8_t>(),
                                          loops_ ? masks_[1].data_ptr<std::uint8_t>() : nullptr,
                                          loops_ ? masks_[2].data_ptr<std::uint8_t>() : nullptr, cs, isa);
    });
  });
  auto par = net_->forward_at(ctx, active_sites_);  // [B, Va, channels]
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "u1_update", [&] {
    over_samples<scalar_t>(x, ctx, par, log_det, 1, [&](const auto& s, auto* xs, auto*, auto* ps, double* ld) {
      gauge_kernels::u1_update<scalar_t>(xs, ps, s, active_sites_.data_ptr<std::int32_t>(), active_sites_.numel(), mu_,
                                         spline_, components_, inverse, ld, isa);
    });
  });
}

void SpectralCoupling::apply_in_place(torch::Tensor& x, torch::Tensor& log_det, bool inverse) {
  if (!active_sites_.defined()) active_sites_ = site_indices(active_);
  if (!frozen_u8_.defined()) frozen_u8_ = mask_bytes(frozen_);
  auto ctx = torch::empty({x.size(0), n_ == 2 ? 1 : 2, x.size(2), x.size(3)}, x.options());
  const auto isa = net_->policy().isa;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spectral_context", [&] {
    over_samples<scalar_t>(x, ctx, {}, log_det, n_, [&](const auto& s, auto* xs, auto* cs, auto*, double*) {
      gauge_kernels::spectral_context<scalar_t>(xs, s, frozen_u8_.data_ptr<std::uint8_t>(), cs, isa);
    });
  });
  auto par = net_->forward_at(ctx, active_sites_);  // [B, Va, channels]
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spectral_update", [&] {
    over_samples<scalar_t>(x, ctx, par, log_det, n_, [&](const auto& s, auto* xs, auto*, auto* ps, double* ld) {
      gauge_kernels::spectral_update<scalar_t>(xs, ps, s, active_sites_.data_ptr<std::int32_t>(), active_sites_.numel(),
                                               mu_, bins_, inverse, ld, isa);
    });
  });
}

}  // namespace latflow
