// SPDX-License-Identifier: MIT
// The torch-free kernels of lib/latflow/kernels against naive scalar loops in float64, for every instruction set
// this CPU runs (each forced in turn through KernelPolicy::isa): periodic convolutions and their gradients, the
// fused affine coupling (inference, training forward, hand-written backward against central differences), Winograd
// against the direct convolution, the float exp/tanh lanes over their whole range, and the shipped default (float32,
// leaky_relu, Winograd) gradient against float64 with a stated tolerance. tests/test_flows.cpp checks the same
// kernels against the LibTorch nets.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "latflow/kernels/conv_detail.hpp"
#include "latflow/kernels/lane_math.hpp"
#include "latflow/kernels/periodic_conv.hpp"

using namespace latflow::pconv;

namespace {

using Ext = std::vector<std::int64_t>;

std::vector<Isa> isas_to_test() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::baseline, Isa::x86_64_v3, Isa::x86_64_v4}) {
    if (isa_supported(isa))
      out.push_back(isa);
    else
      WARN(std::string("instruction set ") + isa_name(isa) + " not run: this CPU or build lacks it");
  }
  return out;
}

std::vector<double> randn(std::size_t n, std::uint64_t seed, double scale = 1) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g(0, scale);
  std::vector<double> v(n);
  for (auto& x : v) x = g(rng);
  return v;
}

template <class T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

std::int64_t volume(const Ext& e) {
  std::int64_t V = 1;
  for (auto L : e) V *= L;
  return V;
}

double act_value(double v, const Act* act) {
  if (!act) return v;
  switch (*act) {
    case Act::leaky_relu: return v > 0 ? v : 0.01 * v;
    case Act::tanh: return std::tanh(v);
    case Act::silu: return v / (1 + std::exp(-v));
  }
  return v;
}

// out[b, s, co] = act(bias[co] + sum_{t, ci} w[co, ci, t] in[b, nbr(s, t), ci]), the definition.
std::vector<double> naive_conv(const std::vector<double>& in, std::int64_t n, std::int64_t V, int taps,
                               const std::vector<std::int32_t>& nbr, int cin, int cout, const double* w,
                               const double* bias, const Act* act) {
  std::vector<double> out(static_cast<std::size_t>(n * V * cout));
  for (std::int64_t b = 0; b < n; ++b)
    for (std::int64_t s = 0; s < V; ++s)
      for (int co = 0; co < cout; ++co) {
        double v = bias ? bias[co] : 0;
        for (int t = 0; t < taps; ++t)
          for (int ci = 0; ci < cin; ++ci)
            v += w[(co * cin + ci) * taps + t] * in[(b * V + nbr[s * taps + t]) * cin + ci];
        out[(b * V + s) * cout + co] = act_value(v, act);
      }
  return out;
}

double max_rel(const std::vector<double>& a, const std::vector<double>& ref) {
  double scale = 1, err = 0;
  for (double r : ref) scale = std::max(scale, std::abs(r));
  for (std::size_t i = 0; i < a.size(); ++i) err = std::max(err, std::abs(a[i] - ref[i]));
  return err / scale;
}

template <class T>
std::vector<double> widen(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// An affine coupling layer with its parameters in one flat vector (each conv's weight [cout, cin, taps], then its
// bias: the layout of affine_coupling_backward's gparams).
struct AffineCase {
  Ext ext;
  int kernel;
  std::vector<int> hidden;
  Act act;
  bool z2;
};

struct AffineSetup {
  AffineCase c;
  std::int64_t V;
  int taps;
  std::vector<std::int32_t> nbr, active;
  std::vector<int> widths;  // 1, hidden..., 2
  std::vector<double> params;

  explicit AffineSetup(const AffineCase& ac, std::uint64_t seed) : c(ac) {
    V = volume(c.ext);
    taps = 1;
    for (std::size_t i = 0; i < c.ext.size(); ++i) taps *= c.kernel;
    nbr = neighbour_table(c.ext, c.kernel);
    for (std::int64_t s = 0; s < V; ++s) {  // the sites of even checkerboard parity are updated
      std::int64_t r = s, parity = 0;
      for (auto it = c.ext.rbegin(); it != c.ext.rend(); ++it) {
        parity += r % *it;
        r /= *it;
      }
      if (parity % 2 == 0) active.push_back(static_cast<std::int32_t>(s));
    }
    widths = {1};
    widths.insert(widths.end(), c.hidden.begin(), c.hidden.end());
    widths.push_back(2);
    std::size_t n = 0;
    for (std::size_t l = 0; l + 1 < widths.size(); ++l) n += widths[l] * widths[l + 1] * taps + widths[l + 1];
    params = randn(n, seed, 0.3);
  }
  template <class T>
  AffineLayer<T> layer(const std::vector<T>& p, KernelPolicy policy) const {
    AffineLayer<T> ly{c.ext, taps, nbr.data(), {}, c.act, c.z2, active.data(), static_cast<std::int64_t>(active.size()),
                      policy};
    std::size_t off = 0;
    for (std::size_t l = 0; l + 1 < widths.size(); ++l) {
      const int cin = widths[l], cout = widths[l + 1];
      ly.net.push_back({p.data() + off, p.data() + off + cin * cout * taps, cin, cout});
      off += cin * cout * taps + cout;
    }
    return ly;
  }
  // The layer by the definition (periodic_conv.hpp AffineLayer), in float64: x in place, logdet[b] added.
  void naive(const std::vector<double>& p, std::vector<double>& x, std::int64_t n, bool inverse,
             std::vector<double>& logdet) const {
    auto net = [&](std::vector<double> h) {
      std::size_t off = 0;
      for (std::size_t l = 0; l + 1 < widths.size(); ++l) {
        const int cin = widths[l], cout = widths[l + 1];
        const bool last = l + 2 == widths.size();
        h = naive_conv(h, n, V, taps, nbr, cin, cout, p.data() + off, p.data() + off + cin * cout * taps,
                       last ? nullptr : &c.act);
        off += cin * cout * taps + cout;
      }
      return h;  // [n, V, 2]
    };
    std::vector<double> cf = x, cm(x.size());
    for (std::int64_t b = 0; b < n; ++b)
      for (auto a : active) cf[b * V + a] = 0;
    for (std::size_t i = 0; i < x.size(); ++i) cm[i] = -cf[i];
    const auto hp = net(cf);
    const auto hm = c.z2 ? net(cm) : hp;
    for (std::int64_t b = 0; b < n; ++b)
      for (auto a : active) {
        const auto k = static_cast<std::size_t>(b * V + a);
        const double s_raw = c.z2 ? 0.5 * (hp[2 * k] + hm[2 * k]) : hp[2 * k];
        const double t = c.z2 ? 0.5 * (hp[2 * k + 1] - hm[2 * k + 1]) : hp[2 * k + 1];
        const double s = std::tanh(s_raw);
        x[k] = inverse ? (x[k] - t) * std::exp(-s) : x[k] * std::exp(s) + t;
        logdet[static_cast<std::size_t>(b)] += inverse ? -s : s;
      }
  }
};

const std::vector<AffineCase>& affine_cases() {
  static const std::vector<AffineCase> cases{
      {{8, 8}, 3, {8, 8}, Act::tanh, true},         // Winograd F(4x4, 3x3), dual_dot (C = 8), z2
      {{6, 6}, 3, {8, 8}, Act::silu, false},        // Winograd F(2x2, 3x3), without z2
      {{8, 8}, 3, {8, 8}, Act::leaky_relu, false},  // the plain tutorial net: unrolled 8 -> 8 Winograd, 2-output dot
      {{8, 8}, 3, {5, 8}, Act::leaky_relu, true},   // channels not a multiple of 8 in a hidden layer
      {{5, 5}, 3, {6}, Act::tanh, true},            // odd extents: direct convs; C = 6: half_sum_difference
      {{4, 4, 4}, 3, {8}, Act::silu, true},         // 3D
      {{6, 4}, 1, {4}, Act::tanh, false},           // 1x1 kernels
      {{4, 6}, 3, {}, Act::tanh, true},             // the net is one conv
  };
  return cases;
}

}  // namespace

TEST_CASE("instruction sets: best resolves to one the CPU has; an absent one is refused", "[kernels]") {
  CHECK(isa_supported(resolve(Isa::best)));
  CHECK(resolve(Isa::best) != Isa::best);
  CHECK(resolve(Isa::baseline) == Isa::baseline);
  for (Isa isa : {Isa::x86_64_v3, Isa::x86_64_v4})
    if (!isa_supported(isa)) CHECK_THROWS_AS(resolve(isa), std::invalid_argument);
}

TEST_CASE("periodic conv forward, forward_at and backward equal the naive loops", "[kernels]") {
  struct Case {
    Ext ext;
    int kernel, cin, cout;
  };
  // (Among them the specialised paths: one input (1D, 2D 3x3 unrolled, 3D), 3x3 kernels of 8 inputs and 1 or 2
  // outputs (unrolled), and their transposes in the backward; float with 9 to 32 outputs: 16 lanes on AVX-512.)
  const std::vector<Case> cases{{{7}, 3, 1, 8},      {{4, 6}, 3, 3, 5},    {{8, 8}, 3, 8, 2}, {{6, 5}, 3, 16, 1},
                                {{4, 4}, 3, 16, 16}, {{3, 4, 2}, 3, 5, 4}, {{5, 5}, 5, 2, 9}, {{2, 3, 2, 3}, 3, 8, 4},
                                {{6, 6}, 1, 4, 3},   {{8, 8}, 3, 1, 8},    {{6, 4}, 3, 8, 1}, {{3, 3, 3}, 3, 1, 12},
                                {{8, 8}, 3, 8, 25}};
  const Act acts[] = {Act::leaky_relu, Act::tanh, Act::silu};
  for (Isa isa : isas_to_test())
    for (const auto& c : cases) {
      const std::int64_t V = volume(c.ext), n = 3;
      int taps = 1;
      for (std::size_t i = 0; i < c.ext.size(); ++i) taps *= c.kernel;
      const auto nbr = neighbour_table(c.ext, c.kernel);
      const auto in = randn(static_cast<std::size_t>(n * V * c.cin), 1);
      const auto w = randn(static_cast<std::size_t>(c.cout * c.cin * taps), 2);
      const auto bias = randn(static_cast<std::size_t>(c.cout), 3);
      for (int a = -1; a < 3; ++a) {
        const Act* act = a < 0 ? nullptr : &acts[a];
        CAPTURE(isa_name(isa), c.ext, c.kernel, c.cin, c.cout, a);
        const auto ref = naive_conv(in, n, V, taps, nbr, c.cin, c.cout, w.data(), bias.data(), act);
        std::vector<double> out(ref.size()), pre(ref.size());
        conv_forward<double>(in.data(), n, V, taps, nbr.data(), c.cin, c.cout, w.data(), bias.data(), act, pre.data(),
                             out.data(), isa);
        CHECK(max_rel(out, ref) < 1e-13);
        CHECK(max_rel(pre, naive_conv(in, n, V, taps, nbr, c.cin, c.cout, w.data(), bias.data(), nullptr)) < 1e-13);
        // float32: rounding of sums of cin * taps products
        auto outf = std::vector<float>(ref.size());
        const auto inf = cast<float>(in), wf = cast<float>(w), bf = cast<float>(bias);
        conv_forward<float>(inf.data(), n, V, taps, nbr.data(), c.cin, c.cout, wf.data(), bf.data(), act, nullptr,
                            outf.data(), isa);
        CHECK(max_rel(widen(outf), ref) < 1e-5);
      }
      // At a subset of sites, no activation.
      std::vector<std::int32_t> sites;
      for (std::int64_t s = V - 1; s >= 0; s -= 3) sites.push_back(static_cast<std::int32_t>(s));
      const auto Vr = static_cast<std::int64_t>(sites.size());
      const auto all = naive_conv(in, n, V, taps, nbr, c.cin, c.cout, w.data(), bias.data(), nullptr);
      std::vector<double> at(static_cast<std::size_t>(n * Vr * c.cout));
      conv_forward_at<double>(in.data(), n, V, taps, nbr.data(), sites.data(), Vr, c.cin, c.cout, w.data(), bias.data(),
                              at.data(), isa);
      std::vector<double> at_ref;
      for (std::int64_t b = 0; b < n; ++b)
        for (auto s : sites)
          for (int co = 0; co < c.cout; ++co) at_ref.push_back(all[(b * V + s) * c.cout + co]);
      CHECK(max_rel(at, at_ref) < 1e-13);
      {
        std::vector<float> atf(at.size());
        const auto inf = cast<float>(in), wf = cast<float>(w), bf = cast<float>(bias);
        conv_forward_at<float>(inf.data(), n, V, taps, nbr.data(), sites.data(), Vr, c.cin, c.cout, wf.data(),
                               bf.data(), atf.data(), isa);
        CHECK(max_rel(widen(atf), at_ref) < 1e-5);
      }
      // Backward: gin = sum over the outputs that see each input, gw, gb; and gin through the activation of the
      // previous layer (in = act(in_pre)).
      const auto gpre = randn(static_cast<std::size_t>(n * V * c.cout), 4);
      std::vector<double> gin_ref(in.size(), 0.0), gw_ref(w.size(), 0.0), gb_ref(bias.size(), 0.0);
      for (std::int64_t b = 0; b < n; ++b)
        for (std::int64_t s = 0; s < V; ++s)
          for (int co = 0; co < c.cout; ++co) {
            const double g = gpre[(b * V + s) * c.cout + co];
            gb_ref[co] += g;
            for (int t = 0; t < taps; ++t)
              for (int ci = 0; ci < c.cin; ++ci) {
                const auto src = (b * V + nbr[s * taps + t]) * c.cin + ci;
                gin_ref[src] += w[(co * c.cin + ci) * taps + t] * g;
                gw_ref[(co * c.cin + ci) * taps + t] += in[src] * g;
              }
          }
      std::vector<double> gin(in.size()), gw(w.size(), 0.0), gb(bias.size(), 0.0);
      conv_backward<double>(in.data(), gpre.data(), n, V, taps, nbr.data(), c.cin, c.cout, w.data(), nullptr, nullptr,
                            gin.data(), gw.data(), gb.data(), isa);
      CAPTURE(isa_name(isa), c.ext, c.kernel, c.cin, c.cout);
      CHECK(max_rel(gin, gin_ref) < 1e-13);
      CHECK(max_rel(gw, gw_ref) < 1e-13);
      CHECK(max_rel(gb, gb_ref) < 1e-13);
      const Act tanh_act = Act::tanh;
      conv_backward<double>(in.data(), gpre.data(), n, V, taps, nbr.data(), c.cin, c.cout, w.data(), in.data(),
                            &tanh_act, gin.data(), nullptr, nullptr, isa);
      for (std::size_t i = 0; i < gin_ref.size(); ++i) gin_ref[i] *= 1 - std::tanh(in[i]) * std::tanh(in[i]);
      CHECK(max_rel(gin, gin_ref) < 1e-13);
    }
}

namespace {
// The sample-pair layout's kernels against the ordinary ones (over all sites and, as a net's last conv, at some):
// outputs, values before the activation and input gradients bit for bit where the ordinary kernel has lanes over
// the output channels (the same chain of multiply-adds per lane; the dot kernels of at most 4 outputs sum in
// another order: 1e-13 / 1e-5 there), the parameter gradients to rounding; odd kernels, 1 to 25 channels, more than
// 8 outputs (several blocks), 8 to 32 inputs at the sites (the scatter kernels), 3D.
template <class T>
void check_pairs(Isa isa, const Ext& ext, int kernel, int cin, int cout, const Act* act) {
  const std::int64_t V = volume(ext), n = 6;
  int taps = 1;
  for (std::size_t i = 0; i < ext.size(); ++i) taps *= kernel;
  const auto nbr = neighbour_table(ext, kernel);
  const auto in = cast<T>(randn(static_cast<std::size_t>(n * V * cin), 11));
  const auto w = cast<T>(randn(static_cast<std::size_t>(cout * cin * taps), 12, 0.3));
  const auto bias = cast<T>(randn(static_cast<std::size_t>(cout), 13));
  const auto gpre = cast<T>(randn(static_cast<std::size_t>(n * V * cout), 14));
  const auto in_pre = cast<T>(randn(in.size(), 15));
  auto pairs = [&](const std::vector<T>& v, std::int64_t rows, int C) {
    std::vector<T> out(v.size());
    to_pairs(v.data(), n, rows, C, out.data());
    return out;
  };
  auto unpair = [&](const std::vector<T>& v, std::int64_t rows, int C) {
    std::vector<T> out(v.size());
    from_pairs(v.data(), n, rows, C, out.data());
    return out;
  };
  const double tol = std::is_same_v<T, double> ? 1e-13 : 1e-5;
  auto same = [&](const std::vector<T>& a, const std::vector<T>& b, bool bitwise) {
    if (bitwise) {
      CHECK(a == b);
    } else {
      CHECK(max_rel(widen(a), widen(b)) < tol);
    }
  };
  REQUIRE(unpair(pairs(in, V, cin), V, cin) == in);
  std::vector<T> out(gpre.size()), pre(gpre.size()), outp(gpre.size()), prep(gpre.size());
  conv_forward<T>(in.data(), n, V, taps, nbr.data(), cin, cout, w.data(), bias.data(), act, pre.data(), out.data(),
                  isa);
  const auto inp = pairs(in, V, cin);
  conv_forward_pairs<T>(inp.data(), n, V, taps, nbr.data(), cin, cout, w.data(), bias.data(), act, prep.data(),
                        outp.data(), isa);
  const bool fwd_lanes = !(cout <= 4 && cin % 8 == 0), bwd_lanes = !(cin <= 4 && cout % 8 == 0);
  same(unpair(outp, V, cout), out, fwd_lanes);
  same(unpair(prep, V, cout), pre, fwd_lanes);
  const Act tanh_act = Act::tanh;
  for (bool through_act : {false, true}) {
    CAPTURE(through_act);
    std::vector<T> gin(in.size()), gw(w.size(), T(0.5)), gb(bias.size(), T(0.25));
    auto ginp = gin, gwp = gw, gbp = gb;
    const T* ip = through_act ? in_pre.data() : nullptr;
    conv_backward<T>(in.data(), gpre.data(), n, V, taps, nbr.data(), cin, cout, w.data(), ip, &tanh_act, gin.data(),
                     gw.data(), gb.data(), isa);
    const auto gprep = pairs(gpre, V, cout), in_prep = pairs(in_pre, V, cin);
    conv_backward_pairs<T>(inp.data(), gprep.data(), n, V, taps, nbr.data(), cin, cout, w.data(),
                           through_act ? in_prep.data() : nullptr, &tanh_act, ginp.data(), gwp.data(), gbp.data(), isa);
    same(unpair(ginp, V, cin), gin, bwd_lanes);
    same(gwp, gw, false);
    same(gbp, gb, false);
  }
  // The last conv of a net: at a subset of sites, no activation; its backward scatters from those sites.
  std::vector<std::int32_t> sites;
  for (std::int64_t s = V - 1; s >= 0; s -= 3) sites.push_back(static_cast<std::int32_t>(s));
  const auto Vr = static_cast<std::int64_t>(sites.size());
  std::vector<T> at(static_cast<std::size_t>(n * Vr * cout)), atp(at.size());
  conv_forward_at<T>(in.data(), n, V, taps, nbr.data(), sites.data(), Vr, cin, cout, w.data(), bias.data(), at.data(),
                     isa);
  conv_forward_at_pairs<T>(inp.data(), n, V, taps, nbr.data(), sites.data(), Vr, cin, cout, w.data(), bias.data(),
                           atp.data(), isa);
  same(unpair(atp, Vr, cout), at, fwd_lanes);
  const auto gat = cast<T>(randn(at.size(), 16));
  const auto gatp = pairs(gat, Vr, cout), in_prep = pairs(in_pre, V, cin);
  for (bool through_act : {false, true}) {
    CAPTURE(through_act);
    std::vector<T> gin(in.size()), gw(w.size(), T(0.5)), gb(bias.size(), T(0.25));
    auto ginp = gin, gwp = gw, gbp = gb;
    conv_backward_at<T>(in.data(), gat.data(), n, V, taps, nbr.data(), sites.data(), Vr, cin, cout, w.data(),
                        through_act ? in_pre.data() : nullptr, &tanh_act, gin.data(), gw.data(), gb.data(), isa);
    conv_backward_at_pairs<T>(inp.data(), gatp.data(), n, V, taps, nbr.data(), sites.data(), Vr, cin, cout, w.data(),
                              through_act ? in_prep.data() : nullptr, &tanh_act, ginp.data(), gwp.data(), gbp.data(),
                              isa);
    same(unpair(ginp, V, cin), gin, true);
    same(gwp, gw, false);
    same(gbp, gb, false);
  }
}
}  // namespace

TEST_CASE("sample-pair convs equal the ordinary ones", "[kernels]") {
  struct Case {
    Ext ext;
    int kernel, cin, cout;
  };
  const std::vector<Case> cases{{{16, 16}, 3, 8, 8},  {{6, 8}, 3, 6, 8}, {{4, 6}, 3, 8, 6},  {{5, 5}, 3, 3, 5},
                                {{8, 8}, 3, 8, 25},   {{7}, 3, 1, 8},    {{8, 8}, 3, 8, 2},  {{6, 5}, 3, 16, 12},
                                {{3, 4, 2}, 3, 5, 4}, {{5, 5}, 5, 2, 9}, {{6, 4}, 3, 2, 16}, {{4, 4}, 3, 24, 3},
                                {{4, 4}, 3, 32, 9},   {{4, 4}, 3, 40, 2}};
  const Act acts[] = {Act::leaky_relu, Act::tanh};
  for (Isa isa : isas_to_test())
    for (const auto& c : cases)
      for (int a = -1; a < 2; ++a) {
        CAPTURE(isa_name(isa), c.ext, c.kernel, c.cin, c.cout, a);
        check_pairs<float>(isa, c.ext, c.kernel, c.cin, c.cout, a < 0 ? nullptr : &acts[a]);
        check_pairs<double>(isa, c.ext, c.kernel, c.cin, c.cout, a < 0 ? nullptr : &acts[a]);
      }
}

TEST_CASE("a one-input conv that skips the products of its zero inputs equals the dense one", "[kernels]") {
  // An affine layer's first conv sees c = 0 at the sites the layer updates; one_input_conv_groups computes only the
  // other products and must equal the dense gather (x + 0 w = x), for checkerboards in 1D-3D (odd extents break the
  // pattern at the wrap), a random zero set, every sink the layer uses and both precisions.
  struct Case {
    Ext ext;
    int kernel;
    bool random_zeros;
  };
  const std::vector<Case> cases{{{8, 8}, 3, false}, {{5, 5}, 3, false}, {{4, 4, 4}, 3, false},
                                {{7}, 3, false},    {{6, 6}, 3, true},  {{6, 4}, 5, false}};
  auto run = [](auto zero_t, Isa isa, const Case& c) {
    using T = decltype(zero_t);
    const std::int64_t V = volume(c.ext), n = 21, cout = 8;  // n: a block of 16 samples and a remainder
    int taps = 1;
    for (std::size_t i = 0; i < c.ext.size(); ++i) taps *= c.kernel;
    const auto nbr = neighbour_table(c.ext, c.kernel);
    std::vector<std::int32_t> zero;
    std::mt19937_64 rng(7);
    for (std::int64_t s = 0; s < V; ++s) {
      std::int64_t r = s, parity = 0;
      for (auto it = c.ext.rbegin(); it != c.ext.rend(); ++it) {
        parity += r % *it;
        r /= *it;
      }
      if (c.random_zeros ? rng() % 3 == 0 : parity % 2 == 0) zero.push_back(static_cast<std::int32_t>(s));
    }
    auto in = cast<T>(randn(static_cast<std::size_t>(n * V), 1));
    for (std::int64_t b = 0; b < n; ++b)
      for (auto s : zero) in[static_cast<std::size_t>(b * V + s)] = T(0);
    const auto w = cast<T>(randn(static_cast<std::size_t>(cout * taps), 2));
    const auto bias = cast<T>(randn(static_cast<std::size_t>(cout), 3));
    const Geo g{V, taps, nbr.data(), nullptr, V};
    const auto groups = tap_groups(g, zero.data(), static_cast<std::int64_t>(zero.size()));
    std::size_t sites = 0;
    for (const auto& grp : groups) sites += grp.sites.size();
    CHECK(sites == static_cast<std::size_t>(V));
    const auto a = arrange_conv(w.data(), taps, 1, static_cast<int>(cout), false);
    std::vector<T> reflect(static_cast<std::size_t>(cout));
    for (std::int64_t k = 0; k < cout; ++k)
      reflect[static_cast<std::size_t>(k)] = 2 * bias[static_cast<std::size_t>(k)];
    const Act leaky = Act::leaky_relu, tanh_act = Act::tanh;
    for (int variant = 0; variant < 4; ++variant) {  // out only; leaky_relu; with pre; Z2 mirror and tanh
      CAPTURE(variant);
      const std::size_t size = static_cast<std::size_t>(n * V * cout);
      std::vector<std::vector<T>> bufs(6, std::vector<T>(size, T(-7)));
      auto sink = [&](int set) {
        Sink<T> sk{variant == 1 || variant == 2 ? &leaky
                   : variant == 3               ? &tanh_act
                                                : nullptr,
                   variant >= 2 ? bufs[3 * set + 1].data() : nullptr, nullptr, bufs[3 * set].data()};
        if (variant == 3) {
          sk.mirror = bufs[3 * set + 2].data();
          sk.reflect = reflect.data();
        }
        return sk;
      };
      gather(in.data(), n, g, a, bias.data(), sink(0), isa);
      REQUIRE(one_input_conv_groups(in.data(), n, V, groups, a, bias.data(), sink(1), isa));
      for (std::size_t k = 0; k < 3; ++k) {
        // Without FMA both are the same additions in the same order; with it the compiler may contract either
        // kernel's multiply-adds (or not), which changes the last bits only.
        if (resolve(isa) == Isa::baseline)
          CHECK(bufs[k] == bufs[3 + k]);
        else
          CHECK(max_rel(widen(bufs[3 + k]), widen(bufs[k])) < (sizeof(T) == 4 ? 4e-6 : 8e-15));  // a few ulps
      }
    }
  };
  for (Isa isa : isas_to_test())
    for (const auto& c : cases) {
      CAPTURE(isa_name(isa), c.ext, c.kernel, c.random_zeros);
      run(float{}, isa, c);
      run(double{}, isa, c);
    }
}

TEST_CASE("fused affine coupling equals its definition; training forward equals inference", "[kernels]") {
  for (Isa isa : isas_to_test())
    for (std::size_t k = 0; k < affine_cases().size(); ++k) {
      const AffineSetup S(affine_cases()[k], 10 + k);
      const std::int64_t n = 37;  // more than two blocks of 16
      const auto x0 = randn(static_cast<std::size_t>(n * S.V), 20 + k);
      for (bool winograd : {true, false})
        for (bool inverse : {false, true}) {
          CAPTURE(isa_name(isa), k, winograd, inverse);
          KernelPolicy policy;
          policy.winograd = winograd;
          policy.isa = isa;
          auto ref = x0;
          std::vector<double> ld_ref(static_cast<std::size_t>(n), 0.0);
          S.naive(S.params, ref, n, inverse, ld_ref);
          const auto ly = S.layer(S.params, policy);
          auto x = x0;
          std::vector<double> ld(static_cast<std::size_t>(n), 0.0);
          affine_coupling(x.data(), n, ly, inverse, ld.data());
          CHECK(max_rel(x, ref) < 1e-12);
          CHECK(max_rel(ld, ld_ref) < 1e-12);
          auto xt = x0;
          std::vector<double> ldt(static_cast<std::size_t>(n), 0.0);
          std::vector<double> tape(static_cast<std::size_t>(affine_tape_size(ly, n)));
          affine_coupling_forward(xt.data(), n, ly, inverse, ldt.data(), tape.data());
          CHECK(xt == x);  // the same arithmetic, bit for bit
          CHECK(ldt == ld);
          // float32 against the float64 definition
          const auto pf = cast<float>(S.params);
          auto xf = cast<float>(x0);
          std::vector<double> ldf(static_cast<std::size_t>(n), 0.0);
          affine_coupling(xf.data(), n, S.layer(pf, policy), inverse, ldf.data());
          CHECK(max_rel(widen(xf), ref) < 2e-5);
          CHECK(max_rel(ldf, ld_ref) < 2e-5);
        }
    }
}

TEST_CASE("fused affine coupling backward equals central differences of the definition", "[kernels]") {
  // L = sum gy . y + sum gld . logdet on 3 samples, in float64; differences with step 1e-6 (error ~1e-9).
  for (Isa isa : isas_to_test())
    for (std::size_t k = 0; k < affine_cases().size(); ++k) {
      const AffineSetup S(affine_cases()[k], 30 + k);
      const std::int64_t n = 3;
      const auto x0 = randn(static_cast<std::size_t>(n * S.V), 40 + k);
      const auto gy = randn(x0.size(), 50 + k), gld = randn(static_cast<std::size_t>(n), 60 + k);
      for (bool inverse : {false, true}) {
        CAPTURE(isa_name(isa), k, inverse);
        KernelPolicy policy;
        policy.isa = isa;
        const auto loss = [&](const std::vector<double>& p, const std::vector<double>& x) {
          auto y = x;
          std::vector<double> ld(static_cast<std::size_t>(n), 0.0);
          S.naive(p, y, n, inverse, ld);
          double L = 0;
          for (std::size_t i = 0; i < y.size(); ++i) L += gy[i] * y[i];
          for (std::size_t b = 0; b < ld.size(); ++b) L += gld[b] * ld[b];
          return L;
        };
        const auto ly = S.layer(S.params, policy);
        auto x = x0;
        std::vector<double> ld(static_cast<std::size_t>(n), 0.0);
        std::vector<double> tape(static_cast<std::size_t>(affine_tape_size(ly, n)));
        affine_coupling_forward(x.data(), n, ly, inverse, ld.data(), tape.data());
        std::vector<double> gx(x0.size()), gp(static_cast<std::size_t>(affine_param_count(ly)), 0.0);
        affine_coupling_backward(gy.data(), gld.data(), n, ly, inverse, tape.data(), gx.data(), gp.data());
        const double h = 1e-6;
        std::vector<double> gx_fd(x0.size()), gp_fd(gp.size());
        for (std::size_t i = 0; i < x0.size(); ++i) {
          auto xp = x0, xm = x0;
          xp[i] += h;
          xm[i] -= h;
          gx_fd[i] = (loss(S.params, xp) - loss(S.params, xm)) / (2 * h);
        }
        for (std::size_t i = 0; i < gp.size(); ++i) {
          auto pp = S.params, pm = S.params;
          pp[i] += h;
          pm[i] -= h;
          gp_fd[i] = (loss(pp, x0) - loss(pm, x0)) / (2 * h);
        }
        CHECK(max_rel(gx, gx_fd) < 1e-7);
        CHECK(max_rel(gp, gp_fd) < 1e-7);
      }
    }
}

TEST_CASE("the shipped default (float32, leaky_relu, Winograd) trains with float64's gradient", "[kernels]") {
  // The tutorial's layer shape: 8x8, 3x3 kernels, hidden 8 8, z2. Winograd's rounding can flip the kink of
  // leaky_relu for values next to 0 (derivative 1 or 0.01), so the check is norm-wise: |g32 - g64| / |g64| below
  // 1e-3 for dL/dx and dL/dparameters (measured 1.0e-6 and 5.6e-7 here, no kink flipped; a flip in one unit costs
  // at most about 1e-2 of the norm; a wrong formula gives O(1)).
  const AffineSetup S({{8, 8}, 3, {8, 8}, Act::leaky_relu, true}, 77);
  const std::int64_t n = 64;
  const auto x0 = randn(static_cast<std::size_t>(n * S.V), 78);
  const auto gy = randn(x0.size(), 79), gld = randn(static_cast<std::size_t>(n), 80);
  auto norm_rel = [](const std::vector<double>& a, const std::vector<double>& ref) {
    double num = 0, den = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
      num += (a[i] - ref[i]) * (a[i] - ref[i]);
      den += ref[i] * ref[i];
    }
    return std::sqrt(num / den);
  };
  for (Isa isa : isas_to_test())
    for (bool inverse : {false, true}) {
      CAPTURE(isa_name(isa), inverse);
      KernelPolicy exact;  // float64 direct convolutions: the reference
      exact.winograd = false;
      KernelPolicy shipped;  // the default policy (Winograd on) in float32
      shipped.isa = isa;
      auto grads = [&](auto zero, const KernelPolicy& policy) {
        using T = decltype(zero);
        const auto p = cast<T>(S.params);
        const auto ly = S.layer(p, policy);
        auto x = cast<T>(x0);
        const auto gyT = cast<T>(gy);
        std::vector<double> ld(static_cast<std::size_t>(n), 0.0);
        std::vector<T> tape(static_cast<std::size_t>(affine_tape_size(ly, n)));
        affine_coupling_forward(x.data(), n, ly, inverse, ld.data(), tape.data());
        std::vector<T> gx(x.size()), gp(static_cast<std::size_t>(affine_param_count(ly)), T(0));
        affine_coupling_backward(gyT.data(), gld.data(), n, ly, inverse, tape.data(), gx.data(), gp.data());
        return std::make_pair(widen(gx), widen(gp));
      };
      const auto ref = grads(0.0, exact);
      const auto f32 = grads(0.0f, shipped);
      const double ex = norm_rel(f32.first, ref.first), ep = norm_rel(f32.second, ref.second);
      CAPTURE(ex, ep);
      CHECK(ex < 1e-3);
      CHECK(ep < 1e-3);
    }
}

TEST_CASE("every instruction set gives the same values to rounding", "[kernels]") {
  const auto isas = isas_to_test();
  const AffineSetup S(affine_cases()[0], 90);
  const std::int64_t n = 20;
  const auto x0 = randn(static_cast<std::size_t>(n * S.V), 91);
  std::vector<std::vector<double>> results;
  for (Isa isa : isas) {
    KernelPolicy policy;
    policy.isa = isa;
    auto x = x0;
    std::vector<double> ld(static_cast<std::size_t>(n), 0.0);
    affine_coupling(x.data(), n, S.layer(S.params, policy), false, ld.data());
    x.insert(x.end(), ld.begin(), ld.end());
    results.push_back(x);
  }
  for (std::size_t i = 1; i < results.size(); ++i) {
    CAPTURE(isa_name(isas[i]));
    CHECK(max_rel(results[i], results[0]) < 1e-13);  // FMA contraction changes the last bits only
  }
}

TEST_CASE("exp and tanh lanes are accurate over their whole range", "[kernels]") {
  // exp_lanes: x clamped to [-87, 88], relative error within a few 1e-7 (the float rounding of x * log2(e) and of
  // the degree-7 polynomial; measured 9.2e-8); tanh by 1 - 2 / (1 + exp(2a)): absolute error within a few 1e-7
  // (measured 1.8e-7), and exp(s) 7.6e-8.
  std::vector<float> x;
  for (double v = -100; v <= 100; v += 1.0 / 512) x.push_back(static_cast<float>(v));
  for (Isa isa : isas_to_test()) {
    CAPTURE(isa_name(isa));
    std::vector<float> e(x.size());
    exp_floats(x.data(), static_cast<std::int64_t>(x.size()), e.data(), isa);
    double worst = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double ref = std::exp(std::clamp(static_cast<double>(x[i]), -87.0, 88.0));
      worst = std::max(worst, std::abs(e[i] - ref) / ref);
      REQUIRE(std::isfinite(e[i]));
    }
    CAPTURE(worst);
    CHECK(worst < 5e-7);
    std::vector<float> s(x.size()), ex(x.size());
    tanh_and_exp(x.data(), static_cast<std::int64_t>(x.size()), false, s.data(), ex.data(), isa);
    double worst_t = 0, worst_e = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      worst_t = std::max(worst_t, std::abs(s[i] - std::tanh(static_cast<double>(x[i]))));
      worst_e = std::max(worst_e, std::abs(ex[i] - std::exp(static_cast<double>(s[i]))) / std::exp(double(s[i])));
    }
    CAPTURE(worst_t, worst_e);
    CHECK(worst_t < 5e-7);
    CHECK(worst_e < 5e-7);
  }
}

TEST_CASE("double exp, log, log1p and sincos lanes are within a few ulp of libm over their whole range", "[kernels]") {
  // Bounds in units of the reference's ulp (|ref| 2^-52, floored at the smallest normal): the lanes promise 2 ulp
  // (Taylor series to below 1e-17, exact reductions); sin and cos are compared in absolute terms, 2 ulp of 1, where
  // the result is near a zero. Edge values: subnormal, overflowing and underflowing exp, log of 0, negative, inf,
  // NaN, sincos past its vector range (libm per lane).
  std::mt19937_64 rng(31);
  std::vector<double> ex, lg, l1, sc;
  for (double v = -750; v <= 712; v += 0.37) ex.push_back(v);
  for (double v : {0.0, -0.0, 1e-300, -1e-300, 709.78, 709.79, -708.4, -745.1, -744.5}) ex.push_back(v);
  for (int e = -1074; e <= 1023; e += 3)
    for (double m : {1.0, 1.3, 1.41421356, 1.41421357, 1.9999}) lg.push_back(std::ldexp(m, e));
  for (double v : {1.0, 1 + 1e-15, 1 - 1e-16, 0.5, 2.0}) lg.push_back(v);
  std::uniform_real_distribution<double> u(0, 1);
  for (int i = 0; i < 20000; ++i) {
    l1.push_back(std::exp(-40 + 62 * u(rng)));  // softplus: exp(z) for z in [-40, 22]
    sc.push_back((u(rng) - 0.5) * 3200);
  }
  for (int k = -1000; k <= 1000; ++k) sc.push_back(k * M_PI / 2);  // near the zeros of sin or cos
  for (double v : {0.0, 1e-300, 1600.0, -1600.0, 1601.0, 1e6, 1e300}) sc.push_back(v);
  auto ulps = [](double got, double ref) {
    if (std::isnan(ref)) return std::isnan(got) ? 0.0 : 1e300;
    if (std::isinf(ref)) return got == ref ? 0.0 : 1e300;
    return std::abs(got - ref) / std::max(std::abs(ref) * 0x1p-52, 0x1p-1022 * 0x1p-52);
  };
  for (Isa isa : isas_to_test()) {
    CAPTURE(isa_name(isa));
    std::vector<double> out(ex.size());
    exp_doubles(ex.data(), static_cast<std::int64_t>(ex.size()), out.data(), isa);
    double worst = 0;
    for (std::size_t i = 0; i < ex.size(); ++i) {
      // Subnormal results keep fewer bits: an absolute bound of 2 of their ulp (2^-1074).
      const double ref = std::exp(ex[i]);
      worst = std::max(worst, ref < 0x1p-1022 ? std::abs(out[i] - ref) / 0x1p-1074 : ulps(out[i], ref));
    }
    CAPTURE(worst);
    CHECK(worst <= 2);
    const double nan = std::nan("");
    std::vector<double> special{nan, INFINITY, -INFINITY}, sp(3);
    exp_doubles(special.data(), 3, sp.data(), isa);
    CHECK(std::isnan(sp[0]));
    CHECK(sp[1] == INFINITY);
    CHECK(sp[2] == 0);

    auto lgs = lg;
    lgs.insert(lgs.end(), {0.0, -1.0, INFINITY, nan, -INFINITY});
    out.resize(lgs.size());
    log_doubles(lgs.data(), static_cast<std::int64_t>(lgs.size()), out.data(), isa);
    worst = 0;
    for (std::size_t i = 0; i < lgs.size(); ++i) worst = std::max(worst, ulps(out[i], std::log(lgs[i])));
    CAPTURE(worst);
    CHECK(worst <= 2);

    out.resize(l1.size());
    log1p_doubles(l1.data(), static_cast<std::int64_t>(l1.size()), out.data(), isa);
    worst = 0;
    for (std::size_t i = 0; i < l1.size(); ++i) worst = std::max(worst, ulps(out[i], std::log1p(l1[i])));
    CAPTURE(worst);
    CHECK(worst <= 2);

    auto scs = sc;
    scs.insert(scs.end(), {INFINITY, nan});
    std::vector<double> sn(scs.size()), cs(scs.size());
    sincos_doubles(scs.data(), static_cast<std::int64_t>(scs.size()), sn.data(), cs.data(), isa);
    double worst_s = 0, worst_c = 0;
    for (std::size_t i = 0; i < sc.size(); ++i) {
      worst_s = std::max(worst_s, std::abs(sn[i] - std::sin(sc[i])) / 0x1p-52);
      worst_c = std::max(worst_c, std::abs(cs[i] - std::cos(sc[i])) / 0x1p-52);
    }
    CAPTURE(worst_s, worst_c);
    CHECK(worst_s <= 2);
    CHECK(worst_c <= 2);
    CHECK(std::isnan(sn[sc.size()]));
    CHECK(std::isnan(cs[sc.size() + 1]));
  }
}

TEST_CASE("conv_forward_winograd equals the direct conv, and refuses what it does not handle", "[kernels]") {
  // F(4x4, 3x3) on extents multiples of 4, F(2x2, 3x3) on other even extents; inputs a multiple of 8.
  struct Case {
    Ext ext;
    int cin, cout;
  };
  const Act act = Act::leaky_relu;
  for (Isa isa : isas_to_test())
    for (const auto& c : std::vector<Case>{{{8, 8}, 8, 8}, {{16, 12}, 8, 5}, {{6, 10}, 16, 8}, {{4, 4}, 8, 25}}) {
      CAPTURE(isa_name(isa), c.ext, c.cin, c.cout);
      const std::int64_t V = volume(c.ext), n = 3;
      const auto nbr = neighbour_table(c.ext, 3);
      const auto in = randn(static_cast<std::size_t>(n * V * c.cin), 5);
      const auto w = randn(static_cast<std::size_t>(c.cout * c.cin * 9), 6);
      const auto bias = randn(static_cast<std::size_t>(c.cout), 7);
      const auto ref = naive_conv(in, n, V, 9, nbr, c.cin, c.cout, w.data(), bias.data(), &act);
      std::vector<double> out(ref.size());
      REQUIRE(conv_forward_winograd<double>(in.data(), n, c.ext[0], c.ext[1], c.cin, c.cout, w.data(), bias.data(),
                                            &act, out.data(), isa));
      CHECK(max_rel(out, ref) < 1e-12);
      const auto inf = cast<float>(in), wf = cast<float>(w), bf = cast<float>(bias);
      std::vector<float> outf(ref.size());
      REQUIRE(conv_forward_winograd<float>(inf.data(), n, c.ext[0], c.ext[1], c.cin, c.cout, wf.data(), bf.data(), &act,
                                           outf.data(), isa));
      CHECK(max_rel(widen(outf), ref) < 1e-4);
    }
  std::vector<double> x(8 * 8 * 8, 1.0), w(8 * 8 * 9, 1.0), b(8, 0.0), out(x.size(), -1.0);
  CHECK_FALSE(conv_forward_winograd<double>(x.data(), 1, 8, 8, 6, 8, w.data(), b.data(), nullptr, out.data()));
  CHECK_FALSE(conv_forward_winograd<double>(x.data(), 1, 7, 8, 8, 8, w.data(), b.data(), nullptr, out.data()));
  CHECK(out[0] == -1.0);  // nothing written
}
