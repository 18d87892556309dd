// SPDX-License-Identifier: MIT
// The run-time interface a sampler needs from a lattice theory (docs/design.md "Interfaces and parameters").
// Fields are batch-first tensors [B, ...]; the batch dimension holds independent configurations (HMC chains,
// flow proposals).
//
// HMC (Duane, Kennedy, Pendleton, Roweth 1987) needs, besides the action and its force, the
// molecular-dynamics field update and the momentum draw, because these depend on the field manifold: a scalar
// field lives in R^V (x <- x + dt p, Gaussian momenta, K = p^2/2), a gauge link in a group (U <- exp(i dt p)
// U with algebra-valued momenta). The defaults below are the flat ones; gauge theories override them.
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "latflow/core/params.hpp"

namespace latflow {

// Per-configuration observables in float64: scalars [B, n_scalars] in the order of observable_names(), and
// the zero-momentum correlator along direction 0, [B, L_0].
struct Measurement {
  at::Tensor scalars;
  at::Tensor correlator;
};

class Theory {
 public:
  virtual ~Theory() = default;

  virtual at::Tensor action(const at::Tensor& x) const = 0;  // S(x), [B], dtype of x
  virtual at::Tensor force(const at::Tensor& x) const = 0;   // -dS/dx, same shape as x
  virtual Measurement measure(const at::Tensor& x) const = 0;
  virtual const std::vector<std::string>& observable_names() const = 0;
  // Shape of one configuration (without the batch dimension).
  virtual std::vector<std::int64_t> field_shape() const = 0;

  // Molecular-dynamics update of the field by a step dt along the momenta; dt broadcasts against p (one step
  // size per configuration, shape [B, 1, ..., 1]). Flat manifold: x + dt p.
  virtual at::Tensor update_field(const at::Tensor& x, const at::Tensor& p, const at::Tensor& dt) const;
  // n momenta conjugate to the field, drawn from exp(-K(p)) with `gen` on the CPU in float64, so that every
  // device draws the same numbers. Flat manifold: standard normal, shape [n, field_shape...].
  virtual at::Tensor draw_momenta(at::Generator& gen, std::int64_t n) const;
  virtual at::Tensor kinetic_energy(const at::Tensor& p) const;  // K(p), [B]; flat: sum p^2 / 2
  // A deterministic start for Markov chains ("cold start"): zero field (identity links for gauge theories).
  virtual at::Tensor cold_start(std::int64_t n, const at::TensorOptions& options) const;
  // One sweep of exact local updates of every configuration of x ([B, field...], float64, CPU, contiguous, updated
  // in place): a heat bath, then `overrelax` overrelaxation sweeps (docs/physics.md "Heat bath and
  // overrelaxation"); configuration b draws its random numbers from the stream seeded by streams[b]. Gauge
  // theories have one; the default throws ConfigError naming hmc.algorithm.
  virtual void heatbath_sweep(at::Tensor& x, const std::vector<std::uint64_t>& streams, int overrelax) const;
};

// The defect plaquette of the gauge theories' u1.defect / sun.defect protocols (docs/physics.md "Switching on a
// defect"): the (0, 1)-plane plaquette at the last site x* = (L0 - 1, ..., L_{d-1} - 1). Row-major flat indices of
// the sites x*, x* + e0 and x* + e1 (extents: L0, ..., L_{d-1}, d >= 2).
struct DefectSites {
  std::int64_t x, x_e0, x_e1;
};
DefectSites defect_sites(const std::vector<std::int64_t>& extents);

// The theory of cfg.theory (phi4 | u1 | sun) with cfg's lattice and couplings.
std::unique_ptr<Theory> make_theory(const Config& cfg);

}  // namespace latflow
