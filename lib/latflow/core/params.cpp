// SPDX-License-Identifier: MIT
#include "latflow/core/params.hpp"

#include <cmath>
#include <sstream>

#include "latflow/core/config_keys.hpp"
#include "latflow/core/error.hpp"

namespace latflow {
namespace {

template <class T>
std::string str(const T& v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

void require(bool ok, const std::string& key, const std::string& value, const std::string& why) {
  if (!ok) throw ConfigError(key + " = " + value + ": " + why);
}

void require_finite(double v, const std::string& key) { require(std::isfinite(v), key, str(v), "must be finite"); }

template <class T>
std::string join(const std::vector<T>& v) {
  std::ostringstream os;
  for (std::size_t i = 0; i < v.size(); ++i) os << (i ? " " : "") << v[i];
  return os.str();
}

}  // namespace

std::int64_t LatticeParams::volume() const {
  std::int64_t v = 1;
  for (auto l : extents) v *= l;
  return v;
}

void Phi4Params::resolve(int dim) {
  require_finite(m2, "phi4.m2");
  require_finite(lam, "phi4.lam");
  require_finite(kappa, "phi4.kappa");
  require(lam >= 0, "phi4.lam", str(lam), "must be >= 0 (the action is unbounded below otherwise)");
  switch (convention) {
    case Phi4Convention::nohalf:
      m2_nohalf = m2;
      lam_nohalf = lam;
      field_scale = 1.0;
      break;
    case Phi4Convention::half:
      // S = sum 1/2 (d phi)^2 + 1/2 m2 phi^2 + lam phi^4 with phi = sqrt(2) phi_nohalf.
      m2_nohalf = m2;
      lam_nohalf = 4.0 * lam;
      field_scale = std::sqrt(2.0);
      break;
    case Phi4Convention::hopping:
      // S = sum -2 kappa sum_mu phi phi' + (1 - 2 lam) phi^2 + lam phi^4 with phi_nohalf = sqrt(kappa) phi.
      require(kappa > 0, "phi4.kappa", str(kappa), "must be > 0 in the hopping convention");
      m2_nohalf = (1.0 - 2.0 * lam) / kappa - 2.0 * dim;
      lam_nohalf = lam / (kappa * kappa);
      field_scale = 1.0 / std::sqrt(kappa);
      break;
  }
  if (lam_nohalf == 0.0)
    require(m2_nohalf > 0, "phi4.m2", str(m2), "the free field (lam = 0) needs m2 > 0 to be normalisable");
}

const TheoryInfo& theory_info(TheoryId id) {
  using C = Coupling;
  using P = Prior;
  static const TheoryInfo table[] = {
      {TheoryId::phi4, "phi4", false, C::affine, {C::affine, C::spline}, P::normal, {P::normal, P::fourier}, ""},
      {TheoryId::u1,
       "U(1)",
       true,
       C::ncp,
       {C::ncp, C::spline},
       P::haar,
       {P::haar, P::plaquette, P::exact},
       "wilson: S = -beta sum_P cos theta_P; links stored as angles [2, L0, L1]"},
      {TheoryId::sun,
       "SU(N)",
       true,
       C::spectral,
       {C::spectral},
       P::haar,
       {P::haar, P::plaquette, P::exact},
       "wilson: S = -(beta/N) sum_P Re tr U_P; links stored as [2, L0, L1, N, N, 2] (real, imag)"},
  };
  for (const auto& t : table)
    if (t.id == id) return t;
  throw ConfigError("theory: unknown theory id " + std::to_string(static_cast<int>(id)));
}

namespace {

template <class E>
bool contains(const std::vector<E>& v, E x) {
  for (auto e : v)
    if (e == x) return true;
  return false;
}

template <class E>
std::string or_list(const std::vector<E>& v) {
  std::string out;
  for (std::size_t i = 0; i < v.size(); ++i)
    out += (i == 0 ? "" : i + 1 == v.size() ? " or " : ", ") + choice_name(v[i]);
  return out;
}

// The lattice, the theory's couplings and the flow couplings it takes (the keys' own rules ran before).
void validate_physics(Config& c) {
  auto& f = c.flow;
  const auto& t = theory_info(c.theory);
  require(!c.lattice.extents.empty() && c.lattice.extents.size() <= 4, "lattice.extents", str(c.lattice.extents.size()),
          "needs 1 to 4 extents");
  if (t.gauge) {
    require(c.lattice.dim() >= 2, "lattice.extents", join(c.lattice.extents),
            std::string(t.label) + " gauge theory needs 2 to 4 extents");
    // The gauge-equivariant masks (active, passive and two frozen plaquette stripes) repeat every 4 sites.
    for (auto l : c.lattice.extents)
      require(l % 4 == 0 || f.layers == 0, "lattice.extents", join(c.lattice.extents),
              std::string(t.label) +
                  " gauge-equivariant flow masks have period 4: extents must be multiples of 4 (or flow.layers = 0)");
    require(!f.z2, "flow.z2", "true",
            std::string("is a phi4 option (") + t.label + " flows are gauge-equivariant instead)");
  } else {
    c.phi4.resolve(c.lattice.dim());
  }
  if (f.coupling == Coupling::automatic) f.coupling = t.default_coupling;
  require(contains(t.couplings, f.coupling), "flow.coupling", choice_name(f.coupling),
          std::string(t.label) + " flows take " + or_list(t.couplings));
  if (c.theory == TheoryId::u1)
    require(!f.loops || c.lattice.dim() == 2 || f.layers == 0, "flow.loops", "true",
            "the 2x1 loop features are 2D only");
  else
    require(!f.loops, "flow.loops", "true", "is a U(1) option");
}

// The flow architecture and prior.
void validate_flow(Config& c) {
  auto& f = c.flow;
  const auto& t = theory_info(c.theory);
  if (f.prior == Prior::automatic) f.prior = t.default_prior;
  require(contains(t.priors, f.prior), "flow.prior", choice_name(f.prior),
          std::string(t.label) + " flows take " + or_list(t.priors));
  if (c.theory == TheoryId::sun)
    require(f.prior == Prior::haar || c.sun.n <= 3, "flow.prior", choice_name(f.prior),
            "SU(N) flows take haar, or plaquette or exact for N = 2, 3");
  if (c.theory == TheoryId::u1 && f.prior != Prior::haar)
    require(c.u1.beta <= 500, "u1.beta", str(c.u1.beta), "the plaquette and exact priors need beta <= 500");
  for (auto l : c.lattice.extents)
    require(f.kernel / 2 <= l, "flow.kernel", str(f.kernel), "the kernel half-width exceeds a lattice extent");
  for (auto l : c.lattice.extents)
    require(l % 2 == 0 || (f.layers == 0 && c.ne.blocks == 0) || (t.gauge && c.lattice.dim() != 2), "lattice.extents",
            str(l), "checkerboard masks need even extents");
}

// Cross-key rules of training, HMC and the run.
void validate_run(Config& c) {
  require(c.train.lr_min >= 0 && c.train.lr_min <= c.train.lr, "train.lr_min", str(c.train.lr_min),
          "must be in [0, train.lr]");
  const auto& h = c.hmc;
  if (h.algorithm == UpdateAlgorithm::heatbath) {
    require(theory_info(c.theory).gauge, "hmc.algorithm", "heatbath", "phi4 has no heat bath (u1 and sun have one)");
    require(!h.check_reversibility, "hmc.check_reversibility", "true", "is an HMC check (hmc.algorithm = heatbath)");
  }
  if (!h.start.empty())
    require(c.theory == TheoryId::sun && c.sun.n == 3 && c.lattice.dim() == 4, "hmc.start", h.start,
            "a NERSC/ILDG start is a 4D SU(3) configuration (theory = sun, sun.n = 3, four extents)");
  require(!(c.run.resume && c.run.overwrite), "run.resume", "true", "contradicts run.overwrite = true");
  for (const auto& [name, ref] : c.reference)
    require(std::isfinite(ref.value) && ref.error >= 0, "reference." + name, str(ref.value),
            "needs a finite value and an error >= 0");
}

// The couplings a protocol may move for this theory (and phi4 convention).
std::vector<NeParameter> ne_parameters(const Config& c) {
  switch (c.theory) {
    case TheoryId::u1: return {NeParameter::u1_beta, NeParameter::u1_defect};
    case TheoryId::sun: return {NeParameter::sun_beta, NeParameter::sun_defect};
    case TheoryId::phi4: break;
  }
  return {c.phi4.convention == Phi4Convention::hopping ? NeParameter::phi4_kappa : NeParameter::phi4_m2,
          NeParameter::phi4_lam};
}

// The non-equilibrium protocol.
void validate_ne(Config& c) {
  if (c.ne.steps == 0) {
    require(c.ne.blocks == 0, "ne.blocks", str(c.ne.blocks), "needs a protocol (ne.steps > 0)");
    return;
  }
  const auto allowed = ne_parameters(c);
  require(contains(allowed, c.ne.parameter), "ne.parameter",
          c.ne.parameter == NeParameter::none ? "''" : choice_name(c.ne.parameter),
          allowed.size() == 2 ? "the protocol moves " + choice_name(allowed[0]) + " or " + choice_name(allowed[1])
                              : "the protocol moves " + choice_name(allowed[0]));
  require_finite(c.ne.start, "ne.start");
  // The heat bath draws each link from its staples at one beta; the defect plaquette's own coupling is HMC's only.
  const bool defect = c.ne.parameter == NeParameter::u1_defect || c.ne.parameter == NeParameter::sun_defect;
  require(!(defect && c.hmc.algorithm == UpdateAlgorithm::heatbath), "hmc.algorithm", "heatbath",
          "a " + choice_name(c.ne.parameter) + " protocol updates with hmc");
  ne_stage(c, 0);  // the start must be valid physics too (the protocol is linear between two valid points)
  if (c.ne.blocks == 0) return;
  require(c.ne.blocks <= c.ne.steps, "ne.blocks", str(c.ne.blocks),
          "must not exceed ne.steps = " + str(c.ne.steps) + " (one block at most before each update)");
  // The blocks' inputs come from the updates, whose randomness is held fixed: only the reparameterised gradient
  // applies (docs/physics.md "Stochastic normalizing flows").
  require(c.train.gradient == Gradient::reparam, "train.gradient", choice_name(c.train.gradient),
          "stochastic normalizing flows (ne.blocks > 0) train with reparam");
  if (c.ne.block_layers == 0) {
    const int d = c.lattice.dim();
    c.ne.block_layers = theory_info(c.theory).gauge ? 4 * d * (d - 1) : 2;
  }
}

}  // namespace

void Config::validate() {
  for (const auto& k : config_keys())
    if (k.check && k.applies_to(theory)) k.check(*this);
  validate_physics(*this);
  validate_flow(*this);
  validate_run(*this);
  validate_ne(*this);
}

}  // namespace latflow

namespace latflow {
namespace {
std::map<std::string, std::string> parse_lines(const std::string& text) {
  std::map<std::string, std::string> m;
  std::istringstream is(text);
  std::string line;
  while (std::getline(is, line)) {
    auto eq = line.find(" = ");
    if (eq != std::string::npos) m[line.substr(0, eq)] = line.substr(eq + 3);
  }
  return m;
}
}  // namespace

static double* ne_parameter_field(Config& c, NeParameter p) {
  switch (p) {
    case NeParameter::u1_beta: return &c.u1.beta;
    case NeParameter::u1_defect: return &c.u1.defect;
    case NeParameter::sun_beta: return &c.sun.beta;
    case NeParameter::sun_defect: return &c.sun.defect;
    case NeParameter::phi4_m2: return &c.phi4.m2;
    case NeParameter::phi4_lam: return &c.phi4.lam;
    case NeParameter::phi4_kappa: return &c.phi4.kappa;
    case NeParameter::none: break;
  }
  return nullptr;
}

Config ne_stage(const Config& cfg, std::int64_t k) {
  Config c = cfg;
  c.ne.steps = 0;
  c.ne.blocks = 0;
  const std::int64_t n = cfg.ne.steps;
  double* p = ne_parameter_field(c, cfg.ne.parameter);
  if (p == nullptr || n <= 0) return c;
  const double target = *p;
  // Linear in the parameter; the last point is the target itself, not a rounded sum.
  if (k < n) *p = cfg.ne.start + (target - cfg.ne.start) * static_cast<double>(k) / static_cast<double>(n);
  try {
    c.validate();
  } catch (const ConfigError& e) {
    throw ConfigError("ne.start = " + str(cfg.ne.start) + ": protocol point " + str(k) + " of " + str(n) + " (" +
                      choice_name(cfg.ne.parameter) + " = " + str(*p) + ") is not valid: " + e.what());
  }
  return c;
}

std::string ne_protocol_identity(const Config& c) {
  if (c.ne.steps == 0) return "";
  std::string out;
  std::istringstream target(physics_identity(c));
  for (std::string line; std::getline(target, line);) out += "ne.target." + line + "\n";
  out += identity_lines(
      c, {"ne.steps", "ne.parameter", "ne.start", "hmc.integrator", "hmc.trajectory_length", "hmc.n_md", "hmc.jitter"});
  // Only heat-bath protocols have these lines, so files of earlier versions resume.
  if (c.hmc.algorithm != UpdateAlgorithm::hmc) out += identity_lines(c, {"hmc.algorithm", "hmc.overrelax"});
  return out;
}

std::int64_t ne_block_step(const Config& c, std::int64_t j) { return (j + 1) * c.ne.steps / c.ne.blocks; }

std::string physics_identity(const Config& c) {
  std::string out;
  for (const auto& k : config_keys())
    if (k.physics && k.applies_to(c.theory)) out += k.name + " = " + k.exact(c) + "\n";
  // A defect protocol's stage (not a key: a config's own physics has 1, and then no line, as before the protocol
  // existed): a flow trained at defect 0 is not one of the periodic theory.
  const double defect = c.theory == TheoryId::u1 ? c.u1.defect : c.theory == TheoryId::sun ? c.sun.defect : 1.0;
  if (defect != 1) {
    std::ostringstream os;
    os.precision(17);
    os << defect;
    out += (c.theory == TheoryId::u1 ? "u1.defect = " : "sun.defect = ") + os.str() + "\n";
  }
  return out;
}

// The physics and the architecture (identity texts are compared key by key; the order of lines is kept as in files
// written before the registry, so that identities stay bitwise equal).
std::string model_identity(const Config& c) {
  // A protocol's model is the flow of its start physics and, for a stochastic normalizing flow, the blocks trained
  // for this protocol.
  if (c.ne.steps > 0)
    return model_identity(ne_stage(c, 0)) +
           (c.ne.blocks > 0 ? ne_protocol_identity(c) + identity_lines(c, {"ne.blocks", "ne.block_layers"}) : "");
  std::string out = physics_identity(c) + identity_lines(c, {"flow.ncp_components", "flow.loops"}) +
                    identity_lines(c, {"flow.coupling", "flow.layers", "flow.hidden", "flow.kernel", "flow.activation",
                                       "flow.z2", "flow.spline_bins", "flow.spline_bound", "flow.dtype"});
  // Only when not the default, so that checkpoints and ensembles made before the key existed still match.
  if (c.flow.prior != Prior::automatic && c.flow.prior != theory_info(c.theory).default_prior)
    out += identity_lines(c, {"flow.prior"});
  return out;
}

std::string training_identity(const Config& c) {
  std::string out = identity_lines(
      c, {"run.seed", "train.batch", "train.lr", "train.lr_schedule", "train.lr_min", "train.warmup", "train.clip"});
  // Only when not the default, so that checkpoints made before the key existed stay continuable.
  if (c.train.gradient != Gradient::reparam) out += identity_lines(c, {"train.gradient"});
  // A cosine schedule is a function of the total step count: continuing with another count would jump.
  if (c.train.lr_schedule == LrSchedule::cosine) out += identity_lines(c, {"train.steps"});
  if (!c.train.init_from.empty()) out += identity_lines(c, {"train.init_from"});
  return out;
}

std::string first_difference(const std::string& stored, const std::string& requested) {
  auto a = parse_lines(stored), b = parse_lines(requested);
  for (const auto& [k, v] : b) {
    auto it = a.find(k);
    const std::string old = it == a.end() ? "(absent)" : it->second;
    if (old != v) return k + ": stored " + old + ", requested " + v;
  }
  for (const auto& [k, v] : a)
    if (!b.count(k)) return k + ": stored " + v + ", requested (absent)";
  return "";
}

}  // namespace latflow
