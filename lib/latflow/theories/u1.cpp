// SPDX-License-Identifier: MIT
#include "latflow/theories/u1.hpp"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "latflow/core/error.hpp"
#include "latflow/theories/heatbath.hpp"

namespace latflow {
namespace {
at::Tensor shift(const at::Tensor& t, std::int64_t by, std::int64_t dim) { return torch::roll(t, {-by}, {dim}); }

// The site dimensions 1 .. d of a per-site tensor [B, L0, ..., L_{d-1}].
std::vector<std::int64_t> site_dims(std::int64_t d) {
  std::vector<std::int64_t> dims;
  for (std::int64_t k = 1; k <= d; ++k) dims.push_back(k);
  return dims;
}

at::Tensor reduced(const at::Tensor& angle) { return torch::remainder(angle + M_PI, 2 * M_PI) - M_PI; }
}  // namespace

U1::U1(const LatticeParams& lattice, const U1Params& params)
    : extents_(lattice.extents), beta_(params.beta), defect_(params.defect) {
  const auto d = static_cast<int>(extents_.size());
  if (d < 2 || d > 4) throw ConfigError("lattice.extents: U(1) gauge theory needs 2 to 4 extents");
  names_ = {"plaq", "action_density"};
  if (d == 2) {
    names_.insert(names_.end(), {"Q", "Q2"});
  } else {
    for (int mu = 0; mu < d; ++mu)
      for (int nu = mu + 1; nu < d; ++nu) names_.push_back("plaq_" + std::to_string(mu) + std::to_string(nu));
    names_.insert(names_.end(), {"monopole", "poly"});
  }
  const auto half = *std::min_element(extents_.begin(), extents_.end()) / 2;
  for (std::int64_t r = 2; r <= std::min<std::int64_t>(4, half); ++r) {
    loop_sizes_.push_back(r);
    names_.push_back("wilson_" + std::to_string(r) + "x" + std::to_string(r));
  }
}

std::vector<std::int64_t> U1::field_shape() const {
  std::vector<std::int64_t> shape{static_cast<std::int64_t>(extents_.size())};
  shape.insert(shape.end(), extents_.begin(), extents_.end());
  return shape;
}

at::Tensor U1::wrap(const at::Tensor& angle) { return torch::remainder(angle, 2 * M_PI); }

at::Tensor U1::plaquette(const at::Tensor& theta, int mu, int nu) {
  // Field dims: 0 batch, 1 direction, 2.. = x0, x1, ...; after select(1, mu): 1 + k = x_k.
  auto tm = theta.select(1, mu), tn = theta.select(1, nu);
  return tm + shift(tn, 1, 1 + mu) - shift(tm, 1, 1 + nu) - tn;
}

at::Tensor U1::topological_charge(const at::Tensor& theta) {
  return reduced(plaquettes(theta)).sum({1, 2}) / (2 * M_PI);
}

at::Tensor U1::monopole_charges(const at::Tensor& theta) {
  // The lattice Bianchi identity: for unreduced angles the oriented sum of the six face angles of a cube,
  // d_mu P_nurho - d_nu P_murho + d_rho P_munu, vanishes identically; with the faces reduced to [-pi, pi) it is
  // -2 pi times the net number of Dirac strings entering the cube (DeGrand, Toussaint, PRD 22 (1980) 2478).
  const int d = static_cast<int>(theta.size(1));
  std::vector<at::Tensor> charges;
  auto div = [](const at::Tensor& p, int dir) { return shift(p, 1, 1 + dir) - p; };
  for (int mu = 0; mu < d; ++mu)
    for (int nu = mu + 1; nu < d; ++nu)
      for (int rho = nu + 1; rho < d; ++rho)
        charges.push_back((div(reduced(plaquette(theta, nu, rho)), mu) - div(reduced(plaquette(theta, mu, rho)), nu) +
                           div(reduced(plaquette(theta, mu, nu)), rho)) /
                          (2 * M_PI));
  return torch::stack(charges, 1);
}

at::Tensor U1::gauge_transform(const at::Tensor& theta, const at::Tensor& a) {
  std::vector<at::Tensor> links;
  for (std::int64_t mu = 0; mu < theta.size(1); ++mu) links.push_back(theta.select(1, mu) + a - shift(a, 1, 1 + mu));
  return torch::stack(links, 1);
}

at::Tensor U1::defect_plaquette(const at::Tensor& theta) {
  const auto s = defect_sites(theta.sizes().slice(2).vec());
  auto flat = theta.flatten(2);  // [B, d, V]
  auto t0 = flat.select(1, 0), t1 = flat.select(1, 1);
  return t0.select(1, s.x) + t1.select(1, s.x_e0) - t0.select(1, s.x_e1) - t1.select(1, s.x);
}

at::Tensor U1::action(const at::Tensor& theta) const {
  const int d = static_cast<int>(extents_.size());
  at::Tensor sum;  // sum over planes of sum_x cos theta_munu(x); one plane in 2D
  for (int mu = 0; mu < d; ++mu)
    for (int nu = mu + 1; nu < d; ++nu) {
      auto s = torch::cos(plaquette(theta, mu, nu)).sum(site_dims(d));
      sum = sum.defined() ? sum + s : s;
    }
  if (defect_ != 1) sum = sum + (defect_ - 1) * torch::cos(defect_plaquette(theta));
  return -beta_ * sum;
}

at::Tensor U1::force(const at::Tensor& theta) const {
  // Each plane (mu < nu) contributes dS/dtheta_mu(x) = beta [sin P(x) - sin P(x - e_nu)] and
  // dS/dtheta_nu(x) = beta [sin P(x - e_mu) - sin P(x)], P = theta_munu.
  const int d = static_cast<int>(extents_.size());
  std::vector<at::Tensor> grad(static_cast<std::size_t>(d));
  auto add = [&](int k, const at::Tensor& t) { grad[k] = grad[k].defined() ? grad[k] + t : t; };
  for (int mu = 0; mu < d; ++mu)
    for (int nu = mu + 1; nu < d; ++nu) {
      auto s = torch::sin(plaquette(theta, mu, nu));
      add(mu, s - shift(s, -1, 1 + nu));
      add(nu, shift(s, -1, 1 + mu) - s);
    }
  auto dS = torch::stack(grad, 1);  // dS/dtheta / beta
  if (defect_ != 1) {
    // The defect adds (c - 1) sin theta_01(x*) times +1 at theta_0(x*), theta_1(x* + e0), -1 at theta_0(x* + e1),
    // theta_1(x*).
    const auto sites = defect_sites(extents_);
    auto s = (defect_ - 1) * torch::sin(defect_plaquette(theta));
    auto flat = dS.view({dS.size(0), dS.size(1), -1});  // a view of dS (fresh from stack): four entries change
    flat.select(1, 0).select(1, sites.x).add_(s);
    flat.select(1, 1).select(1, sites.x_e0).add_(s);
    flat.select(1, 0).select(1, sites.x_e1).sub_(s);
    flat.select(1, 1).select(1, sites.x).sub_(s);
  }
  return -beta_ * dS;
}

Measurement U1::measure(const at::Tensor& theta_in) const {
  auto theta = theta_in.to(torch::kFloat64);
  const int d = static_cast<int>(extents_.size());
  const auto sites = site_dims(d);
  double V = 1;
  for (auto l : extents_) V *= static_cast<double>(l);
  const double planes = d * (d - 1) / 2.0;
  std::vector<at::Tensor> P, per_plane;  // plaquette angles and <cos> per plane
  at::Tensor sum;
  for (int mu = 0; mu < d; ++mu)
    for (int nu = mu + 1; nu < d; ++nu) {
      P.push_back(plaquette(theta, mu, nu));
      per_plane.push_back(torch::cos(P.back()).sum(sites));
      sum = sum.defined() ? sum + per_plane.back() : per_plane.back();
    }
  auto plaq = sum / (V * planes);
  auto density = -beta_ * planes * plaq;  // S / V
  if (defect_ != 1) density = density - beta_ * (defect_ - 1) * torch::cos(defect_plaquette(theta)) / V;
  std::vector<at::Tensor> cols{plaq, density};
  if (d == 2) {
    auto Q = torch::round(topological_charge(theta));
    cols.insert(cols.end(), {Q, Q * Q});
  } else {
    for (auto& p : per_plane) cols.push_back(p / V);
    cols.push_back(torch::round(monopole_charges(theta)).abs().sum(site_dims(d + 1)) / (V * d * (d - 1) * (d - 2) / 6));
  }
  // Polyakov loops along the last direction, one per x = (x0, ..., x_{d-2}); correlator along x0.
  auto phi = theta.select(1, d - 1).sum(d);  // [B, L0, ..., L_{d-2}]
  const auto rest = site_dims(d - 1);
  if (d > 2) cols.push_back(torch::hypot(torch::cos(phi).mean(rest), torch::sin(phi).mean(rest)));
  // R x R Wilson loops: in an abelian theory the loop's angle is the sum of the enclosed plaquette angles.
  std::vector<at::Tensor> loops(loop_sizes_.size());
  std::size_t plane = 0;
  for (int mu = 0; mu < d; ++mu)
    for (int nu = mu + 1; nu < d; ++nu, ++plane) {
      auto strip = torch::zeros_like(P[plane]);  // sum of R consecutive plaquettes along x_mu
      std::int64_t built = 0;
      for (std::size_t k = 0; k < loop_sizes_.size(); ++k) {
        const auto R = loop_sizes_[k];
        for (; built < R; ++built) strip = strip + shift(P[plane], built, 1 + mu);
        auto box = torch::zeros_like(P[plane]);
        for (std::int64_t b = 0; b < R; ++b) box = box + shift(strip, b, 1 + nu);
        auto w = torch::cos(box).sum(sites);
        loops[k] = loops[k].defined() ? loops[k] + w : w;
      }
    }
  for (auto& w : loops) cols.push_back(w / (V * planes));
  std::vector<at::Tensor> corr;
  for (std::int64_t t = 0; t < extents_[0]; ++t) corr.push_back(torch::cos(phi - shift(phi, t, 1)).mean(rest));
  return {torch::stack(cols, 1), torch::stack(corr, 1)};
}

void U1::heatbath_sweep(at::Tensor& theta, const std::vector<std::uint64_t>& streams, int overrelax) const {
  const heatbath::Lattice lattice(extents_);
  auto* data = theta.data_ptr<double>();
  const std::int64_t per_config = theta[0].numel();
  at::parallel_for(0, theta.size(0), 1, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t b = begin; b < end; ++b) {
      SplitMix64 rng(streams[static_cast<std::size_t>(b)]);
      auto* config = data + b * per_config;
      heatbath::u1_sweep(config, lattice, beta_, heatbath::Move::kHeatBath, rng);
      for (int k = 0; k < overrelax; ++k) heatbath::u1_sweep(config, lattice, beta_, heatbath::Move::kOverrelax, rng);
    }
  });
}

}  // namespace latflow
