// SPDX-License-Identifier: MIT
#include "latflow/core/params.hpp"

#include <cmath>
#include <sstream>

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
  if (convention == "nohalf") {
    m2_nohalf = m2;
    lam_nohalf = lam;
    field_scale = 1.0;
  } else if (convention == "half") {
    // S = sum 1/2 (d phi)^2 + 1/2 m2 phi^2 + lam phi^4 with phi = sqrt(2) phi_nohalf.
    m2_nohalf = m2;
    lam_nohalf = 4.0 * lam;
    field_scale = std::sqrt(2.0);
  } else if (convention == "hopping") {
    // S = sum -2 kappa sum_mu phi phi' + (1 - 2 lam) phi^2 + lam phi^4 with phi_nohalf = sqrt(kappa) phi.
    require(kappa > 0, "phi4.kappa", str(kappa), "must be > 0 in the hopping convention");
    m2_nohalf = (1.0 - 2.0 * lam) / kappa - 2.0 * dim;
    lam_nohalf = lam / (kappa * kappa);
    field_scale = 1.0 / std::sqrt(kappa);
  } else {
    throw ConfigError("phi4.convention = " + convention + ": must be nohalf, half or hopping");
  }
  if (lam_nohalf == 0.0)
    require(m2_nohalf > 0, "phi4.m2", str(m2), "the free field (lam = 0) needs m2 > 0 to be normalisable");
}

namespace {

// The theory, the lattice and the flow couplings that each theory takes.
void validate_physics(Config& c) {
  auto& f = c.flow;
  require(c.theory == "phi4" || c.theory == "u1" || c.theory == "sun", "theory", c.theory, "must be phi4, u1 or sun");
  require(!c.lattice.extents.empty() && c.lattice.extents.size() <= 4, "lattice.extents", str(c.lattice.extents.size()),
          "needs 1 to 4 extents");
  for (auto l : c.lattice.extents) require(l >= 2, "lattice.extents", str(l), "every extent must be >= 2");
  if (c.theory == "sun") {
    require(c.lattice.dim() >= 2, "lattice.extents", join(c.lattice.extents),
            "SU(N) gauge theory needs 2 to 4 extents");
    require(c.sun.n >= 2 && c.sun.n <= 6, "sun.n", str(c.sun.n), "must be in 2..6");
    require(std::isfinite(c.sun.beta) && c.sun.beta >= 0 && c.sun.beta <= 200, "sun.beta", str(c.sun.beta),
            "must be finite and in [0, 200]");
    if (f.coupling.empty()) f.coupling = "spectral";
    require(f.coupling == "spectral", "flow.coupling", f.coupling, "SU(N) flows take spectral");
    require(!f.z2, "flow.z2", "true", "is a phi4 option (SU(N) flows are gauge-equivariant instead)");
    require(!f.loops, "flow.loops", "true", "is a U(1) option");
    for (auto l : c.lattice.extents)
      require(l % 4 == 0 || f.layers == 0, "lattice.extents", join(c.lattice.extents),
              "SU(N) gauge-equivariant flow masks have period 4: extents must be multiples of 4 (or flow.layers = 0)");
  } else if (c.theory == "u1") {
    require(c.lattice.dim() >= 2, "lattice.extents", join(c.lattice.extents), "U(1) gauge theory needs 2 to 4 extents");
    require(std::isfinite(c.u1.beta) && c.u1.beta >= 0, "u1.beta", str(c.u1.beta), "must be finite and >= 0");
    if (f.coupling.empty()) f.coupling = "ncp";
    require(f.coupling == "ncp" || f.coupling == "spline", "flow.coupling", f.coupling,
            "U(1) flows take ncp or spline (circular)");
    // The gauge-equivariant masks (active, passive and two frozen plaquette stripes) repeat every 4 sites.
    for (auto l : c.lattice.extents)
      require(l % 4 == 0 || f.layers == 0, "lattice.extents", join(c.lattice.extents),
              "U(1) gauge-equivariant flow masks have period 4: extents must be multiples of 4 (or flow.layers = 0)");
    require(!f.z2, "flow.z2", "true", "is a phi4 option (U(1) flows are gauge-equivariant instead)");
    require(!f.loops || c.lattice.dim() == 2 || f.layers == 0, "flow.loops", "true",
            "the 2x1 loop features are 2D only");
    require(f.ncp_components >= 1 && f.ncp_components <= 64, "flow.ncp_components", str(f.ncp_components),
            "must be in 1..64");
  } else {
    c.phi4.resolve(c.lattice.dim());
    if (f.coupling.empty()) f.coupling = "affine";
    require(f.coupling == "affine" || f.coupling == "spline", "flow.coupling", f.coupling,
            "phi4 flows take affine or spline");
    require(!f.loops, "flow.loops", "true", "is a U(1) option");
  }
}

// The flow architecture and prior.
void validate_flow(Config& c) {
  auto& f = c.flow;
  if (f.prior.empty()) f.prior = c.theory == "phi4" ? "normal" : "haar";
  if (c.theory == "phi4")
    require(f.prior == "normal" || f.prior == "fourier", "flow.prior", f.prior, "phi4 flows take normal or fourier");
  else if (c.theory == "u1")
    require(f.prior == "haar" || f.prior == "plaquette" || f.prior == "exact", "flow.prior", f.prior,
            "U(1) flows take haar, plaquette or exact");
  else if (f.prior != "haar")
    require((f.prior == "plaquette" || f.prior == "exact") && c.sun.n <= 3, "flow.prior", f.prior,
            "SU(N) flows take haar, or plaquette or exact for N = 2, 3");
  if (c.theory == "u1" && f.prior != "haar")
    require(c.u1.beta <= 500, "u1.beta", str(c.u1.beta), "the plaquette and exact priors need beta <= 500");
  require(f.layers >= 0 && f.layers <= 1000, "flow.layers", str(f.layers), "must be in 0..1000");
  for (int h : f.hidden) require(h >= 1 && h <= 4096, "flow.hidden", str(h), "channels must be in 1..4096");
  require(f.kernel >= 1 && f.kernel % 2 == 1, "flow.kernel", str(f.kernel), "must be odd and >= 1");
  for (auto l : c.lattice.extents)
    require(f.kernel / 2 <= l, "flow.kernel", str(f.kernel), "the kernel half-width exceeds a lattice extent");
  require(f.activation == "leaky_relu" || f.activation == "tanh" || f.activation == "silu", "flow.activation",
          f.activation, "must be leaky_relu, tanh or silu");
  require(f.spline_bins >= 2 && f.spline_bins <= 256, "flow.spline_bins", str(f.spline_bins), "must be in 2..256");
  require(f.spline_bound > 0 && std::isfinite(f.spline_bound), "flow.spline_bound", str(f.spline_bound), "must be > 0");
  require(f.dtype == "float32" || f.dtype == "float64", "flow.dtype", f.dtype, "must be float32 or float64");
  for (auto l : c.lattice.extents)
    require(l % 2 == 0 || f.layers == 0 || (c.theory != "phi4" && c.lattice.dim() != 2), "lattice.extents", str(l),
            "checkerboard masks need even extents");
}

// Training and sampling.
void validate_training(Config& c) {
  const auto& t = c.train;
  require(t.steps >= 0, "train.steps", str(t.steps), "must be >= 0");
  require(t.batch >= 2, "train.batch", str(t.batch), "must be >= 2");
  require(t.lr > 0 && std::isfinite(t.lr), "train.lr", str(t.lr), "must be > 0");
  require(t.lr_schedule == "constant" || t.lr_schedule == "cosine", "train.lr_schedule", t.lr_schedule,
          "must be constant or cosine");
  require(t.lr_min >= 0 && t.lr_min <= t.lr, "train.lr_min", str(t.lr_min), "must be in [0, train.lr]");
  require(t.warmup >= 0, "train.warmup", str(t.warmup), "must be >= 0");
  require(t.gradient == "reparam" || t.gradient == "path", "train.gradient", t.gradient, "must be reparam or path");
  require(t.clip >= 0 && std::isfinite(t.clip), "train.clip", str(t.clip), "must be >= 0");
  require(t.log_every >= 1, "train.log_every", str(t.log_every), "must be >= 1");
  require(t.checkpoint_every >= 1, "train.checkpoint_every", str(t.checkpoint_every), "must be >= 1");
  require(t.max_minutes >= 0 && std::isfinite(t.max_minutes), "train.max_minutes", str(t.max_minutes), "must be >= 0");
  require(t.eval_every >= 0, "train.eval_every", str(t.eval_every), "must be >= 0");
  require(t.eval_samples >= 2, "train.eval_samples", str(t.eval_samples), "must be >= 2");
  require(t.max_bad_steps >= 1, "train.max_bad_steps", str(t.max_bad_steps), "must be >= 1");

  require(c.sample.proposals >= 1, "sample.proposals", str(c.sample.proposals), "must be >= 1");
  require(c.sample.block >= 1, "sample.block", str(c.sample.block), "must be >= 1");
}

// HMC and heat bath.
void validate_hmc(Config& c) {
  const auto& h = c.hmc;
  require(h.integrator == "leapfrog" || h.integrator == "omelyan", "hmc.integrator", h.integrator,
          "must be leapfrog or omelyan");
  require(h.trajectory_length > 0 && std::isfinite(h.trajectory_length), "hmc.trajectory_length",
          str(h.trajectory_length), "must be > 0");
  require(h.n_md >= 1 && h.n_md <= 100000, "hmc.n_md", str(h.n_md), "must be in 1..100000");
  require(h.jitter >= 0 && h.jitter < 1, "hmc.jitter", str(h.jitter), "must be in [0, 1)");
  require(h.target_acceptance > 0 && h.target_acceptance < 1, "hmc.target_acceptance", str(h.target_acceptance),
          "must be in (0, 1)");
  require(h.chains >= 1, "hmc.chains", str(h.chains), "must be >= 1");
  require(h.thermalization >= 0, "hmc.thermalization", str(h.thermalization), "must be >= 0");
  require(h.trajectories >= 1, "hmc.trajectories", str(h.trajectories), "must be >= 1");
  require(h.save_every >= 0, "hmc.save_every", str(h.save_every), "must be >= 0");
  require(h.flow_every >= 0, "hmc.flow_every", str(h.flow_every), "must be >= 0 (0 = pure HMC)");
  require(h.algorithm == "hmc" || h.algorithm == "heatbath", "hmc.algorithm", h.algorithm, "must be hmc or heatbath");
  if (h.algorithm == "heatbath") {
    require(c.theory != "phi4", "hmc.algorithm", h.algorithm, "phi4 has no heat bath (u1 and sun have one)");
    require(!h.check_reversibility, "hmc.check_reversibility", "true", "is an HMC check (hmc.algorithm = heatbath)");
  }
  if (!h.start.empty())
    require(c.theory == "sun" && c.sun.n == 3 && c.lattice.dim() == 4, "hmc.start", h.start,
            "a NERSC/ILDG start is a 4D SU(3) configuration (theory = sun, sun.n = 3, four extents)");
  require(h.overrelax >= 0 && h.overrelax <= 100, "hmc.overrelax", str(h.overrelax), "must be in 0..100");
}

// The non-equilibrium protocol, the run settings and the reference values.
void validate_ne_and_run(Config& c) {
  require(c.ne.steps >= 0 && c.ne.steps <= 1000000, "ne.steps", str(c.ne.steps), "must be in 0..1000000 (0 = off)");
  if (c.ne.steps > 0) {
    const bool ok = c.theory == "u1" ? c.ne.parameter == "u1.beta"
                    : c.theory == "sun"
                        ? c.ne.parameter == "sun.beta"
                        : (c.ne.parameter == "phi4.lam" ||
                           c.ne.parameter == (c.phi4.convention == "hopping" ? "phi4.kappa" : "phi4.m2"));
    require(ok, "ne.parameter", c.ne.parameter.empty() ? "''" : c.ne.parameter,
            c.theory == "phi4" ? (c.phi4.convention == "hopping" ? "phi4 protocols move phi4.lam or phi4.kappa"
                                                                 : "phi4 protocols move phi4.m2 or phi4.lam")
                               : "the protocol moves " + c.theory + ".beta");
    require_finite(c.ne.start, "ne.start");
    ne_stage(c, 0);  // the start must be valid physics too (the protocol is linear between two valid points)
  }

  require(!c.run.output.empty(), "run.output", "''", "must not be empty");
  require(c.run.commit_seconds >= 0, "run.commit_seconds", str(c.run.commit_seconds), "must be >= 0");
  require(!(c.run.resume && c.run.overwrite), "run.resume", "true", "contradicts run.overwrite = true");
  require(c.run.threads >= 1 && c.run.threads <= 1024, "run.threads", str(c.run.threads), "must be in 1..1024");
  require(c.run.device == "cpu" || c.run.device.rfind("cuda", 0) == 0, "run.device", c.run.device,
          "must be cpu or cuda[:N]");
  require(c.run.gamma_S > 0 && std::isfinite(c.run.gamma_S), "run.gamma_S", str(c.run.gamma_S), "must be > 0");
  for (const auto& [name, ref] : c.reference)
    require(std::isfinite(ref.value) && ref.error >= 0, "reference." + name, str(ref.value),
            "needs a finite value and an error >= 0");
}

}  // namespace

void Config::validate() {
  validate_physics(*this);
  validate_flow(*this);
  validate_training(*this);
  validate_hmc(*this);
  validate_ne_and_run(*this);
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

Config ne_stage(const Config& cfg, std::int64_t k) {
  Config c = cfg;
  c.ne.steps = 0;
  const std::int64_t n = cfg.ne.steps;
  double* p = cfg.ne.parameter == "u1.beta"      ? &c.u1.beta
              : cfg.ne.parameter == "sun.beta"   ? &c.sun.beta
              : cfg.ne.parameter == "phi4.m2"    ? &c.phi4.m2
              : cfg.ne.parameter == "phi4.lam"   ? &c.phi4.lam
              : cfg.ne.parameter == "phi4.kappa" ? &c.phi4.kappa
                                                 : nullptr;
  if (p == nullptr || n <= 0) return c;
  const double target = *p;
  // Linear in the parameter; the last point is the target itself, not a rounded sum.
  if (k < n) *p = cfg.ne.start + (target - cfg.ne.start) * static_cast<double>(k) / static_cast<double>(n);
  try {
    c.validate();
  } catch (const ConfigError& e) {
    throw ConfigError("ne.start = " + str(cfg.ne.start) + ": protocol point " + str(k) + " of " + str(n) + " (" +
                      cfg.ne.parameter + " = " + str(*p) + ") is not valid: " + e.what());
  }
  return c;
}

std::string physics_identity(const Config& c) {
  std::ostringstream os;
  os.precision(17);
  os << "theory = " << c.theory << "\n"
     << "lattice.extents = " << join(c.lattice.extents) << "\n";
  if (c.theory == "sun")
    os << "sun.n = " << c.sun.n << "\n"
       << "sun.beta = " << c.sun.beta << "\n";
  else if (c.theory == "u1")
    os << "u1.beta = " << c.u1.beta << "\n";
  else
    os << "phi4.m2_nohalf = " << c.phi4.m2_nohalf << "\n"
       << "phi4.lam_nohalf = " << c.phi4.lam_nohalf << "\n";
  return os.str();
}

// The physics and the architecture (identity texts are compared key by key, so the order of lines is free).
std::string model_identity(const Config& c) {
  std::ostringstream os;
  os.precision(17);
  os << physics_identity(c);
  if (c.theory == "u1")
    os << "flow.ncp_components = " << c.flow.ncp_components << "\n"
       << "flow.loops = " << (c.flow.loops ? "true" : "false") << "\n";
  os << "flow.coupling = " << c.flow.coupling << "\n"
     << "flow.layers = " << c.flow.layers << "\n"
     << "flow.hidden = " << join(c.flow.hidden) << "\n"
     << "flow.kernel = " << c.flow.kernel << "\n"
     << "flow.activation = " << c.flow.activation << "\n"
     << "flow.z2 = " << (c.flow.z2 ? "true" : "false") << "\n"
     << "flow.spline_bins = " << c.flow.spline_bins << "\n"
     << "flow.spline_bound = " << c.flow.spline_bound << "\n"
     << "flow.dtype = " << c.flow.dtype << "\n";
  // Only when not the default, so that checkpoints and ensembles made before the key existed still match.
  if (!c.flow.prior.empty() && c.flow.prior != (c.theory == "phi4" ? "normal" : "haar"))
    os << "flow.prior = " << c.flow.prior << "\n";
  return os.str();
}

std::string training_identity(const Config& c) {
  std::ostringstream os;
  os.precision(17);
  os << "run.seed = " << c.run.seed << "\n"
     << "train.batch = " << c.train.batch << "\n"
     << "train.lr = " << c.train.lr << "\n"
     << "train.lr_schedule = " << c.train.lr_schedule << "\n"
     << "train.lr_min = " << c.train.lr_min << "\n"
     << "train.warmup = " << c.train.warmup << "\n"
     << "train.clip = " << c.train.clip << "\n";
  // Only when not the default, so that checkpoints made before the key existed stay continuable.
  if (c.train.gradient != "reparam") os << "train.gradient = " << c.train.gradient << "\n";
  // A cosine schedule is a function of the total step count: continuing with another count would jump.
  if (c.train.lr_schedule == "cosine") os << "train.steps = " << c.train.steps << "\n";
  if (!c.train.init_from.empty()) os << "train.init_from = " << c.train.init_from << "\n";
  return os.str();
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
