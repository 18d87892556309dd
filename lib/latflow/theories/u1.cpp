// SPDX-License-Identifier: MIT
#include "latflow/theories/u1.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "latflow/core/error.hpp"

namespace latflow {
namespace {
at::Tensor shift(const at::Tensor& t, std::int64_t by, std::int64_t dim) { return torch::roll(t, {-by}, {dim}); }
}  // namespace

U1::U1(const LatticeParams& lattice, const U1Params& params) : extents_(lattice.extents), beta_(params.beta) {
  if (extents_.size() != 2) throw ConfigError("lattice.extents: U(1) gauge theory is 2-dimensional");
  names_ = {"plaq", "action_density", "Q", "Q2"};
  const auto half = std::min(extents_[0], extents_[1]) / 2;
  for (std::int64_t r = 2; r <= std::min<std::int64_t>(4, half); ++r) {
    loop_sizes_.push_back(r);
    names_.push_back("wilson_" + std::to_string(r) + "x" + std::to_string(r));
  }
}

at::Tensor U1::wrap(const at::Tensor& angle) { return torch::remainder(angle, 2 * M_PI); }

at::Tensor U1::plaquettes(const at::Tensor& theta) {
  // Field dims: 0 batch, 1 direction, 2 = x0, 3 = x1; after select(1, mu): 1 = x0, 2 = x1.
  auto t0 = theta.select(1, 0), t1 = theta.select(1, 1);
  return t0 + shift(t1, 1, 1) - shift(t0, 1, 2) - t1;
}

at::Tensor U1::topological_charge(const at::Tensor& theta) {
  auto p = torch::remainder(plaquettes(theta) + M_PI, 2 * M_PI) - M_PI;
  return p.sum({1, 2}) / (2 * M_PI);
}

at::Tensor U1::gauge_transform(const at::Tensor& theta, const at::Tensor& a) {
  return torch::stack({theta.select(1, 0) + a - shift(a, 1, 1), theta.select(1, 1) + a - shift(a, 1, 2)}, 1);
}

at::Tensor U1::action(const at::Tensor& theta) const { return -beta_ * torch::cos(plaquettes(theta)).sum({1, 2}); }

at::Tensor U1::force(const at::Tensor& theta) const {
  // dS/dtheta_0(x) = beta [sin P(x) - sin P(x - e1)],  dS/dtheta_1(x) = beta [sin P(x - e0) - sin P(x)].
  auto s = torch::sin(plaquettes(theta));
  return -beta_ * torch::stack({s - shift(s, -1, 2), shift(s, -1, 1) - s}, 1);
}

Measurement U1::measure(const at::Tensor& theta_in) const {
  auto theta = theta_in.to(torch::kFloat64);
  const double V = static_cast<double>(extents_[0] * extents_[1]);
  auto P = plaquettes(theta);
  auto plaq = torch::cos(P).sum({1, 2}) / V;
  auto Q = torch::round(topological_charge(theta));
  std::vector<at::Tensor> cols{plaq, -beta_ * plaq, Q, Q * Q};
  // R x R Wilson loops: in an abelian theory the loop's angle is the sum of the enclosed plaquette angles.
  auto strip = torch::zeros_like(P);  // sum of R consecutive plaquettes along x0
  std::int64_t built = 0;
  for (auto R : loop_sizes_) {
    for (; built < R; ++built) strip = strip + shift(P, built, 1);
    auto box = torch::zeros_like(P);
    for (std::int64_t b = 0; b < R; ++b) box = box + shift(strip, b, 2);
    cols.push_back(torch::cos(box).sum({1, 2}) / V);
  }
  // Polyakov loops along x1, one per x0; correlator along x0.
  auto phi = theta.select(1, 1).sum(2);  // [B, L0]
  std::vector<at::Tensor> corr;
  for (std::int64_t t = 0; t < extents_[0]; ++t) corr.push_back(torch::cos(phi - shift(phi, t, 1)).mean(1));
  return {torch::stack(cols, 1), torch::stack(corr, 1)};
}

}  // namespace latflow
