// SPDX-License-Identifier: MIT
// Flow layers and models: log-det against the autograd Jacobian (float64), invertibility, translation and Z2
// equivariance, spline domain handling.
// torch (through glog) defines CHECK; include it first so that Catch's CHECK wins.
#include <torch/torch.h>

#include <catch2/catch.hpp>

#include <ATen/CPUGeneratorImpl.h>

#include "support/torch_support.hpp"

#include "latflow/core/error.hpp"
#include "latflow/flows/adam.hpp"
#include "latflow/flows/flow.hpp"
#include "latflow/kernels/periodic_conv.hpp"
#include "latflow/theories/theory.hpp"

using namespace latflow;

namespace {

FlowParams params(const std::string& coupling, bool z2 = false) {
  FlowParams p;
  p.coupling = choice<Coupling>(coupling);
  p.z2 = z2;
  p.layers = 4;
  p.hidden = {4, 4};
  p.dtype = NetDtype::float64;
  p.activation = Activation::tanh;
  p.spline_bins = 5;
  p.spline_bound = 2.0;
  return p;
}

using testing::autograd_logdet;
using testing::randomise;
using testing::use_fused;

// N(0, s^2) weights give conv outputs that grow as the square root of the fan-in, 3^d taps: in 4D they are 3 times
// the 2D ones, and random splines that steep are inverted only to ~1e-9 or not at all (a trained flow is far
// smoother). The 4D cases divide s by 3 to test the same regime as 2D.
double fan_scale(const std::vector<int64_t>& ext) { return ext.size() == 4 ? 3.0 : 1.0; }

const std::vector<std::vector<int64_t>> kLattices{{6}, {4, 4}, {4, 6}, {2, 4, 4}, {2, 4, 2, 2}};

}  // namespace

TEST_CASE("every coupling layer's log-det equals the autograd Jacobian's (float64)", "[flows]") {
  torch::manual_seed(11);
  for (const auto& ext : kLattices) {
    for (auto [kind, z2] : std::vector<std::pair<std::string, bool>>{
             {"affine", false}, {"affine", true}, {"spline", false}, {"spline", true}}) {
      for (int parity = 0; parity < 2; ++parity) {
        CAPTURE(ext, kind, z2, parity);
        auto p = params(kind, z2);
        auto mask = checkerboard(ext, parity, torch::kFloat64);
        std::shared_ptr<CouplingLayer> layer;
        if (kind == "spline")
          layer = std::make_shared<SplineCoupling>(mask, p, static_cast<int>(ext.size()));
        else
          layer = std::make_shared<AffineCoupling>(mask, p, static_cast<int>(ext.size()));
        layer->to(torch::kFloat64);
        randomise(*layer, 0.5 / fan_scale(ext));
        std::vector<int64_t> shape{1};
        shape.insert(shape.end(), ext.begin(), ext.end());
        // Scale 1.5 with spline bound 2 puts some sites outside [-B, B] (identity tails).
        auto x = 1.5 * torch::randn(shape, torch::kFloat64);
        auto [y, ld] = layer->forward(x);
        double ref = autograd_logdet([&](const torch::Tensor& v) { return layer->forward(v).first; }, x);
        CHECK(ld.item<double>() == Approx(ref).margin(1e-10));
        auto [yi, ldi] = layer->inverse(y.detach());
        CHECK((yi - x).abs().max().item<double>() < 1e-10);
        CHECK(ldi.item<double>() == Approx(-ld.item<double>()).margin(1e-10));
      }
    }
  }
}

TEST_CASE("spline coupling: identity outside [-B, B], finite gradients at and beyond the edges", "[flows]") {
  torch::manual_seed(3);
  auto p = params("spline");
  auto mask = checkerboard({4, 4}, 0, torch::kFloat64);
  SplineCoupling layer(mask, p, 2);
  layer.to(torch::kFloat64);
  randomise(layer, 1.0);
  auto x =
      torch::tensor({-7.0, -2.0, -1.9999999, 0.0, 1.0, 2.0, 2.5, 50.0, -0.3, 0.3, 1.99, -1.99, 3.0, -3.0, 0.5, -0.5},
                    torch::kFloat64)
          .view({1, 4, 4})
          .requires_grad_(true);
  auto [y, ld] = layer.forward(x);
  auto outside = (x.abs() >= 2.0);
  CHECK(torch::equal(torch::masked_select(y, outside), torch::masked_select(x, outside)));
  (y.sum() + ld.sum()).backward();
  CHECK(torch::isfinite(x.grad()).all().item<bool>());
  for (auto& q : layer.parameters()) CHECK(torch::isfinite(q.grad()).all().item<bool>());
}

TEST_CASE("flow model: forward and inverse agree on x and log q; a fresh model is the prior", "[flows]") {
  torch::manual_seed(5);
  LatticeParams lat;
  for (auto ext : std::vector<std::vector<int64_t>>{{4, 6}, {2, 4, 2, 4}})
    for (std::string kind : {"affine", "spline", "fourier"}) {
      lat.extents = ext;
      CAPTURE(ext, kind);
      auto kind_params = [&]() {
        auto p = params(kind == "fourier" ? "affine" : kind);
        if (kind == "fourier") p.prior = Prior::fourier;
        return p;
      };
      FlowModel fresh = make_scalar_flow(lat, kind_params());
      auto z0 = fresh->draw_prior(8, 42);
      auto [x0, lq0] = fresh->forward(z0);
      CHECK((x0 - z0).abs().max().item<double>() < 1e-12);
      CHECK((lq0 - fresh->prior_log_prob(z0)).abs().max().item<double>() < 1e-12);

      FlowModel model = make_scalar_flow(lat, kind_params());
      // Strongly random splines have bins with slopes far from 1 whose inverse amplifies rounding; 0.2 keeps the
      // composition well conditioned, like a trained flow.
      randomise(*model, (kind == "spline" ? 0.2 : 0.4) / fan_scale(ext));
      auto z = model->draw_prior(8, 43);
      auto [x, lq] = model->forward(z);
      auto [lq_inv, z_back] = model->log_prob(x.detach());
      CHECK((z_back - z).abs().max().item<double>() < 1e-10);
      CHECK((lq_inv - lq).abs().max().item<double>() < 1e-9);
    }
}

TEST_CASE("flow model log q equals the whole-model autograd Jacobian", "[flows]") {
  torch::manual_seed(9);
  LatticeParams lat;
  for (auto ext : std::vector<std::vector<int64_t>>{{4, 4}, {2, 2, 2, 4}})
    for (std::string prior : {"normal", "fourier"}) {
      lat.extents = ext;
      CAPTURE(ext, prior);
      auto p = params("affine", true);
      p.prior = choice<Prior>(prior);
      FlowModel model = make_scalar_flow(lat, p);
      randomise(*model, 0.4);
      auto z = model->draw_prior(1, 7);
      auto [x, lq] = model->forward(z);
      double ld = autograd_logdet([&](const torch::Tensor& v) { return model->forward(v).first; }, z);
      CHECK(lq.item<double>() == Approx(model->prior_log_prob(z).item<double>() - ld).margin(1e-9));
    }
}

TEST_CASE("Fourier prior layer: log-det, inverse, translations, Z2, the same a(p) on every volume", "[flows]") {
  torch::manual_seed(13);
  for (const auto& ext : std::vector<std::vector<int64_t>>{{6}, {5}, {4, 4}, {3, 4}, {4, 6}, {2, 4, 4}}) {
    CAPTURE(ext);
    const int d = static_cast<int>(ext.size());
    FourierScale layer(d);
    layer.to(torch::kFloat64);
    randomise(layer, 0.5);
    std::vector<int64_t> shape{3};
    shape.insert(shape.end(), ext.begin(), ext.end());
    auto x = torch::randn(shape, torch::kFloat64);
    auto [y, ld] = layer.forward(x);
    double ref = autograd_logdet([&](const torch::Tensor& v) { return layer.forward(v).first; }, x.narrow(0, 0, 1));
    CHECK(ld[0].item<double>() == Approx(ref).margin(1e-10));
    CHECK((ld - ld[0]).abs().max().item<double>() == 0.0);
    auto [xi, ldi] = layer.inverse(y);
    CHECK((xi - x).abs().max().item<double>() < 1e-12);
    CHECK((ldi + ld).abs().max().item<double>() < 1e-12);
    // Any translation (not only the checkerboard's), and phi -> -phi.
    for (int mu = 0; mu < d; ++mu) {
      auto ys = layer.forward(torch::roll(x, {1}, {mu + 1})).first;
      CHECK((ys - torch::roll(y, {1}, {mu + 1})).abs().max().item<double>() < 1e-12);
    }
    CHECK((layer.forward(-x).first + y).abs().max().item<double>() < 1e-12);
    // Against a naive reference: x -> sum_y C(x - y) z(y), with C the inverse DFT of exp(a(p)) (real, even).
    if (d == 2) {
      auto a = layer.log_scale(ext);
      auto C = torch::real(torch::fft::ifftn(torch::exp(a).to(torch::kComplexDouble)));
      auto naive = torch::zeros_like(x);
      for (int64_t i = 0; i < ext[0]; ++i)
        for (int64_t j = 0; j < ext[1]; ++j)
          naive += x.narrow(1, i, 1).narrow(2, j, 1) * torch::roll(C, {i, j}, {0, 1});
      CHECK((naive - y).abs().max().item<double>() < 1e-12);
    }
  }
  // a depends on the momentum only through |p^|: L = 8's momenta are every other of L = 16's.
  FourierScale layer(2);
  layer.to(torch::kFloat64);
  randomise(layer, 0.5);
  auto a8 = layer.log_scale({8, 8}), a16 = layer.log_scale({16, 16});
  CHECK((a8 - a16.slice(0, 0, 16, 2).slice(1, 0, 16, 2)).abs().max().item<double>() < 1e-14);
  CHECK((a8 - a8.flip({0}).roll({1}, {0})).abs().max().item<double>() < 1e-14);  // a(p) = a(-p)
}

TEST_CASE("flow model commutes with translations by the mask period and, with z2, with phi -> -phi", "[flows]") {
  torch::manual_seed(21);
  LatticeParams lat;
  for (auto ext : std::vector<std::vector<int64_t>>{{6, 4}, {4, 2, 4, 2}})
    for (auto [kind, z2] : std::vector<std::pair<std::string, bool>>{
             {"affine", false}, {"affine", true}, {"spline", false}, {"spline", true}, {"fourier", true}}) {
      lat.extents = ext;
      const int d = static_cast<int>(ext.size());
      CAPTURE(ext, kind, z2);
      auto p = params(kind == "fourier" ? "affine" : kind, z2);
      if (kind == "fourier") p.prior = Prior::fourier;
      FlowModel model = make_scalar_flow(lat, p);
      randomise(*model, 0.4);
      auto z = model->draw_prior(4, 1);
      auto [x, lq] = model->forward(z);
      for (int mu = 0; mu < d; ++mu) {
        // Shifts by 2 keep the checkerboard; so do shifts by 1 in two directions at once.
        auto zs = torch::roll(z, {2}, {mu + 1});
        auto [xs, lqs] = model->forward(zs);
        CHECK((xs - torch::roll(x, {2}, {mu + 1})).abs().max().item<double>() < 1e-10);
        CHECK((lqs - lq).abs().max().item<double>() < 1e-9);
      }
      auto [xd, lqd] = model->forward(torch::roll(z, {1, 1}, {1, 2}));
      CHECK((xd - torch::roll(x, {1, 1}, {1, 2})).abs().max().item<double>() < 1e-10);
      auto [xm, lqm] = model->forward(-z);
      if (z2) {
        CHECK((xm + x).abs().max().item<double>() < 1e-10);
        CHECK((lqm - lq).abs().max().item<double>() < 1e-9);
      } else {
        // Without the symmetrisation a random net is not Z2-equivariant: the test above can fail.
        CHECK((xm + x).abs().max().item<double>() > 1e-3);
      }
    }
}

TEST_CASE("prior draws depend only on the stream seed", "[flows]") {
  LatticeParams lat;
  lat.extents = {4, 4};
  FlowModel model = make_scalar_flow(lat, params("affine"));
  CHECK(torch::equal(model->draw_prior(3, 99), model->draw_prior(3, 99)));
  CHECK(!torch::equal(model->draw_prior(3, 99), model->draw_prior(3, 100)));
  // float32 models see the float64 draws rounded once.
  auto p32 = params("affine");
  p32.dtype = NetDtype::float32;
  FlowModel m32 = make_scalar_flow(lat, p32);
  CHECK(torch::equal(m32->draw_prior(3, 99), model->draw_prior(3, 99).to(torch::kFloat32)));
}

TEST_CASE("standard_normal: torch::randn's numbers bit for bit, for any thread count", "[flows]") {
  // Sizes below 16 (LibTorch's one-by-one path), multiples of 16, and others (whose last 16 are drawn again).
  const int threads = at::get_num_threads();
  for (std::int64_t n : {1, 7, 15, 16, 17, 25 * 3, 64 * 37, 5000 * 16 + 9}) {
    CAPTURE(n);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(1234 + n);
    const auto ref = torch::randn({n}, gen, torch::TensorOptions().dtype(torch::kFloat64));
    for (int t : {1, 2, 3}) {
      at::set_num_threads(t);
      const auto z = standard_normal({n}, 1234 + n);
      CHECK(z.sizes() == ref.sizes());
      CHECK(torch::equal(z, ref));
    }
  }
  at::set_num_threads(threads);
  const auto z = standard_normal({4, 5, 6}, 3);
  CHECK(z.sizes() == torch::IntArrayRef{4, 5, 6});
  // Box-Muller's numbers are standard normal: mean and variance of 80009 draws within 4 sigma.
  const auto big = standard_normal({80009}, 5);
  CHECK(std::abs(big.mean().item<double>()) < 4 / std::sqrt(80009.0));
  CHECK(std::abs(big.var().item<double>() - 1) < 4 * std::sqrt(2 / 80009.0));
}

TEST_CASE("fused conv nets equal the LibTorch-ops nets in value and every gradient", "[flows]") {
  torch::manual_seed(31);
  // Hidden and output widths pick every kernel variant: blocks of 4 or 8 output channels with partial blocks
  // (hidden 5 4, 3 outputs), and the dot-product form for <= 4 outputs from a multiple of 8 inputs (hidden 8 16 with
  // 1, 2 or 3 outputs; with 1 input channel also the first layer's input-gradient).
  struct Case {
    std::vector<int64_t> ext;
    int kernel;
    std::string act;
    int cin;
    std::vector<int> hidden;
    int cout;
  };
  const std::vector<int> h54{5, 4}, h816{8, 16};
  const std::vector<Case> cases{{{7}, 3, "leaky_relu", 1, h54, 3},
                                {{4, 6}, 3, "tanh", 2, h54, 3},
                                {{8, 8}, 3, "leaky_relu", 1, h54, 3},
                                {{5, 4}, 5, "silu", 3, h54, 3},
                                {{2, 4, 4}, 3, "tanh", 1, h54, 3},
                                {{2, 3}, 5, "leaky_relu", 2, h54, 3},
                                {{6, 6}, 1, "silu", 2, h54, 3},
                                {{8, 8}, 3, "leaky_relu", 1, h816, 2},
                                {{4, 6}, 3, "tanh", 1, h816, 1},
                                {{5}, 3, "silu", 2, h816, 3},
                                {{2, 4, 3}, 3, "leaky_relu", 1, h816, 2},
                                {{2, 4, 2, 3}, 3, "tanh", 1, h54, 3},
                                {{2, 2, 4, 2}, 3, "leaky_relu", 1, h816, 2}};
  // Batch 5: uneven chunks over the threads; batch 6: float32 on AVX-512 runs the hidden convs on sample pairs.
  for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
    for (int threads : {1, 2}) {
      at::set_num_threads(threads);
      for (const auto& c : cases)
        for (std::int64_t batch : {5, 6}) {
          CAPTURE(c.ext, c.kernel, c.act, c.cin, c.hidden, c.cout, threads, dtype == torch::kFloat64, batch);
          const int d = static_cast<int>(c.ext.size());
          ConvNet net(d, c.cin, c.hidden, c.cout, c.kernel, choice<Activation>(c.act));
          randomise(*net, 0.5);
          net->to(dtype);
          std::vector<int64_t> shape{batch, c.cin};
          shape.insert(shape.end(), c.ext.begin(), c.ext.end());
          auto x = torch::randn(shape, torch::TensorOptions().dtype(dtype));
          auto probe = torch::randn({batch, c.cout}, torch::TensorOptions().dtype(dtype));
          auto run = [&](bool fused) {
            use_fused(*net, fused);
            auto xv = x.clone().requires_grad_(true);
            net->zero_grad();
            auto y = net->forward(xv);
            // A loss that weights every output element differently.
            auto w = probe.view({batch, c.cout, 1}).expand({batch, c.cout, y[0][0].numel()}).reshape(y.sizes()) *
                     torch::arange(y.numel(), y.options()).reshape(y.sizes()).cos();
            (y * w).sum().backward();
            std::vector<torch::Tensor> out{y.detach(), xv.grad()};
            for (auto& p : net->parameters()) out.push_back(p.grad().clone());
            return out;
          };
          auto fused = run(true), ops = run(false);
          use_fused(*net, true);
          const double tol = dtype == torch::kFloat64 ? 1e-12 : 2e-5;
          REQUIRE(fused.size() == ops.size());
          for (std::size_t i = 0; i < fused.size(); ++i) {
            CAPTURE(i);
            CHECK(fused[i].sizes() == ops[i].sizes());
            const double scale = 1 + ops[i].abs().max().item<double>();
            CHECK((fused[i] - ops[i]).abs().max().item<double>() < tol * scale);
          }
        }
    }
  }
  at::set_num_threads(1);
}

TEST_CASE("an affine coupling's kernels equal its LibTorch formulas in value and every gradient", "[flows]") {
  torch::manual_seed(37);
  // On the CPU with fused nets an AffineCoupling runs pconv's kernels (the first conv shared between c and -c, the
  // last evaluated at the active sites only, samples in blocks of 16): in place without autograd, as one node with
  // a hand-written backward with autograd. use_fused(layer, false) gives the LibTorch formulas, the reference.
  struct Case {
    std::vector<int64_t> ext;
    int kernel;
    std::string act;
    std::vector<int> hidden;
  };
  // 2D 3x3 hidden-to-hidden convs use Winograd's F(4x4, 3x3) (extents multiples of 4) or F(2x2, 3x3) (even
  // extents), with partial channel blocks (5, 12); the rest the direct kernels.
  const std::vector<Case> cases{
      {{8, 8}, 3, "leaky_relu", {8, 8}}, {{4, 12}, 3, "silu", {16, 8}},  {{6, 10}, 3, "tanh", {5, 12, 8}},
      {{2, 4}, 3, "silu", {8, 8}},       {{7}, 3, "tanh", {5, 4}},       {{5, 4}, 5, "silu", {8, 16}},
      {{2, 4, 3}, 3, "leaky_relu", {8}}, {{6, 6}, 1, "tanh", {4, 8, 3}}, {{4, 6}, 3, "leaky_relu", {}}};
  for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
    for (int threads : {1, 2}) {
      at::set_num_threads(threads);
      for (const auto& c : cases) {
        for (bool z2 : {false, true}) {
          for (int parity = 0; parity < 2; ++parity) {
            CAPTURE(c.ext, c.kernel, c.act, c.hidden, z2, parity, threads, dtype == torch::kFloat64);
            FlowParams p;
            p.z2 = z2;
            p.hidden = c.hidden;
            p.kernel = c.kernel;
            p.activation = choice<Activation>(c.act);
            AffineCoupling layer(checkerboard(c.ext, parity, dtype), p, static_cast<int>(c.ext.size()));
            layer.to(dtype);
            randomise(layer, 0.3);           // (larger weights saturate tanh(s) in the 16-channel nets)
            std::vector<int64_t> shape{37};  // more than two blocks of 16, uneven over 2 threads
            shape.insert(shape.end(), c.ext.begin(), c.ext.end());
            auto x = torch::randn(shape, torch::TensorOptions().dtype(dtype));
            const double tol = dtype == torch::kFloat64 ? 1e-12 : 2e-5;
            auto close = [&](const torch::Tensor& a, const torch::Tensor& ref, double scale) {
              return (a.to(torch::kFloat64) - ref.to(torch::kFloat64)).abs().max().item<double>() < tol * scale;
            };
            use_fused(layer, false);
            auto [y_ref, ld_ref] = layer.forward(x);
            auto [x_ref, ldi_ref] = layer.inverse(y_ref.detach());
            use_fused(layer, true);
            {
              torch::NoGradGuard no_grad;  // the inference kernel
              auto [y, ld] = layer.forward(x);
              auto [xi, ldi] = layer.inverse(y);
              CHECK(ld.scalar_type() == torch::kFloat64);
              CHECK(close(y, y_ref, 1 + y_ref.abs().max().item<double>()));
              CHECK(close(ld, ld_ref, static_cast<double>(x[0].numel())));
              CHECK(close(xi, x_ref, 1 + x.abs().max().item<double>()));
              CHECK(close(xi, x, 1 + x.abs().max().item<double>()));
              CHECK(close(ldi, -ld, static_cast<double>(x[0].numel())));
              // The frozen sites are untouched, exactly.
              auto frozen = checkerboard(c.ext, parity, torch::kBool).unsqueeze(0).expand_as(x);
              CHECK(torch::equal(torch::masked_select(y, frozen), torch::masked_select(x, frozen)));
              // A sample's result does not depend on the batch around it (chunks, threads, Winograd tile blocks):
              // bitwise, so that runs with any number of ranks and threads give the same ensemble.
              auto [y5, ld5] = layer.forward(x.narrow(0, 3, 5));
              CHECK(torch::equal(y5, y.narrow(0, 3, 5)));
              CHECK(torch::equal(ld5, ld.narrow(0, 3, 5)));
            }
            // The training node, forward and inverse: values and the gradients of a loss in y and log|det| (or
            // only one of them: the other output then has no gradient), with the weights trained or held
            // constant (path gradient: input gradients only). The reference is the LibTorch formulas in float64;
            // in float32 the node's error must be within that of the LibTorch formulas in float32 (its size
            // depends on the conditioning: 1 - tanh^2 of saturated scales loses digits in either), plus 1e-5 for
            // values (Winograd's F(4x4, 3x3): its transforms cost a few tens of ulp, measured up to 3.8e-6 here)
            // and 1e-4 for gradients (Winograd's rounding, then sums of 10^3 - 10^4 float products in another
            // order: measured up to 2e-5 of the largest element; a wrong formula is off by far more).
            // Not in float32 with leaky_relu: there Winograd's rounding flips the kink's derivative (1 or 0.01) of
            // the odd value next to 0 (gradients off by up to 3e-3 of their largest element, measured), so that
            // combination runs the direct convolutions (float64 checks Winograd's backward with every activation;
            // tests/test_kernels.cpp checks this shipped default against float64 with a norm-wise tolerance).
            const bool winograd = !(dtype == torch::kFloat32 && c.act == "leaky_relu");
            auto wy = torch::arange(x.numel(), torch::kFloat64).reshape(x.sizes()).cos();
            auto wl = torch::arange(x.size(0), torch::kFloat64).sin();
            struct Loss {
              bool y, ld, weights;
            };
            for (bool inverse : {false, true}) {
              for (auto loss : {Loss{true, true, true}, Loss{true, false, true}, Loss{false, true, true},
                                Loss{true, true, false}}) {
                CAPTURE(inverse, loss.y, loss.ld, loss.weights);
                auto run = [&](bool fused, torch::Dtype dt) {
                  use_fused(layer, fused, winograd);
                  layer.to(dt);
                  for (auto& q : layer.parameters()) q.requires_grad_(loss.weights);
                  layer.zero_grad();
                  auto xv = x.to(dt, /*non_blocking=*/false, /*copy=*/true).requires_grad_(true);
                  auto [y, ld] = inverse ? layer.inverse(xv) : layer.forward(xv);
                  auto L = torch::zeros({}, torch::kFloat64);
                  if (loss.y) L = L + (y.to(torch::kFloat64) * wy).sum();
                  if (loss.ld) L = L + (ld.to(torch::kFloat64) * wl).sum();
                  L.backward();
                  std::vector<torch::Tensor> out{y.detach(), ld.detach(), xv.grad()};
                  if (loss.weights)
                    for (auto& q : layer.parameters()) out.push_back(q.grad().clone());
                  for (auto& t : out) t = t.to(torch::kFloat64);
                  return out;
                };
                auto truth = run(false, torch::kFloat64), node = run(true, dtype), ops = run(false, dtype);
                use_fused(layer, true);
                layer.to(dtype);
                for (auto& q : layer.parameters()) q.requires_grad_(true);
                REQUIRE(node.size() == truth.size());
                for (std::size_t i = 0; i < node.size(); ++i) {
                  CAPTURE(i);
                  CHECK(node[i].sizes() == truth[i].sizes());
                  const double scale = 1 + truth[i].abs().max().item<double>();
                  const double err = (node[i] - truth[i]).abs().max().item<double>() / scale;
                  const double err_ops = (ops[i] - truth[i]).abs().max().item<double>() / scale;
                  CAPTURE(err, err_ops);
                  if (dtype == torch::kFloat64)
                    CHECK(err < 1e-12 * (i == 1 ? static_cast<double>(x[0].numel()) : 1.0));
                  else
                    CHECK(err <= 4 * err_ops + (i < 2 ? 1e-5 : 1e-4));
                }
              }
            }
          }
        }
      }
    }
  }
  at::set_num_threads(1);
}

TEST_CASE("a flow without autograd (kernels in place) gives the autograd path's x and log q", "[flows]") {
  torch::manual_seed(41);
  LatticeParams lat;
  lat.extents = {8, 4};
  for (std::string prior : {"normal", "fourier"}) {
    for (auto dtype : {std::string("float64"), std::string("float32")}) {
      CAPTURE(prior, dtype);
      auto p = params("affine", true);
      p.prior = choice<Prior>(prior);
      p.dtype = choice<NetDtype>(dtype);
      p.hidden = {8, 8};
      FlowModel model = make_scalar_flow(lat, p);
      randomise(*model, 0.4);
      const double tol = dtype == "float64" ? 1e-11 : 1e-4;
      auto z = model->draw_prior(19, 3);
      auto z_copy = z.clone();
      auto [x_ref, lq_ref] = model->forward(z);  // autograd on: LibTorch formulas, a new tensor per layer
      auto [lqi_ref, zi_ref] = model->log_prob(x_ref.detach());
      torch::NoGradGuard no_grad;
      auto [x, lq] = model->forward(z);
      CHECK(torch::equal(z, z_copy));  // the caller's draws are not overwritten by the in-place layers
      CHECK((x - x_ref).abs().max().item<double>() < tol * (1 + x_ref.abs().max().item<double>()));
      CHECK((lq - lq_ref).abs().max().item<double>() < tol * (1 + lq_ref.abs().max().item<double>()));
      auto x_copy = x.clone();
      auto [lqi, zi] = model->log_prob(x);
      CHECK(torch::equal(x, x_copy));
      CHECK((zi - z).abs().max().item<double>() < tol * (1 + z.abs().max().item<double>()));
      CHECK((lqi - lq).abs().max().item<double>() < tol * (1 + lq.abs().max().item<double>()));
      CHECK((lqi - lqi_ref).abs().max().item<double>() < tol * (1 + lq.abs().max().item<double>()));
    }
  }
}

TEST_CASE("a net first applied while sampling can be trained afterwards", "[flows]") {
  torch::manual_seed(5);
  ConvNet net(2, 1, std::vector<int>{8, 8}, 2, 3, Activation::leaky_relu);
  randomise(*net, 0.3);
  auto x = torch::randn({3, 1, 4, 4}, torch::kFloat64);
  net->to(torch::kFloat64);
  {
    torch::InferenceMode im;
    net->forward(x);  // builds the neighbour table for 4x4 inside inference mode
  }
  auto xv = x.clone().requires_grad_(true);
  net->forward(xv).square().sum().backward();
  CHECK(torch::isfinite(xv.grad()).all().item<bool>());
  for (auto& p : net->parameters()) CHECK(p.grad().defined());
}

namespace {

// Flattened gradients of the model's parameters after `loss.backward()` (zero where a parameter got none).
torch::Tensor flat_gradient(FlowModelImpl& model, const torch::Tensor& loss) {
  model.zero_grad();
  loss.backward();
  std::vector<torch::Tensor> g;
  for (auto& p : model.parameters())
    g.push_back(p.grad().defined() ? p.grad().reshape(-1).clone() : torch::zeros({p.numel()}, p.options()));
  return torch::cat(g);
}

// theta += eps v for the flattened direction v.
void shift(FlowModelImpl& model, const torch::Tensor& v, double eps) {
  torch::NoGradGuard ng;
  std::int64_t at = 0;
  for (auto& p : model.parameters()) {
    p.add_(eps * v.slice(0, at, at + p.numel()).view(p.sizes()));
    at += p.numel();
  }
}

// coupling "affine+fourier": affine couplings after a FourierScale prior layer; theory "sun3": SU(3) (else SU(2)).
Config small_config(const std::string& theory, const std::string& coupling) {
  Config cfg;
  cfg.theory = choice<TheoryId>(theory == "sun3" ? "sun" : theory);
  cfg.lattice.extents = {4, 4};
  const bool fourier = coupling == "affine+fourier";
  cfg.flow = params(fourier ? "affine" : coupling, theory == "phi4");
  if (fourier) cfg.flow.prior = Prior::fourier;
  cfg.flow.spline_bound = 3.0;
  cfg.phi4.m2 = -4;
  cfg.phi4.lam = 8;
  cfg.u1.beta = 2;
  cfg.sun.n = theory == "sun3" ? 3 : 2;
  cfg.sun.beta = 2;
  cfg.validate();
  return cfg;
}

}  // namespace

// The two training gradients (train.gradient) against central finite differences of what they differentiate:
// reparam, d/d theta mean[log q_theta(f_theta(z)) + S(f_theta(z))]; path, the same with log q's weights held at
// theta0 (only the sample moves). Their difference is the score term, whose mean over q vanishes.
TEST_CASE("reparam and path gradients equal finite differences of their objectives", "[flows][train]") {
  for (auto [theory, coupling] : std::vector<std::pair<std::string, std::string>>{{"phi4", "affine"},
                                                                                  {"phi4", "affine+fourier"},
                                                                                  {"phi4", "spline"},
                                                                                  {"u1", "ncp"},
                                                                                  {"u1", "spline"},
                                                                                  {"sun", "spectral"},
                                                                                  {"sun3", "spectral"}}) {
    CAPTURE(theory, coupling);
    const auto cfg = small_config(theory, coupling);
    torch::manual_seed(31);
    FlowModel model = make_flow(cfg);
    randomise(*model, 0.2);
    const auto th = make_theory(cfg);
    auto z = model->draw_prior(16, 77);

    auto path = reverse_kl_objective(*model, *th, z, true);
    auto reparam = reverse_kl_objective(*model, *th, z, false);
    // Same value (the inverse reproduces log q of the forward pass), same detached parts.
    CHECK((path.objective - reparam.objective).abs().max().item<double>() < 1e-9);
    CHECK((path.log_q + path.action - reparam.objective).abs().max().item<double>() < 1e-12);
    const auto g_path = flat_gradient(*model, path.objective.mean());
    const auto g_reparam = flat_gradient(*model, reparam.objective.mean());
    for (auto p : model->parameters()) CHECK(p.requires_grad());  // restored after the path objective

    torch::manual_seed(32);
    const auto v = torch::randn_like(g_path);
    // Small steps: the splines' second derivatives jump at the knots, which makes the error of central
    // differences O(eps) there (measured: relative 2e-2 at eps = 1e-4, 5e-6 at 1e-6, < 1e-8 at 1e-7).
    const double eps = 1e-7;
    double fd_path = 0, fd_reparam = 0;
    for (int sign : {1, -1}) {
      torch::NoGradGuard ng;
      shift(*model, v, sign * eps);
      auto [x, lq_moved] = model->forward(z);
      auto S = th->action(x);
      shift(*model, v, -sign * eps);
      auto lq_fixed = model->log_prob(x).first;
      fd_reparam += sign * (lq_moved + S).mean().item<double>() / (2 * eps);
      fd_path += sign * (lq_fixed + S).mean().item<double>() / (2 * eps);
    }
    CHECK(g_path.dot(v).item<double>() == Approx(fd_path).epsilon(1e-6).margin(1e-6));
    CHECK(g_reparam.dot(v).item<double>() == Approx(fd_reparam).epsilon(1e-6).margin(1e-6));
    CHECK(std::abs(fd_path - fd_reparam) > 1e-3);  // the score term is there to be dropped
  }
}

TEST_CASE("the score term that the path gradient drops has zero mean over q", "[flows][train]") {
  // E_q[d/d theta log q_theta(x)] = d/d theta int q_theta = 0: along a random direction, by central differences
  // at fixed samples, mean over 4096 draws within 4 standard errors of zero (and its spread well above them).
  const auto cfg = small_config("phi4", "affine");
  torch::manual_seed(41);
  FlowModel model = make_flow(cfg);
  randomise(*model, 0.3);
  torch::NoGradGuard ng;
  auto x = model->sample(4096, 99).first;
  torch::manual_seed(42);
  std::int64_t n = 0;
  for (auto& p : model->parameters()) n += p.numel();
  const auto v = torch::randn({n}, torch::kFloat64);
  const double eps = 1e-5;
  shift(*model, v, eps);
  auto up = model->log_prob(x).first;
  shift(*model, v, -2 * eps);
  auto down = model->log_prob(x).first;
  shift(*model, v, eps);
  auto score = (up - down) / (2 * eps);
  const double mean = score.mean().item<double>(), se = score.std().item<double>() / std::sqrt(4096.0);
  CAPTURE(mean, se);
  CHECK(std::abs(mean) < 4 * se);
  CHECK(score.std().item<double>() > 1.0);
}

TEST_CASE("fused Adam step: bitwise torch::optim::Adam, float32 and float64, any size", "[flows]") {
  for (auto dtype : {torch::kFloat32, torch::kFloat64}) {
    CAPTURE(dtype == torch::kFloat64);
    torch::manual_seed(17);
    std::vector<torch::Tensor> a, b;
    for (std::int64_t n : {1, 3, 7, 8, 9, 31, 64, 1003}) {
      a.push_back(torch::randn({n}, dtype).requires_grad_());
      b.push_back(a.back().detach().clone().requires_grad_());
    }
    a.push_back(torch::randn({8, 3, 3, 3}, dtype).requires_grad_());  // a conv weight
    b.push_back(a.back().detach().clone().requires_grad_());
    torch::optim::Adam ref(a, torch::optim::AdamOptions(1e-3)), fused(b, torch::optim::AdamOptions(1e-3));
    for (int step = 0; step < 40; ++step) {
      const double lr = 1e-3 * (1 + std::cos(0.1 * step));  // the trainer changes lr every step
      for (auto* opt : {&ref, &fused})
        for (auto& group : opt->param_groups()) static_cast<torch::optim::AdamOptions&>(group.options()).lr(lr);
      for (std::size_t i = 0; i < a.size(); ++i) {
        // Gradients over many scales, zeros included (the sqrt of a zero second moment).
        auto g = torch::randn(a[i].sizes(), dtype) * std::pow(10.0, (step % 9) - 4.0);
        if (step % 7 == 3) g.view(-1)[0] = 0;
        a[i].mutable_grad() = g.clone();
        b[i].mutable_grad() = g.clone();
      }
      ref.step();
      REQUIRE(fused_adam_step(fused));
    }
    for (std::size_t i = 0; i < a.size(); ++i) {
      CAPTURE(i);
      CHECK(torch::equal(a[i], b[i]));
      const auto key_a = c10::guts::to_string(a[i].unsafeGetTensorImpl());
      const auto key_b = c10::guts::to_string(b[i].unsafeGetTensorImpl());
      const auto& sa = static_cast<torch::optim::AdamParamState&>(*ref.state().at(key_a));
      const auto& sb = static_cast<torch::optim::AdamParamState&>(*fused.state().at(key_b));
      CHECK(sa.step() == sb.step());
      CHECK(torch::equal(sa.exp_avg(), sb.exp_avg()));
      CHECK(torch::equal(sa.exp_avg_sq(), sb.exp_avg_sq()));
    }
  }
  // Where the loop does not apply it changes nothing and says so.
  auto p = torch::ones({4}).requires_grad_();
  p.mutable_grad() = torch::ones({4});
  torch::optim::Adam ams({p}, torch::optim::AdamOptions(1e-3).amsgrad(true));
  CHECK_FALSE(fused_adam_step(ams));
  CHECK(torch::equal(p, torch::ones({4})));
}
