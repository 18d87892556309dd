// SPDX-License-Identifier: MIT
// Helpers shared by the LibTorch tests (test_flows, test_u1).
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <functional>

namespace latflow::testing {

// Fresh coupling layers are the identity (zero-initialised last conv): give every parameter a N(0, scale^2) value.
inline void randomise(torch::nn::Module& m, double scale) {
  torch::NoGradGuard g;
  for (auto& p : m.parameters()) p.normal_(0, scale);
}

// log|det| of the full Jacobian of a map of one configuration by autograd, one row per output component, in
// float64 (x must be float64).
inline double autograd_logdet(const std::function<torch::Tensor(const torch::Tensor&)>& f, const torch::Tensor& x) {
  auto xv = x.clone().requires_grad_(true);
  auto y = f(xv).reshape({-1});
  const auto n = y.numel();
  auto J = torch::zeros({n, n}, torch::kFloat64);
  for (std::int64_t i = 0; i < n; ++i)
    J[i] = torch::autograd::grad({y[i]}, {xv}, {}, /*retain_graph=*/true)[0].reshape({-1});
  return std::get<1>(torch::slogdet(J)).item<double>();
}

}  // namespace latflow::testing
