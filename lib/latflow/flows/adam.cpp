// SPDX-License-Identifier: MIT
// torch::optim::Adam's update in one loop per parameter tensor (docs/design.md "Training"). LibTorch's step makes
// about ten tensor operations per parameter tensor; a flow has ~100 small ones (16 layers of three convs), so its
// dispatch costs ~3 ms a step whatever the batch: a fixed cost that data-parallel training pays on every rank.
// The loop applies, element by element, the same operations in the same order and precision as LibTorch 1.13's
// CPU kernels (exp_avg: one fused multiply-add; exp_avg_sq: (1 - beta2) g rounded, then fused; the denominator
// by a true division), so that the weights are bitwise those of opt.step() (tests/test_flows.cpp).
#include "latflow/flows/adam.hpp"

#include <cmath>
#include <string>

namespace latflow {
namespace {

struct Coefficients {
  double beta1, one_minus_beta1, beta2, one_minus_beta2, sqrt_bc2, eps, value;
};

// fma(a, b, c) rounds once; with the FMA instruction where the CPU has it (the library is built for baseline
// x86-64, where std::fma is a library call).
template <class T>
void update(T* p, const T* g, T* m, T* v, std::int64_t n, const Coefficients& k) {
  const T b1 = static_cast<T>(k.beta1), c1 = static_cast<T>(k.one_minus_beta1), b2 = static_cast<T>(k.beta2),
          c2 = static_cast<T>(k.one_minus_beta2), sq = static_cast<T>(k.sqrt_bc2), eps = static_cast<T>(k.eps),
          value = static_cast<T>(k.value);
  for (std::int64_t i = 0; i < n; ++i) {
    const T mi = std::fma(g[i], c1, m[i] * b1);  // exp_avg.mul_(beta1).add_(grad, 1 - beta1)
    const T t = c2 * g[i];
    const T vi = std::fma(t, g[i], v[i] * b2);  // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
    const T denom = std::sqrt(vi) / sq + eps;   // (exp_avg_sq.sqrt() / sqrt(bc2)).add_(eps)
    const T step = (value * mi) / denom;        // p.addcdiv_(exp_avg, denom, -lr / bc1)
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] + step;
  }
}

#if defined(__x86_64__)
template <class T>
__attribute__((target("fma"))) void update_fma(T* p, const T* g, T* m, T* v, std::int64_t n, const Coefficients& k) {
  update(p, g, m, v, n, k);
}
const bool kHaveFma = __builtin_cpu_supports("fma");
#endif

template <class T>
void update_any(T* p, const T* g, T* m, T* v, std::int64_t n, const Coefficients& k) {
#if defined(__x86_64__)
  if (kHaveFma) return update_fma(p, g, m, v, n, k);
#endif
  update(p, g, m, v, n, k);
}

}  // namespace

bool fused_adam_step(torch::optim::Adam& opt) {
  // What the loop covers: CPU float32/float64 dense parameters, no weight decay, no AMSGrad.
  for (const auto& group : opt.param_groups()) {
    const auto& o = static_cast<const torch::optim::AdamOptions&>(group.options());
    if (o.weight_decay() != 0 || o.amsgrad()) return false;
    for (const auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      const auto t = p.scalar_type();
      if (!p.device().is_cpu() || (t != torch::kFloat32 && t != torch::kFloat64) || !p.is_contiguous() ||
          !p.grad().is_contiguous() || p.grad().is_sparse() || p.grad().scalar_type() != t)
        return false;
    }
  }
  torch::NoGradGuard no_grad;
  auto& state = opt.state();
  for (auto& group : opt.param_groups()) {
    const auto& o = static_cast<const torch::optim::AdamOptions&>(group.options());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      const std::string key = c10::guts::to_string(p.unsafeGetTensorImpl());  // LibTorch's state key
      auto it = state.find(key);
      if (it == state.end()) {
        auto s = std::make_unique<torch::optim::AdamParamState>();
        s->step(0);
        s->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        s->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        it = state.emplace(key, std::move(s)).first;
      }
      auto& s = static_cast<torch::optim::AdamParamState&>(*it->second);
      if (!s.exp_avg().is_contiguous()) s.exp_avg(s.exp_avg().contiguous());
      if (!s.exp_avg_sq().is_contiguous()) s.exp_avg_sq(s.exp_avg_sq().contiguous());
      s.step(s.step() + 1);
      const auto [beta1, beta2] = o.betas();
      const double bc1 = 1 - std::pow(beta1, s.step()), bc2 = 1 - std::pow(beta2, s.step());
      const Coefficients k{beta1, 1 - beta1, beta2, 1 - beta2, std::sqrt(bc2), o.eps(), -(o.lr() / bc1)};
      auto g = p.grad();
      if (p.scalar_type() == torch::kFloat32)
        update_any(p.data_ptr<float>(), g.data_ptr<float>(), s.exp_avg().data_ptr<float>(),
                   s.exp_avg_sq().data_ptr<float>(), p.numel(), k);
      else
        update_any(p.data_ptr<double>(), g.data_ptr<double>(), s.exp_avg().data_ptr<double>(),
                   s.exp_avg_sq().data_ptr<double>(), p.numel(), k);
    }
  }
  return true;
}

}  // namespace latflow
