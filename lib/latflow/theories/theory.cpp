// SPDX-License-Identifier: MIT
// The flat-manifold defaults of the Theory interface (a real field in R^V with unit-mass Gaussian momenta).
#include "latflow/theories/theory.hpp"

#include <torch/torch.h>

#include "latflow/core/error.hpp"
#include "latflow/theories/phi4.hpp"
#include "latflow/theories/sun.hpp"
#include "latflow/theories/u1.hpp"

namespace latflow {

at::Tensor Theory::update_field(const at::Tensor& x, const at::Tensor& p, const at::Tensor& dt) const {
  return x + dt * p;
}

at::Tensor Theory::draw_momenta(at::Generator& gen, std::int64_t n) const {
  std::vector<std::int64_t> shape{n};
  const auto f = field_shape();
  shape.insert(shape.end(), f.begin(), f.end());
  return torch::randn(shape, gen, torch::TensorOptions().dtype(torch::kFloat64));
}

at::Tensor Theory::kinetic_energy(const at::Tensor& p) const { return 0.5 * (p * p).flatten(1).sum(1); }

at::Tensor Theory::cold_start(std::int64_t n, const at::TensorOptions& options) const {
  std::vector<std::int64_t> shape{n};
  const auto f = field_shape();
  shape.insert(shape.end(), f.begin(), f.end());
  return torch::zeros(shape, options);
}

void Theory::heatbath_sweep(at::Tensor&, const std::vector<std::uint64_t>&, int) const {
  throw ConfigError("hmc.algorithm = heatbath: this theory has no heat bath (u1 and sun have one)");
}

DefectSites defect_sites(const std::vector<std::int64_t>& extents) {
  std::int64_t V = 1;
  for (auto l : extents) V *= l;
  const std::int64_t stride0 = V / extents[0], stride1 = stride0 / extents[1];
  return {V - 1, V - 1 - (extents[0] - 1) * stride0, V - 1 - (extents[1] - 1) * stride1};
}

std::unique_ptr<Theory> make_theory(const Config& cfg) {
  switch (cfg.theory) {
    case TheoryId::u1: return std::make_unique<U1>(cfg.lattice, cfg.u1);
    case TheoryId::sun: return std::make_unique<SUN>(cfg.lattice, cfg.sun);
    case TheoryId::phi4: break;
  }
  return std::make_unique<Phi4>(cfg.lattice, cfg.phi4);
}

}  // namespace latflow
