// SPDX-License-Identifier: MIT
// The flat-manifold defaults of the Theory interface (a real field in R^V with unit-mass Gaussian momenta).
#include "latflow/theories/theory.hpp"

#include <torch/torch.h>

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

}  // namespace latflow
