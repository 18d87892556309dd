// SPDX-License-Identifier: MIT
// Plain parameter structs, one per component, with defaults. apps/ fills them from INI files and command-line
// overrides (Boost.Program_options lives only there); validate() throws ConfigError naming the key and value.
// No torch here: these headers are shared by the CLI, the I/O and the analysis code.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "latflow/core/choices.hpp"

namespace latflow {

struct LatticeParams {
  std::vector<std::int64_t> extents{8, 8};  // [lattice] extents = 8 8   (d = number of entries, 1..4)
  std::int64_t volume() const;
  int dim() const { return static_cast<int>(extents.size()); }
};

// phi^4 couplings as the user wrote them, plus the internal no-1/2 values (docs/physics.md "Scalar phi^4 theory").
struct Phi4Params {
  Phi4Convention convention = Phi4Convention::nohalf;
  double m2 = -4.0;    // nohalf/half: the mass term
  double lam = 8.0;    // quartic coupling in the input convention
  double kappa = 0.0;  // hopping convention only
  // Derived by resolve(): the no-1/2 couplings used internally, and phi_input = field_scale * phi_nohalf.
  double m2_nohalf = 0, lam_nohalf = 0, field_scale = 1;
  void resolve(int dim);  // converts exactly; throws ConfigError on bad values
};

// U(1) lattice gauge theory in d = 2..4 (docs/physics.md "U(1) gauge theory"): S = -beta sum_P cos theta_P.
struct U1Params {
  double beta = 2.0;
  // The coupling of one plaquette, the (0, 1)-plane plaquette at the last site, in units of beta: 1 = the periodic
  // theory. Not a config key: only the stages of an `ne.parameter = u1.defect` protocol move it (docs/physics.md
  // "Switching on a defect").
  double defect = 1.0;
};

// SU(N) lattice gauge theory in d = 2..4 (docs/physics.md "SU(N) gauge theory"): S = -(beta/N) sum_P Re tr U_P.
struct SUNParams {
  int n = 2;  // N, 2..6
  double beta = 2.0;
  double defect = 1.0;  // as U1Params::defect: the stages of an `ne.parameter = sun.defect` protocol only
};

struct FlowParams {
  // phi4: affine | spline (default affine); u1: ncp | spline (circular; default ncp); sun: spectral.
  Coupling coupling = Coupling::automatic;
  int layers = 16;                // coupling layers (each updates one checkerboard parity)
  std::vector<int> hidden{8, 8};  // hidden channels of the conv net
  int kernel = 3;                 // odd kernel size
  Activation activation = Activation::leaky_relu;
  bool z2 = false;                     // Z2-equivariant (affine only): scale net even, shift net odd
  int spline_bins = 8;                 // spline: number of bins K
  int ncp_components = 2;              // u1 ncp: mixture components of the non-compact projection kernel
  bool loops = false;                  // u1: also feed the frozen 2x1 and 1x2 loops to the nets
  double spline_bound = 4.0;           // spline: the map is a spline on [-B, B], identity outside
  NetDtype dtype = NetDtype::float32;  // the nets; S and log-weights are always float64
  // phi4: normal (N(0,1) per site; the default) | fourier (N(0,1) then a learned translation-invariant Gaussian
  // map, a covariance diagonal in momentum space; FourierScale in flow.hpp).
  // u1: haar (uniform links; the default) | plaquette (independent one-plaquette Boltzmann factors in a maximal-tree
  // gauge, one defect plaquette) | exact (the plaquettes from their exact conditionals: an exact sampler);
  // theories/u1_prior.hpp. sun: haar | plaquette | exact (N = 2, 3; theories/sun_prior.hpp). automatic = the
  // theory's default (set by validate()).
  Prior prior = Prior::automatic;
  // Not a key: the position of the first layer in the sequence of masks (parities, planes and stripes), so that the
  // flow blocks of a stochastic normalizing flow continue the sequence instead of repeating its start.
  int first_layer = 0;
};

struct TrainParams {
  std::int64_t steps = 2500;
  std::int64_t batch = 64;
  double lr = 1e-3;
  LrSchedule lr_schedule = LrSchedule::cosine;  // constant | cosine (to lr_min at the last step)
  double lr_min = 1e-5;
  std::int64_t warmup = 0;  // linear warm-up steps
  double clip = 0.0;        // max gradient norm; 0 = off
  // reparam: gradient of the reverse-KL estimate mean(log q(x) + S(x)), x = f(z), through the sample and the
  // weights; path: through the sample only, log q evaluated at fixed weights (its score term has zero mean
  // but not zero variance; without it the gradient's variance vanishes as q -> p; Vaitl et al. 2022,
  // arXiv:2207.08219). One more pass through the flow (the inverse) per step.
  Gradient gradient = Gradient::reparam;
  std::int64_t log_every = 50;
  std::int64_t checkpoint_every = 500;
  double max_minutes = 0.0;         // wall-clock budget; 0 = none (stops cleanly and checkpoints)
  std::int64_t max_bad_steps = 20;  // consecutive non-finite steps tolerated before giving up
  bool restart = false;             // discard an existing checkpoint and train from scratch
  // Start a new training from the weights of another checkpoint with the same architecture but possibly another
  // lattice size or couplings (the nets are local and translation-equivariant, so they apply to any extents):
  // train small and cheap, then fine-tune at the target volume. Its training time is counted in this one's.
  std::string init_from;
  std::int64_t eval_every = 0;  // evaluate ESS/acceptance on eval_samples fresh proposals; 0 = off
  std::int64_t eval_samples = 10000;
};

struct SampleParams {
  std::int64_t proposals = 10000;
  std::int64_t block = 256;   // proposals per random-stream block (results are independent of ranks/threads)
  bool store_configs = true;  // store accepted configurations (each once) in the ensemble
};

// Hybrid Monte Carlo baseline (docs/physics.md "HMC baseline"): B independent chains in the batch dimension.
struct HmcParams {
  // hmc: HMC trajectories; heatbath: each "trajectory" is one heat-bath sweep followed by `overrelax`
  // overrelaxation sweeps (gauge theories; docs/physics.md "Heat bath and overrelaxation"), the n_md keys unused.
  UpdateAlgorithm algorithm = UpdateAlgorithm::hmc;
  int overrelax = 0;
  // A NERSC or ILDG file (4D SU(3)) every chain starts from instead of the cold start; empty = cold start.
  std::string start;
  Integrator integrator = Integrator::kOmelyan;  // leapfrog | omelyan (2MN, lambda = 0.1932)
  double trajectory_length = 1.0;                // MD time tau of one trajectory (before the jitter)
  int n_md = 10;                                 // MD steps per trajectory at the start; tuned during thermalisation
  double jitter = 0.3;                // step size drawn uniformly in dt (1 +- jitter), per trajectory and chain
  double target_acceptance = 0.8;     // n_md is tuned toward this Metropolis acceptance
  std::int64_t chains = 16;           // independent chains (replicas for the analysis)
  std::int64_t thermalization = 200;  // trajectories per chain discarded (n_md is tuned in the first 3/4)
  std::int64_t trajectories = 1000;   // trajectories per chain kept after thermalisation
  std::int64_t save_every = 0;        // store the configurations every k kept trajectories; 0 = never
  bool check_reversibility = false;   // integrate every trajectory back and report max |dx|, |dp|
  // Mixed chains (docs/physics.md "Mixed chains"): after every flow_every kept trajectories each chain makes one
  // independence-Metropolis step with a proposal of the trained flow (the checkpoint of `latflow train`).
  // 0 = pure HMC.
  std::int64_t flow_every = 0;
};

// Non-equilibrium (annealed) proposals (docs/physics.md "Non-equilibrium proposals"): each proposal starts from
// the flow (trained at `parameter` = start) or its prior, then `steps` times moves the coupling one step of a
// linear protocol toward the config's value and makes one HMC trajectory there (hmc.integrator,
// trajectory_length, n_md (not tuned), jitter). Its weight carries the work done by the protocol. 0 = off.
struct NeParams {
  std::int64_t steps = 0;
  NeParameter parameter = NeParameter::none;  // phi4.m2 | phi4.lam | phi4.kappa (input convention) | u1.beta |
                                              // u1.defect | sun.beta | sun.defect
  double start = 0.0;                         // the parameter's value where the proposals start
  // Stochastic normalizing flows (docs/physics.md "Stochastic normalizing flows"): `blocks` flow blocks of
  // `block_layers` coupling layers each (float64, the flow.* nets), block j applied just before the update of step
  // (j + 1) steps / blocks, trained with the start flow by `latflow train` through the protocol. 0 = none.
  std::int64_t blocks = 0;
  int block_layers = 0;  // 0 = automatic: 2 for phi4 (both parities), 4 d (d - 1) for gauge theories (every link)
};

struct RunParams {
  std::string output = "latflow_out.h5";
  std::string checkpoint;  // default: output + ".ckpt"
  bool overwrite = false;
  bool resume = false;         // sample/hmc: continue OUTPUT.partial (or extend a complete OUTPUT)
  double commit_seconds = 10;  // sample/hmc: seconds between commits of the output (0: every round)
  std::uint64_t seed = 1;
  int threads = 1;
  std::string device = "cpu";
  double gamma_S = 1.5;  // Wolff's S for the automatic window
};

// A reference value to print beside an estimate: [reference] chi2 = 0.7456 0.0013
struct Reference {
  double value = 0, error = 0;
};

struct Config {
  TheoryId theory = TheoryId::phi4;
  LatticeParams lattice;
  Phi4Params phi4;
  U1Params u1;
  SUNParams sun;
  FlowParams flow;
  TrainParams train;
  SampleParams sample;
  HmcParams hmc;
  NeParams ne;
  RunParams run;
  // The config file's [reference] values. They describe the physics of the file itself: when the command line
  // changes that physics (physics_identity differs), parse_config drops them and says why in reference_note.
  std::map<std::string, Reference> reference;
  std::string reference_note;
  std::string source_text;  // the input file verbatim
  std::string source_path;
  std::string effective_text;  // every key with its effective value, INI syntax
  void validate();             // throws ConfigError naming the key
  std::string checkpoint_path() const { return run.checkpoint.empty() ? run.output + ".ckpt" : run.checkpoint; }
};

}  // namespace latflow

namespace latflow {
// What differs between the theories, in one place (validation, identities, ensembles, factories).
struct TheoryInfo {
  TheoryId id;
  const char* label;  // "phi4", "U(1)", "SU(N)": the name in messages
  bool gauge;         // link fields (gauge-equivariant flows with masks of period 4, heat bath, d >= 2)
  Coupling default_coupling;
  std::vector<Coupling> couplings;
  Prior default_prior;
  std::vector<Prior> priors;
  const char* action;  // the ensemble's /theory action attribute ("" for phi4, which stores its convention)
};
const TheoryInfo& theory_info(TheoryId id);

// "key = value" lines of everything that fixes the model's meaning (theory, lattice, flow architecture) and
// its training recipe. A checkpoint stores them; continuing from it requires equal lines, and a mismatch names
// the first differing key.
std::string model_identity(const Config& cfg);
std::string training_identity(const Config& cfg);
// Non-equilibrium protocol point k = 0 .. cfg.ne.steps: cfg with ne.parameter at start + (target - start) k / steps
// (exactly the target at k = steps), re-resolved, and ne.steps = 0 (a plain config of that physics). Throws
// ConfigError naming ne.parameter if the point is not valid physics.
Config ne_stage(const Config& cfg, std::int64_t k);
// The lines that fix a non-equilibrium protocol besides its start: the target physics (as ne.target.KEY), ne.steps,
// ne.parameter, ne.start and the updates' keys (hmc.*). Empty without a protocol.
std::string ne_protocol_identity(const Config& cfg);
// Step k (1 .. ne.steps) before whose update flow block j (0 .. ne.blocks - 1) acts: (j + 1) steps / blocks.
std::int64_t ne_block_step(const Config& cfg, std::int64_t j);
// "key = value" lines of the physics alone: theory, extents and the couplings (phi4 in the no-1/2 convention, so
// that equivalent conventions agree). [reference] values belong to exactly this.
std::string physics_identity(const Config& cfg);
// The first key whose line differs between two identity texts, as "key: stored X, requested Y"; "" if equal.
std::string first_difference(const std::string& stored, const std::string& requested);
}  // namespace latflow
