// SPDX-License-Identifier: MIT
// Helpers shared by the LibTorch tests (test_flows, test_u1, test_sun, test_gauge_nd).
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <functional>

#include "latflow/flows/flow.hpp"
#include "latflow/theories/sun.hpp"

namespace latflow::testing {

// The kernels (fused = true, the default) or the LibTorch ops (the reference) for every net of m; Winograd on or off;
// the kernels' instruction set.
inline void use_fused(torch::nn::Module& m, bool fused, bool winograd = true, pconv::Isa isa = pconv::Isa::best) {
  pconv::KernelPolicy policy;
  policy.fused = fused;
  policy.winograd = winograd;
  policy.isa = isa;
  set_kernel_policy(m, policy);
}

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

// Local coordinates of y around y0, per link: the algebra components of y y0^+ (antihermitian part; exact to
// third order, so central differences are accurate to O(eps^2)).
inline torch::Tensor local(const SUN& th, const torch::Tensor& y, const torch::Tensor& y0) {
  auto d = torch::matmul(SUN::matrices(y), SUN::dagger(SUN::matrices(y0)));
  return th.components(d).flatten();
}

// log|det| of a map of one SU(N) field x [1, d, L0, ..., N, N, 2] by finite differences along every generator
// of every link (left-invariant frame on both sides: the Haar measure is Lebesgue measure there up to the same
// constant).
inline double numerical_log_det(const SUN& th, const std::function<torch::Tensor(const torch::Tensor&)>& f,
                                const torch::Tensor& x) {
  const double eps = 1e-5;
  auto y0 = f(x);
  auto gens = th.generators();
  const int n = th.colors(), G = n * n - 1;
  const auto links = x[0].numel() / (2 * n * n);
  auto J = torch::zeros({links * G, links * G}, torch::kFloat64);
  auto u = SUN::matrices(x);
  for (std::int64_t l = 0; l < links; ++l)
    for (int a = 0; a < G; ++a) {
      auto shifted = [&](double t) {
        auto v = u.clone().view({links, n, n});
        v[l] = torch::mm(torch::matrix_exp(t * gens[a]), v[l]);
        return f(SUN::storage(v.view(u.sizes())));
      };
      J.select(1, l * G + a).copy_((local(th, shifted(eps), y0) - local(th, shifted(-eps), y0)) / (2 * eps));
    }
  return std::get<1>(torch::linalg_slogdet(J)).item<double>();
}

}  // namespace latflow::testing
