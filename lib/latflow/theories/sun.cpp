// SPDX-License-Identifier: MIT
#include "latflow/theories/sun.hpp"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cmath>

#include "latflow/core/error.hpp"
#include "latflow/theories/heatbath.hpp"
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

// The site dimensions 1 .. d of a per-site tensor [B, L0, ..., L_{d-1}, ...].
std::vector<std::int64_t> site_dims(std::int64_t d) {
  std::vector<std::int64_t> dims;
  for (std::int64_t k = 1; k <= d; ++k) dims.push_back(k);
  return dims;
}
}  // namespace

SUN::SUN(const LatticeParams& lattice, const SUNParams& params)
    : extents_(lattice.extents), n_(params.n), beta_(params.beta), defect_(params.defect) {
  const auto d = static_cast<int>(extents_.size());
  if (d < 2 || d > 4) throw ConfigError("lattice.extents: SU(N) gauge theory needs 2 to 4 extents");
  if (n_ < 2) throw ConfigError("sun.n: must be >= 2");
  gen_ = make_generators(n_);
  names_ = {"plaq", "action_density"};
  if (d > 2) {
    for (int mu = 0; mu < d; ++mu)
      for (int nu = mu + 1; nu < d; ++nu) names_.push_back("plaq_" + std::to_string(mu) + std::to_string(nu));
    names_.push_back("poly");
  }
  const auto half = *std::min_element(extents_.begin(), extents_.end()) / 2;
  for (std::int64_t r = 2; r <= std::min<std::int64_t>(4, half); ++r) {
    loop_sizes_.push_back(r);
    names_.push_back("wilson_" + std::to_string(r) + "x" + std::to_string(r));
  }
}

std::vector<std::int64_t> SUN::field_shape() const {
  std::vector<std::int64_t> shape{static_cast<std::int64_t>(extents_.size())};
  shape.insert(shape.end(), extents_.begin(), extents_.end());
  shape.insert(shape.end(), {n_, n_, 2});
  return shape;
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

at::Tensor SUN::plaquette(const at::Tensor& u, int mu, int nu) {
  // Dims of u: 0 batch, 1 direction, 2.. = x0, x1, ...; after select(1, mu): 1 + k = x_k.
  auto um = u.select(1, mu), un = u.select(1, nu);
  return torch::matmul(torch::matmul(um, shift(un, 1, 1 + mu)),
                       torch::matmul(dagger(shift(um, 1, 1 + nu)), dagger(un)));
}

at::Tensor SUN::staples(const at::Tensor& u) {
  const auto d = u.size(1);
  std::vector<at::Tensor> a;
  for (std::int64_t mu = 0; mu < d; ++mu) {
    auto um = u.select(1, mu);
    at::Tensor sum;
    for (std::int64_t nu = 0; nu < d; ++nu) {
      if (nu == mu) continue;
      auto un = u.select(1, nu);
      // U_nu(x+e_mu) U_mu(x+e_nu)^+ U_nu(x)^+  +  U_nu(x+e_mu-e_nu)^+ U_mu(x-e_nu)^+ U_nu(x-e_nu).
      auto s = torch::matmul(torch::matmul(shift(un, 1, 1 + mu), dagger(shift(um, 1, 1 + nu))), dagger(un)) +
               shift(torch::matmul(torch::matmul(dagger(shift(un, 1, 1 + mu)), dagger(um)), un), -1, 1 + nu);
      sum = sum.defined() ? sum + s : s;
    }
    a.push_back(sum);
  }
  return torch::stack(a, 1);
}

at::Tensor SUN::gauge_transform(const at::Tensor& u, const at::Tensor& g) {
  std::vector<at::Tensor> links;
  for (std::int64_t mu = 0; mu < u.size(1); ++mu)
    links.push_back(torch::matmul(torch::matmul(g, u.select(1, mu)), dagger(shift(g, 1, 1 + mu))));
  return torch::stack(links, 1);
}

at::Tensor SUN::haar(int n, std::vector<std::int64_t> shape, at::Generator& gen) {
  shape.insert(shape.end(), {n, n, 2});
  auto z = torch::view_as_complex(torch::randn(shape, gen, torch::TensorOptions().dtype(torch::kFloat64))).contiguous();
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

namespace {
// The defect plaquette's links U_0(x*), U_1(x* + e0), U_0(x* + e1), U_1(x*) (a, b, c, e below), each [B, N, N].
std::array<at::Tensor, 4> defect_links(const at::Tensor& u, const std::vector<std::int64_t>& extents) {
  const auto s = defect_sites(extents);
  auto flat = u.flatten(2, static_cast<std::int64_t>(extents.size()) + 1);  // [B, d, V, N, N]
  auto l0 = flat.select(1, 0), l1 = flat.select(1, 1);
  return {l0.select(1, s.x), l1.select(1, s.x_e0), l0.select(1, s.x_e1), l1.select(1, s.x)};
}
// Re tr U_01(x*) = Re tr(a b c^+ e^+), [B].
at::Tensor defect_trace(const at::Tensor& u, const std::vector<std::int64_t>& extents) {
  const auto [a, b, c, e] = defect_links(u, extents);
  auto p = torch::matmul(torch::matmul(a, b), SUN::dagger(torch::matmul(e, c)));
  return torch::real(p.diagonal(0, -2, -1).sum(-1));
}
}  // namespace

at::Tensor SUN::action(const at::Tensor& x) const {
  // Re tr U_P = Re tr(A B), A = U_0(x) U_1(x + e0), B = [U_1(x) U_0(x + e1)]^+, summed as sum_ij A_ij B_ji (two
  // matmuls instead of the plaquettes' three).
  auto u = matrices(x);
  const int d = static_cast<int>(extents_.size());
  at::Tensor sum;  // over planes; one plane in 2D
  for (int mu = 0; mu < d; ++mu)
    for (int nu = mu + 1; nu < d; ++nu) {
      auto um = u.select(1, mu), un = u.select(1, nu);
      auto a = torch::matmul(um, shift(un, 1, 1 + mu)), b = dagger(torch::matmul(un, shift(um, 1, 1 + nu)));
      auto s = torch::real((a * b.transpose(-2, -1)).sum({-2, -1})).sum(site_dims(d));
      sum = sum.defined() ? sum + s : s;
    }
  if (defect_ != 1) sum = sum + (defect_ - 1) * defect_trace(u, extents_);
  return -(beta_ / n_) * sum;
}

at::Tensor SUN::force(const at::Tensor& x) const {
  auto u = matrices(x);
  // F_a = (beta/N) Re tr(T_a M) = -(beta / 2N) components(M), M = U A.
  auto F = (-(beta_ / (2.0 * n_)) * components(torch::matmul(u, staples(u)))).contiguous();
  if (defect_ != 1) {
    // Each of the defect's four links gets (c - 1) times the part of its U A that is the defect plaquette, cyclically
    // permuted to start at that link: a b c^+ e^+, b c^+ e^+ a, c b^+ a^+ e, e c b^+ a^+.
    const auto [a, b, c, e] = defect_links(u, extents_);
    auto mm = [](const at::Tensor& p, const at::Tensor& q) { return torch::matmul(p, q); };
    auto ce = mm(SUN::dagger(c), SUN::dagger(e)), ba = mm(SUN::dagger(b), SUN::dagger(a));
    auto M = torch::stack({mm(mm(a, b), ce), mm(mm(b, ce), a), mm(mm(c, ba), e), mm(mm(e, c), ba)}, 1);
    auto extra = -(beta_ / (2.0 * n_)) * (defect_ - 1) * components(M);  // [B, 4, N^2 - 1]
    const auto s = defect_sites(extents_);
    auto flat = F.view({F.size(0), F.size(1), -1, F.size(-1)});  // [B, d, V, N^2 - 1], a view of F
    flat.select(1, 0).select(1, s.x).add_(extra.select(1, 0));
    flat.select(1, 1).select(1, s.x_e0).add_(extra.select(1, 1));
    flat.select(1, 0).select(1, s.x_e1).add_(extra.select(1, 2));
    flat.select(1, 1).select(1, s.x).add_(extra.select(1, 3));
  }
  return F;
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
    const auto sinc =
        torch::where(small, 1 - t2 / 6 + t2 * t2 / 120, torch::sin(t) / torch::where(small, torch::ones_like(t), t));
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
  std::vector<std::int64_t> shape{n, static_cast<std::int64_t>(extents_.size())};
  shape.insert(shape.end(), extents_.begin(), extents_.end());
  shape.push_back(n_ * n_ - 1);
  return torch::randn(shape, gen, torch::TensorOptions().dtype(torch::kFloat64));
}

at::Tensor SUN::cold_start(std::int64_t n, const at::TensorOptions& options) const {
  auto eye = torch::eye(n_, torch::TensorOptions().dtype(torch::kComplexDouble));
  std::vector<std::int64_t> shape{n, static_cast<std::int64_t>(extents_.size())};
  shape.insert(shape.end(), extents_.begin(), extents_.end());
  shape.insert(shape.end(), {n_, n_});
  return storage(eye.expand(shape)).to(options);
}

void SUN::heatbath_sweep(at::Tensor& x, const std::vector<std::uint64_t>& streams, int overrelax) const {
  const heatbath::Lattice lattice(extents_);
  auto* data = reinterpret_cast<std::complex<double>*>(x.data_ptr<double>());
  const std::int64_t per_config = x[0].numel() / 2;
  at::parallel_for(0, x.size(0), 1, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t b = begin; b < end; ++b) {
      SplitMix64 rng(streams[static_cast<std::size_t>(b)]);
      auto* config = data + b * per_config;
      heatbath::sun_sweep(config, lattice, n_, beta_, heatbath::Move::kHeatBath, rng);
      for (int k = 0; k < overrelax; ++k)
        heatbath::sun_sweep(config, lattice, n_, beta_, heatbath::Move::kOverrelax, rng);
    }
  });
}

Measurement SUN::measure(const at::Tensor& x_in) const {
  auto u = matrices(x_in.to(torch::kFloat64));
  const int d = static_cast<int>(extents_.size());
  double V = 1;
  for (auto l : extents_) V *= static_cast<double>(l);
  const double planes = d * (d - 1) / 2.0;
  // Re tr(A B) summed over the lattice, without forming A B: sum_ij A_ij B_ji.
  auto traced = [&](const at::Tensor& a, const at::Tensor& b) {
    return torch::real((a * b.transpose(-2, -1)).sum({-2, -1})).sum(site_dims(d)) / (V * n_);
  };
  // An R x R loop in the (mu, nu) plane is l_mu(x) l_nu(x + R e_mu) [l_nu(x) l_mu(x + R e_nu)]^+ with l the
  // lines of length R; R = 1: the plaquette. Summed over the planes.
  std::vector<at::Tensor> lines;  // lines of length `len` along each direction, extended one link at a time
  for (int mu = 0; mu < d; ++mu) lines.push_back(u.select(1, mu));
  std::vector<at::Tensor> per_plane;
  auto loops = [&](std::int64_t R, bool keep) {
    at::Tensor sum;
    for (int mu = 0; mu < d; ++mu)
      for (int nu = mu + 1; nu < d; ++nu) {
        const auto &lm = lines[mu], &ln = lines[nu];
        auto w = traced(torch::matmul(lm, shift(ln, R, 1 + mu)), dagger(torch::matmul(ln, shift(lm, R, 1 + nu))));
        if (keep) per_plane.push_back(w);
        sum = sum.defined() ? sum + w : w;
      }
    return sum / planes;
  };
  auto plaq = loops(1, d > 2);
  auto density = -beta_ * planes * plaq;  // S / V
  if (defect_ != 1) density = density - (beta_ / n_) * (defect_ - 1) * defect_trace(u, extents_) / V;
  std::vector<at::Tensor> cols{plaq, density};
  cols.insert(cols.end(), per_plane.begin(), per_plane.end());
  // Polyakov loops along the last direction, one per x = (x0, ..., x_{d-2}) (ordered product over x_{d-1}), and
  // their correlator along x0.
  auto ut = u.select(1, d - 1);
  auto poly = ut.select(d, 0);
  for (std::int64_t k = 1; k < extents_[d - 1]; ++k) poly = torch::matmul(poly, ut.select(d, k));
  auto tr = poly.diagonal(0, -2, -1).sum(-1);  // [B, L0, ..., L_{d-2}] complex
  const auto rest = site_dims(d - 1);
  // Real and imaginary parts averaged separately: a complex reduction's order depends on the batch size.
  if (d > 2) cols.push_back(torch::hypot(torch::real(tr).mean(rest), torch::imag(tr).mean(rest)) / n_);
  std::int64_t len = 1;
  for (auto R : loop_sizes_) {
    for (; len < R; ++len)
      for (int mu = 0; mu < d; ++mu) lines[mu] = torch::matmul(lines[mu], shift(u.select(1, mu), len, 1 + mu));
    cols.push_back(loops(R, false));
  }
  std::vector<at::Tensor> corr;
  for (std::int64_t t = 0; t < extents_[0]; ++t) corr.push_back(torch::real(tr * shift(tr, t, 1).conj()).mean(rest));
  return {torch::stack(cols, 1), torch::stack(corr, 1)};
}

}  // namespace latflow
