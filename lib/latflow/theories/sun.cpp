// SPDX-License-Identifier: MIT
#include "latflow/theories/sun.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "latflow/core/error.hpp"
#include "latflow/theories/sun_prior.hpp"

namespace latflow {
namespace {
at::Tensor shift(const at::Tensor& t, std::int64_t by, std::int64_t dim) { return torch::roll(t, {-by}, {dim}); }

// T_a = i lambda_a / 2 with the generalised Gell-Mann matrices: symmetric and antisymmetric off-diagonal pairs,
// then the N - 1 diagonal ones sqrt(2 / (l (l + 1))) diag(1, ..., 1, -l, 0, ...).
at::Tensor make_generators(int n) {
  const auto c128 = torch::TensorOptions().dtype(torch::kComplexDouble);
  std::vector<at::Tensor> g;
  const c10::complex<double> I(0, 1);
  for (int j = 0; j < n; ++j)
    for (int k = j + 1; k < n; ++k) {
      auto s = torch::zeros({n, n}, c128), a = torch::zeros({n, n}, c128);
      s[j][k] = 1;
      s[k][j] = 1;
      a[j][k] = -I;
      a[k][j] = I;
      g.push_back(s);
      g.push_back(a);
    }
  for (int l = 1; l < n; ++l) {
    auto d = torch::zeros({n, n}, c128);
    const double f = std::sqrt(2.0 / (l * (l + 1.0)));
    for (int m = 0; m < l; ++m) d[m][m] = f;
    d[l][l] = -l * f;
    g.push_back(d);
  }
  return torch::stack(g) * c10::complex<double>(0, 0.5);
}

at::Tensor real_trace(const at::Tensor& m) { return torch::real(m.diagonal(0, -2, -1).sum(-1)); }
}  // namespace

SUN::SUN(const LatticeParams& lattice, const SUNParams& params)
    : extents_(lattice.extents), n_(params.n), beta_(params.beta) {
  if (extents_.size() != 2) throw ConfigError("lattice.extents: SU(N) gauge theory is 2-dimensional");
  if (n_ < 2) throw ConfigError("sun.n: must be >= 2");
  gen_ = make_generators(n_);
  names_ = {"plaq", "action_density"};
  const auto half = std::min(extents_[0], extents_[1]) / 2;
  for (std::int64_t r = 2; r <= std::min<std::int64_t>(4, half); ++r) {
    loop_sizes_.push_back(r);
    names_.push_back("wilson_" + std::to_string(r) + "x" + std::to_string(r));
  }
}

at::Tensor SUN::matrices(const at::Tensor& x) { return torch::view_as_complex(x.contiguous()); }
at::Tensor SUN::storage(const at::Tensor& u) { return torch::view_as_real(u.contiguous()).contiguous(); }

at::Tensor SUN::algebra(const at::Tensor& c) const {
  auto g = gen_.to(c.device(), c.scalar_type() == torch::kFloat32 ? torch::kComplexFloat : torch::kComplexDouble);
  return torch::einsum("...a,aij->...ij", {c.to(g.scalar_type()), g});
}

at::Tensor SUN::components(const at::Tensor& m) const {
  auto g = gen_.to(m.device(), m.scalar_type());
  return -2 * torch::real(torch::einsum("aij,...ji->...a", {g, m}));
}

at::Tensor SUN::plaquettes(const at::Tensor& u) {
  // Dims of u: 0 batch, 1 direction, 2 = x0, 3 = x1; after select(1, mu): 1 = x0, 2 = x1.
  auto u0 = u.select(1, 0), u1 = u.select(1, 1);
  return torch::matmul(torch::matmul(u0, shift(u1, 1, 1)), torch::matmul(dagger(shift(u0, 1, 2)), dagger(u1)));
}

at::Tensor SUN::staples(const at::Tensor& u) {
  auto u0 = u.select(1, 0), u1 = u.select(1, 1);
  // mu = 0: U1(x+e0) U0(x+e1)^+ U1(x)^+  +  U1(x+e0-e1)^+ U0(x-e1)^+ U1(x-e1).
  auto a0 = torch::matmul(torch::matmul(shift(u1, 1, 1), dagger(shift(u0, 1, 2))), dagger(u1)) +
            shift(torch::matmul(torch::matmul(dagger(shift(u1, 1, 1)), dagger(u0)), u1), -1, 2);
  // mu = 1: U0(x+e1) U1(x+e0)^+ U0(x)^+  +  U0(x-e0+e1)^+ U1(x-e0)^+ U0(x-e0).
  auto a1 = torch::matmul(torch::matmul(shift(u0, 1, 2), dagger(shift(u1, 1, 1))), dagger(u0)) +
            shift(torch::matmul(torch::matmul(dagger(shift(u0, 1, 2)), dagger(u1)), u0), -1, 1);
  return torch::stack({a0, a1}, 1);
}

at::Tensor SUN::gauge_transform(const at::Tensor& u, const at::Tensor& g) {
  auto u0 = u.select(1, 0), u1 = u.select(1, 1);
  return torch::stack({torch::matmul(torch::matmul(g, u0), dagger(shift(g, 1, 1))),
                       torch::matmul(torch::matmul(g, u1), dagger(shift(g, 1, 2)))},
                      1);
}

at::Tensor SUN::haar(int n, std::vector<std::int64_t> shape, at::Generator& gen) {
  shape.insert(shape.end(), {n, n, 2});
  auto z = torch::view_as_complex(torch::randn(shape, gen, torch::TensorOptions().dtype(torch::kFloat64)))
               .contiguous();
  // The Q of the QR decomposition of each Gaussian matrix (theories/sun_prior.hpp), divided by det^(1/N).
  auto* m = reinterpret_cast<std::complex<double>*>(z.data_ptr<c10::complex<double>>());
  const std::int64_t count = z.numel() / (n * n);
  for (std::int64_t k = 0; k < count; ++k) {
    gram_schmidt(n, m + k * n * n);
    if (n <= 3) divide_det_root(n, m + k * n * n);
  }
  if (n <= 3) return z;
  auto phase = torch::angle(torch::linalg_det(z));
  return z * torch::polar(torch::ones_like(phase), -phase / n).unsqueeze(-1).unsqueeze(-1);
}

at::Tensor SUN::project(const at::Tensor& m) {
  auto [w, s, vh] = torch::linalg_svd(m, /*full_matrices=*/false);
  auto q = torch::matmul(w, vh);
  auto phase = torch::angle(torch::linalg_det(q));
  return q * torch::polar(torch::ones_like(phase), -phase / m.size(-1)).unsqueeze(-1).unsqueeze(-1);
}

at::Tensor SUN::action(const at::Tensor& x) const {
  // Re tr U_P = Re tr(A B), A = U_0(x) U_1(x + e0), B = [U_1(x) U_0(x + e1)]^+, summed as sum_ij A_ij B_ji (two
  // matmuls instead of the plaquettes' three).
  auto u = matrices(x);
  auto u0 = u.select(1, 0), u1 = u.select(1, 1);
  auto a = torch::matmul(u0, shift(u1, 1, 1)), b = dagger(torch::matmul(u1, shift(u0, 1, 2)));
  return -(beta_ / n_) * torch::real((a * b.transpose(-2, -1)).sum({-2, -1})).sum({1, 2});
}

at::Tensor SUN::force(const at::Tensor& x) const {
  auto u = matrices(x);
  // F_a = (beta/N) Re tr(T_a M) = -(beta / 2N) components(M), M = U A.
  return -(beta_ / (2.0 * n_)) * components(torch::matmul(u, staples(u)));
}

at::Tensor SUN::exp_algebra(const at::Tensor& a) {
  const auto n = a.size(-1);
  auto eye = torch::eye(n, a.options()).expand(a.sizes());
  auto col = [](const at::Tensor& t) { return t.unsqueeze(-1).unsqueeze(-1); };
  if (n == 2) {
    const auto a2 = torch::matmul(a, a);
    const auto t = torch::sqrt(torch::clamp_min(-0.5 * real_trace(a2), 0.0));
    // sin(t)/t, with its Taylor series below t = 1e-4 (error t^6/5040 < 1e-27).
    const auto t2 = t * t;
    const auto small = t < 1e-4;
    const auto sinc = torch::where(small, 1 - t2 / 6 + t2 * t2 / 120, torch::sin(t) / torch::where(small, torch::ones_like(t), t));
    return col(torch::cos(t)).to(a.scalar_type()) * eye + col(sinc).to(a.scalar_type()) * a;
  }
  if (n != 3) return torch::matrix_exp(a);
  // Q = -iA is hermitian and traceless: c0 = det Q = tr(Q^3)/3, c1 = tr(Q^2)/2 >= 0.
  const auto q = a * c10::complex<double>(0, -1);
  const auto q2 = torch::matmul(q, q);
  const auto c0_signed = real_trace(torch::matmul(q2, q)) / 3;
  const auto c1 = 0.5 * real_trace(q2);
  // exp(iQ) for c0 < 0 from that of -Q: f_j(-c0) = (-1)^j conj(f_j(c0)).
  const auto negative = c0_signed < 0;
  const auto c0 = c0_signed.abs();
  const auto c0_max = 2 * torch::pow(c1 / 3, 1.5);
  const auto theta = torch::acos(torch::clamp(c0 / torch::clamp_min(c0_max, 1e-300), -1.0, 1.0));
  const auto u = torch::sqrt(c1 / 3) * torch::cos(theta / 3);
  const auto w = torch::sqrt(c1) * torch::sin(theta / 3);
  const auto w2 = w * w;
  const auto xi0 = torch::where(w.abs() < 0.05, 1 - w2 / 6 * (1 - w2 / 20 * (1 - w2 / 42 * (1 - w2 / 72))),
                                torch::sin(w) / torch::where(w.abs() < 0.05, torch::ones_like(w), w));
  const auto u2 = u * u;
  const auto cw = torch::cos(w);
  const auto e2iu = torch::polar(torch::ones_like(u), 2 * u), emiu = torch::polar(torch::ones_like(u), -u);
  auto cplx = [](const at::Tensor& re, const at::Tensor& im) { return torch::complex(re, im); };
  auto h0 = (u2 - w2) * e2iu + emiu * cplx(8 * u2 * cw, 2 * u * (3 * u2 + w2) * xi0);
  auto h1 = 2 * u * e2iu - emiu * cplx(2 * u * cw, -(3 * u2 - w2) * xi0);
  auto h2 = e2iu - emiu * cplx(cw, 3 * u * xi0);
  const auto den = 9 * u2 - w2;  // >= 2 c1 (theta/3 in [0, pi/6]): zero only at Q = 0
  // For small Q the h_j cancel to O(c1) (f2) and O(c1^(1/2)) (f1) against the same order in den, with absolute
  // errors of rounding; multiplied by Q^2 = O(c1) and Q these stay rounding-sized in exp(iQ). Only below
  // c1 = 1e-12, far from over- or underflow, does the series 1 + A + A^2/2 (error < 1e-18) take over.
  const auto tiny = c1 < 1e-12;
  const auto safe = torch::where(tiny, torch::ones_like(den), den);
  auto f0 = h0 / safe, f1 = h1 / safe, f2 = h2 / safe;
  f0 = torch::where(negative, f0.conj().resolve_conj(), f0);
  f1 = torch::where(negative, -f1.conj().resolve_conj(), f1);
  f2 = torch::where(negative, f2.conj().resolve_conj(), f2);
  auto closed = col(f0) * eye + col(f1) * q + col(f2) * q2;
  return torch::where(col(tiny), eye + a + 0.5 * torch::matmul(a, a), closed);
}

at::Tensor SUN::update_field(const at::Tensor& x, const at::Tensor& p, const at::Tensor& dt) const {
  auto u = matrices(x);
  auto step = exp_algebra(algebra(dt * p).to(u.scalar_type()));
  auto next = torch::matmul(step, u);
  // N = 2, 3: the closed forms are unitary to rounding, and the product drifts from SU(N) only by rounding per
  // step (tested over 10^4 steps); N >= 4: matrix_exp's error is larger, so project.
  if (n_ > 3) next = project(next);
  return storage(next).to(x.scalar_type());
}

at::Tensor SUN::draw_momenta(at::Generator& gen, std::int64_t n) const {
  return torch::randn({n, 2, extents_[0], extents_[1], n_ * n_ - 1}, gen,
                      torch::TensorOptions().dtype(torch::kFloat64));
}

at::Tensor SUN::cold_start(std::int64_t n, const at::TensorOptions& options) const {
  auto eye = torch::eye(n_, torch::TensorOptions().dtype(torch::kComplexDouble));
  auto u = eye.expand({n, 2, extents_[0], extents_[1], n_, n_});
  return storage(u).to(options);
}

Measurement SUN::measure(const at::Tensor& x_in) const {
  auto u = matrices(x_in.to(torch::kFloat64));
  const double V = static_cast<double>(extents_[0] * extents_[1]);
  auto u0 = u.select(1, 0), u1 = u.select(1, 1);
  // Re tr(A B) summed over the lattice, without forming A B: sum_ij A_ij B_ji.
  auto traced = [&](const at::Tensor& a, const at::Tensor& b) {
    return torch::real((a * b.transpose(-2, -1)).sum({-2, -1})).sum({1, 2}) / (V * n_);
  };
  // An R x R loop is l0(x) l1(x + R e0) [l1(x) l0(x + R e1)]^+ with l the lines of length R; R = 1: the plaquette.
  auto loop = [&](const at::Tensor& l0, const at::Tensor& l1, std::int64_t R) {
    return traced(torch::matmul(l0, shift(l1, R, 1)), dagger(torch::matmul(l1, shift(l0, R, 2))));
  };
  auto plaq = loop(u0, u1, 1);
  std::vector<at::Tensor> cols{plaq, -beta_ * plaq};
  auto l0 = u0, l1 = u1;  // lines of length `len`, extended one link at a time (loop_sizes_ ascend)
  std::int64_t len = 1;
  for (auto R : loop_sizes_) {
    for (; len < R; ++len) {
      l0 = torch::matmul(l0, shift(u0, len, 1));
      l1 = torch::matmul(l1, shift(u1, len, 2));
    }
    cols.push_back(loop(l0, l1, R));
  }
  // Polyakov loops along x1, one per x0 (ordered product over x1), and their correlator along x0.
  auto poly = u1.select(2, 0);
  for (std::int64_t k = 1; k < extents_[1]; ++k) poly = torch::matmul(poly, u1.select(2, k));
  auto tr = poly.diagonal(0, -2, -1).sum(-1);  // [B, L0] complex
  std::vector<at::Tensor> corr;
  for (std::int64_t t = 0; t < extents_[0]; ++t)
    corr.push_back(torch::real(tr * shift(tr, t, 1).conj()).mean(1));
  return {torch::stack(cols, 1), torch::stack(corr, 1)};
}

}  // namespace latflow
