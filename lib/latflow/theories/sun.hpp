// SPDX-License-Identifier: MIT
// SU(N) lattice gauge theory on a periodic L0 x ... x L_{d-1} lattice, d = 2, 3, 4 (docs/physics.md "SU(N) gauge
// theory"), N >= 2 chosen at run time.
//
// Storage: the samplers, the HDF5 writer and the flows move real tensors, so a configuration is stored as
// [B, d, L0, ..., L_{d-1}, N, N, 2]: link U_mu(x) with its complex entries split into a trailing (real, imag) axis
// (torch::view_as_complex gives the complex matrices [B, d, L0, ..., N, N]; docs/design.md "Interfaces and
// parameters").
// Plaquette U_munu(x) = U_mu(x) U_nu(x + e_mu) U_mu(x + e_nu)^+ U_nu(x)^+, Wilson action
// S = -(beta/N) sum_x sum_{mu < nu} Re tr U_munu(x); with a defect (SUNParams::defect = c != 1, the stages of a
// sun.defect protocol) the (0, 1)-plane plaquette at the last site x* has coupling c beta (theory.hpp
// DefectSites): S_c = S - (c - 1) (beta/N) Re tr U_01(x*).
// Gauge transformations U_mu(x) -> g(x) U_mu(x) g(x + e_mu)^+ conjugate every plaquette.
//
// HMC: momenta are algebra components p_a, [B, d, L0, ..., N^2 - 1], in the basis T_a = i lambda_a / 2 of
// traceless antihermitian matrices (lambda_a the generalised Gell-Mann matrices, tr lambda_a lambda_b = 2 delta_ab,
// so tr T_a T_b = -delta_ab / 2). P = sum_a p_a T_a; K = sum_a p_a^2 / 2 = -tr P^2 (the Theory default on the
// components), p_a ~ N(0, 1). Molecular dynamics: U <- exp(dt P) U (exp_algebra: closed forms for N = 2, 3,
// torch::matrix_exp then a projection back onto SU(N) for N >= 4), p_a <- p_a + dt F_a with the force
// F_a(mu, x) = -d/dt S(exp(t T_a) U_mu(x))|_0 = (beta/N) Re tr(T_a U_mu(x) A_mu(x)), A the sum of the 2 (d - 1)
// staples.
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "latflow/core/params.hpp"
#include "latflow/theories/theory.hpp"

namespace latflow {

class SUN : public Theory {
 public:
  SUN(const LatticeParams& lattice, const SUNParams& params);

  at::Tensor action(const at::Tensor& x) const override;  // [B]
  // Algebra components F_a, [B, d, L0, ..., N^2 - 1] (the shape of the momenta, not of the field).
  at::Tensor force(const at::Tensor& x) const override;

  // Scalars per configuration, in this order: plaq = mean over x and planes of Re tr U_munu(x) / N,
  // action_density = S / V; d >= 3: plaq_munu per plane and poly = |volume average of tr P(x) / N|; then
  // wilson_RxR = mean over x and planes of Re tr W_RxR(x) / N (R = 2 .. min(4, L/2)). Correlator: Polyakov loops
  // along the last direction P(x) = prod_{x_{d-1}} U_{d-1}(x) (ordered), c(t) = mean over x of
  // Re tr P(x) tr P(x + t e0)^* (not divided by N^2).
  Measurement measure(const at::Tensor& x) const override;
  const std::vector<std::string>& observable_names() const override { return names_; }
  std::vector<std::int64_t> field_shape() const override;
  // One heat-bath sweep and `overrelax` overrelaxation sweeps of every chain (theories/heatbath.hpp).
  void heatbath_sweep(at::Tensor& x, const std::vector<std::uint64_t>& streams, int overrelax) const override;

  at::Tensor update_field(const at::Tensor& x, const at::Tensor& p, const at::Tensor& dt) const override;
  at::Tensor draw_momenta(at::Generator& gen, std::int64_t n) const override;
  at::Tensor cold_start(std::int64_t n, const at::TensorOptions& options) const override;

  int colors() const { return n_; }
  double beta() const { return beta_; }
  double defect() const { return defect_; }
  const std::vector<std::int64_t>& extents() const { return extents_; }
  const std::vector<std::int64_t>& loop_sizes() const { return loop_sizes_; }
  // sum_a c_a T_a for components c [..., N^2 - 1] (complex [..., N, N]) and the inverse Re-trace map
  // c_a = -2 Re tr(T_a M) of the antihermitian traceless part of M.
  at::Tensor algebra(const at::Tensor& c) const;
  at::Tensor components(const at::Tensor& m) const;
  at::Tensor generators() const { return gen_; }  // [N^2 - 1, N, N] complex128
  // exp(A) for traceless antihermitian A (complex [..., n, n]). n = 2: exp(A) = cos(t) 1 + sin(t)/t A,
  // t^2 = -tr(A^2)/2 (Rodrigues). n = 3: exp(iQ) = f0 1 + f1 Q + f2 Q^2 for Q = -iA by Cayley-Hamilton with the
  // f_j of Morningstar and Peardon, PRD 69 (2004) 054501, eqs. (29)-(34), and a Taylor series where Q is small.
  // Both are unitary to rounding with determinant 1, so no projection follows them. n >= 4: matrix_exp.
  static at::Tensor exp_algebra(const at::Tensor& a);

  // Real storage <-> complex link matrices.
  static at::Tensor matrices(const at::Tensor& x);  // [B, d, L0, ..., N, N, 2] -> complex [B, d, L0, ..., N, N]
  static at::Tensor storage(const at::Tensor& u);   // the inverse
  static at::Tensor dagger(const at::Tensor& m) { return m.conj().transpose(-2, -1); }
  // Untraced plaquettes U_munu(x), complex [B, L0, ..., N, N], from complex links (d = u.size(1)).
  static at::Tensor plaquette(const at::Tensor& u, int mu, int nu);
  // The (0, 1) plane's plaquettes: all of them in 2D.
  static at::Tensor plaquettes(const at::Tensor& u) { return plaquette(u, 0, 1); }
  // Staple sums A_mu(x) with sum_P Re tr U_P = (1/4) sum_{mu, x} Re tr U_mu(x) A_mu(x), complex like u.
  static at::Tensor staples(const at::Tensor& u);
  // g(x) U_mu(x) g(x + e_mu)^+ for complex links u and g [B, L0, ..., N, N].
  static at::Tensor gauge_transform(const at::Tensor& u, const at::Tensor& g);
  // Haar-random SU(N) matrices [shape..., N, N] complex128: the Q of the QR decomposition of a complex Gaussian
  // matrix with R's diagonal positive (Gram-Schmidt; Mezzadri 2007), divided by det^(1/N).
  static at::Tensor haar(int n, std::vector<std::int64_t> shape, at::Generator& gen);
  // The nearest unitary matrix (polar part, via SVD) divided by the principal det^(1/N): exact SU(N) for
  // matrices that drifted by rounding.
  static at::Tensor project(const at::Tensor& m);

 private:
  std::vector<std::int64_t> extents_;
  int n_;
  double beta_, defect_;
  at::Tensor gen_;
  std::vector<std::int64_t> loop_sizes_;
  std::vector<std::string> names_;
};

}  // namespace latflow
