// SPDX-License-Identifier: MIT
// The choice-valued config keys as enums, with the names they have in config files, identities and ensembles
// (docs/design.md "Config keys"). One table per enum; choice_name and parse_choice are the only conversions.
#pragma once
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace latflow {

enum class TheoryId { phi4, u1, sun };
enum class Phi4Convention { nohalf, half, hopping };
// automatic: the theory's default, set by Config::validate (TheoryInfo).
enum class Coupling { automatic, affine, spline, ncp, spectral };
enum class Activation { leaky_relu, tanh, silu };
enum class NetDtype { float32, float64 };
enum class Prior { automatic, normal, fourier, haar, plaquette, exact };
enum class LrSchedule { constant, cosine };
enum class Gradient { reparam, path };
enum class Integrator { kLeapfrog, kOmelyan };
enum class UpdateAlgorithm { hmc, heatbath };
// The coupling a non-equilibrium protocol moves; none = no protocol.
enum class NeParameter { none, phi4_m2, phi4_lam, phi4_kappa, u1_beta, u1_defect, sun_beta, sun_defect };

template <class E>
struct ChoiceNames;

#define LATFLOW_CHOICES(E, ...)                                              \
  template <>                                                                \
  struct ChoiceNames<E> {                                                    \
    static constexpr std::pair<E, std::string_view> table[] = {__VA_ARGS__}; \
  }

LATFLOW_CHOICES(TheoryId, {TheoryId::phi4, "phi4"}, {TheoryId::u1, "u1"}, {TheoryId::sun, "sun"});
LATFLOW_CHOICES(Phi4Convention, {Phi4Convention::nohalf, "nohalf"}, {Phi4Convention::half, "half"},
                {Phi4Convention::hopping, "hopping"});
LATFLOW_CHOICES(Coupling, {Coupling::automatic, ""}, {Coupling::affine, "affine"}, {Coupling::spline, "spline"},
                {Coupling::ncp, "ncp"}, {Coupling::spectral, "spectral"});
LATFLOW_CHOICES(Activation, {Activation::leaky_relu, "leaky_relu"}, {Activation::tanh, "tanh"},
                {Activation::silu, "silu"});
LATFLOW_CHOICES(NetDtype, {NetDtype::float32, "float32"}, {NetDtype::float64, "float64"});
LATFLOW_CHOICES(Prior, {Prior::automatic, ""}, {Prior::normal, "normal"}, {Prior::fourier, "fourier"},
                {Prior::haar, "haar"}, {Prior::plaquette, "plaquette"}, {Prior::exact, "exact"});
LATFLOW_CHOICES(LrSchedule, {LrSchedule::constant, "constant"}, {LrSchedule::cosine, "cosine"});
LATFLOW_CHOICES(Gradient, {Gradient::reparam, "reparam"}, {Gradient::path, "path"});
LATFLOW_CHOICES(Integrator, {Integrator::kLeapfrog, "leapfrog"}, {Integrator::kOmelyan, "omelyan"});
LATFLOW_CHOICES(UpdateAlgorithm, {UpdateAlgorithm::hmc, "hmc"}, {UpdateAlgorithm::heatbath, "heatbath"});
LATFLOW_CHOICES(NeParameter, {NeParameter::none, ""}, {NeParameter::phi4_m2, "phi4.m2"},
                {NeParameter::phi4_lam, "phi4.lam"}, {NeParameter::phi4_kappa, "phi4.kappa"},
                {NeParameter::u1_beta, "u1.beta"}, {NeParameter::u1_defect, "u1.defect"},
                {NeParameter::sun_beta, "sun.beta"}, {NeParameter::sun_defect, "sun.defect"});
#undef LATFLOW_CHOICES

// The name of a choice ("" for automatic and none).
template <class E>
std::string choice_name(E e) {
  for (const auto& [v, n] : ChoiceNames<E>::table)
    if (v == e) return std::string(n);
  return "?";
}

// The choice called `text`; false if there is none.
template <class E>
bool parse_choice(std::string_view text, E* out) {
  for (const auto& [v, n] : ChoiceNames<E>::table)
    if (n == text) {
      *out = v;
      return true;
    }
  return false;
}

// The choice called `text` for names the code itself spells (tests, files written by latflow); std::invalid_argument
// if there is none. User input goes through parse_choice and a ConfigError naming the key.
template <class E>
E choice(std::string_view text) {
  E out{};
  if (!parse_choice(text, &out)) throw std::invalid_argument("no choice called '" + std::string(text) + "'");
  return out;
}

// "a, b or c": the named choices (not automatic/none), for messages.
template <class E>
std::string choice_list() {
  std::string out;
  std::size_t count = 0, i = 0;
  for (const auto& entry : ChoiceNames<E>::table) count += !entry.second.empty();
  for (const auto& [v, n] : ChoiceNames<E>::table) {
    if (n.empty()) continue;
    out += (i == 0 ? "" : i + 1 == count ? " or " : ", ") + std::string(n);
    ++i;
  }
  return out;
}

}  // namespace latflow
