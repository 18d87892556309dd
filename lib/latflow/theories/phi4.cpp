// SPDX-License-Identifier: MIT
#include "latflow/theories/phi4.hpp"

#include <torch/torch.h>

#include <cmath>

namespace latflow {

Phi4::Phi4(const LatticeParams& lattice, const Phi4Params& params)
    : extents_(lattice.extents), volume_(lattice.volume()), m2_(params.m2_nohalf), lam_(params.lam_nohalf) {}

namespace {
std::vector<std::int64_t> site_dims(int d) {
  std::vector<std::int64_t> dims(d);
  for (int mu = 0; mu < d; ++mu) dims[mu] = mu + 1;
  return dims;
}
}  // namespace

at::Tensor Phi4::action(const at::Tensor& phi) const {
  const int d = dim();
  auto phi2 = phi * phi;
  auto local = (2.0 * d + m2_) * phi2 + lam_ * phi2 * phi2;
  auto hop = torch::zeros_like(phi);
  for (int mu = 0; mu < d; ++mu) hop = hop + torch::roll(phi, {-1}, {mu + 1});
  return (local - 2.0 * phi * hop).sum(site_dims(d));
}

at::Tensor Phi4::force(const at::Tensor& phi) const {
  const int d = dim();
  auto nn = torch::zeros_like(phi);
  for (int mu = 0; mu < d; ++mu) nn = nn + torch::roll(phi, {-1}, {mu + 1}) + torch::roll(phi, {1}, {mu + 1});
  return 2.0 * nn - 2.0 * (2.0 * d + m2_) * phi - 4.0 * lam_ * phi * phi * phi;
}

const std::vector<std::string>& Phi4::scalar_names() {
  // mag = M/V, abs_mag = |M|/V, chi2 = M^2/V (its mean is chi2 of docs/physics.md), m4 = (M/V)^4 (Binder),
  // phi2 = sum phi^2 / V, action_density = S/V, g_pmin = |phi~(p_min)|^2 / V averaged over the directions whose
  // extent equals L_0 (with chi2 it gives xi_2nd).
  static const std::vector<std::string> names{"mag", "abs_mag", "chi2", "m4", "phi2", "action_density", "g_pmin"};
  return names;
}

Phi4::Measurement Phi4::measure(const at::Tensor& phi_in) const {
  torch::NoGradGuard no_grad;
  const int d = dim();
  const double V = static_cast<double>(volume_);
  auto phi = phi_in.to(torch::kFloat64);
  const auto dims = site_dims(d);
  auto M = phi.sum(dims);
  auto m = M / V;
  auto S = action(phi);

  // |phi~(p)|^2 at the smallest nonzero momentum along each direction mu with L_mu == L_0.
  auto g = torch::zeros_like(M);
  int n_dirs = 0;
  for (int mu = 0; mu < d; ++mu) {
    if (extents_[mu] != extents_[0]) continue;
    std::vector<std::int64_t> other;
    for (int nu = 0; nu < d; ++nu)
      if (nu != mu) other.push_back(nu + 1);
    auto slice = other.empty() ? phi : phi.sum(other);  // [B, L_mu]
    auto x = torch::arange(extents_[mu], phi.options()) * (2.0 * M_PI / extents_[mu]);
    auto re = (slice * torch::cos(x)).sum(1);
    auto im = (slice * torch::sin(x)).sum(1);
    g = g + (re * re + im * im) / V;
    ++n_dirs;
  }
  g = g / n_dirs;

  auto scalars = torch::stack({m, m.abs(), M * M / V, m.pow(4), (phi * phi).sum(dims) / V, S / V, g}, 1);

  // Zero-momentum correlator along direction 0.
  const auto L0 = extents_[0];
  std::vector<std::int64_t> spatial(dims.begin() + 1, dims.end());
  auto s = spatial.empty() ? phi : phi.sum(spatial);  // [B, L0]
  const double Vs = V / static_cast<double>(L0);
  std::vector<at::Tensor> c;
  for (std::int64_t t = 0; t < L0; ++t) c.push_back((s * torch::roll(s, {-t}, {1})).sum(1) / (L0 * Vs));
  return {scalars, torch::stack(c, 1)};
}

}  // namespace latflow
