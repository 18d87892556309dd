// SPDX-License-Identifier: MIT
// The INI parser of the CLI (apps/config_parse.cpp) on texts, and the identity a checkpoint must match before
// training continues: every key that changes the model or its training recipe is named when it differs.
#include <catch2/catch.hpp>

#include <filesystem>
#include <variant>

#include "config_parse.hpp"
#include "latflow/core/config_keys.hpp"
#include "latflow/core/error.hpp"
#include "latflow/core/params.hpp"

using namespace latflow;

namespace {
Config parse(const std::string& text, const std::vector<std::string>& overrides = {}) {
  return cli::parse_config(text, "test.ini", overrides, "test");
}
}  // namespace

TEST_CASE("config text: values, overrides, errors", "[config]") {
  auto c = parse("[lattice]\nextents = 6 6\n[phi4]\nm2 = -2\nlam = 3\n[train]\nsteps = 7\n");
  CHECK(c.lattice.extents == std::vector<std::int64_t>{6, 6});
  CHECK(c.train.steps == 7);
  CHECK(parse("[train]\nsteps = 7\n", {"--train.steps", "9"}).train.steps == 9);
  CHECK(c.effective_text.find("steps = 7") != std::string::npos);
  CHECK_THROWS_AS(parse("[train]\nsteps = x\n"), ConfigError);
  CHECK_THROWS_AS(parse("[train]\nstepz = 1\n"), ConfigError);
  CHECK_THROWS_AS(parse("[lat"), ConfigError);
  CHECK_THROWS_AS(parse(""), ConfigError);  // empty: nothing was asked for
  CHECK_THROWS_AS(parse("# only a comment\n\n"), ConfigError);
  CHECK_THROWS_AS(parse(std::string("[run]\nseed = 1\0\xff", 16)), ConfigError);
  CHECK_THROWS_WITH(parse("[flow]\nprior = gaussian\n"), Catch::Contains("flow.prior = gaussian"));
  CHECK_THROWS_WITH(parse("theory = u1\n[lattice]\nextents = 8 8\n[flow]\nprior = fourier\n"),
                    Catch::Contains("flow.prior = fourier: U(1) flows take haar, plaquette or exact"));
  // Tiny but finite numbers parse and print back (a subnormal once made the effective config throw).
  CHECK(parse("[phi4]\nm2 = 1e-310\nlam = 1\n").phi4.m2 == 1e-310);
}

TEST_CASE("resume identity: every model and recipe key is named when it differs", "[config]") {
  const std::string base = "[lattice]\nextents = 8 8\n[phi4]\nm2 = -4\nlam = 8\n[train]\nsteps = 100\n";
  const auto ref = parse(base);
  const std::vector<std::pair<std::string, std::vector<std::string>>> model_keys{
      {"lattice.extents", {"--lattice.extents", "8 6"}},
      {"phi4.m2_nohalf", {"--phi4.m2", "-3"}},
      {"phi4.lam_nohalf", {"--phi4.lam", "7"}},
      {"flow.coupling", {"--flow.coupling", "spline"}},
      {"flow.layers", {"--flow.layers", "4"}},
      {"flow.hidden", {"--flow.hidden", "4 4"}},
      {"flow.kernel", {"--flow.kernel", "5"}},
      {"flow.activation", {"--flow.activation", "tanh"}},
      {"flow.z2", {"--flow.z2", "true"}},
      {"flow.spline_bins", {"--flow.spline_bins", "4"}},
      {"flow.spline_bound", {"--flow.spline_bound", "3"}},
      {"flow.dtype", {"--flow.dtype", "float64"}},
      {"flow.prior", {"--flow.prior", "fourier"}},
      {"phi4.lam_nohalf", {"--phi4.convention", "hopping", "--phi4.kappa", "0.2"}}};
  for (const auto& [key, ov] : model_keys) {
    CAPTURE(key);
    const auto diff = first_difference(model_identity(ref), model_identity(parse(base, ov)));
    CHECK(diff.rfind(key + ": stored ", 0) == 0);
  }
  const std::vector<std::pair<std::string, std::vector<std::string>>> recipe_keys{
      {"run.seed", {"--run.seed", "2"}},
      {"train.batch", {"--train.batch", "32"}},
      {"train.lr", {"--train.lr", "0.01"}},
      {"train.lr_schedule", {"--train.lr_schedule", "constant"}},
      {"train.lr_min", {"--train.lr_min", "0"}},
      {"train.warmup", {"--train.warmup", "5"}},
      {"train.clip", {"--train.clip", "1"}},
      {"train.steps", {"--train.steps", "200"}},
      {"train.gradient", {"--train.gradient", "path"}}};
  for (const auto& [key, ov] : recipe_keys) {
    CAPTURE(key);
    const auto diff = first_difference(training_identity(ref), training_identity(parse(base, ov)));
    CHECK(diff.rfind(key + ": stored ", 0) == 0);
  }
  const std::string u1 = "theory = u1\n[lattice]\nextents = 8 8\n[u1]\nbeta = 2\n";
  CHECK(first_difference(model_identity(parse(u1)), model_identity(parse(u1, {"--u1.beta", "3"})))
            .rfind("u1.beta: stored ", 0) == 0);
  CHECK(!first_difference(model_identity(ref), model_identity(parse(u1))).empty());
  // A defect protocol's start (defect 0) is other physics than the periodic theory, and says so; defect 1 adds no
  // line, so identities written before the protocol existed still match.
  auto u1_defect = parse(u1, {"--ne.steps", "4", "--ne.parameter", "u1.defect", "--ne.start", "0"});
  CHECK(physics_identity(parse(u1)).find("defect") == std::string::npos);
  CHECK(physics_identity(u1_defect).find("defect") == std::string::npos);  // the target: defect 1
  CHECK(first_difference(model_identity(parse(u1)), model_identity(u1_defect)).rfind("u1.defect: stored ", 0) == 0);
  // Keys that may change between sessions: sampling, output, threads, logging, budgets.
  for (const auto& ov : std::vector<std::vector<std::string>>{{"--sample.proposals", "5"},
                                                              {"--run.threads", "2"},
                                                              {"--train.log_every", "7"},
                                                              {"--train.checkpoint_every", "3"},
                                                              {"--train.max_minutes", "1"},
                                                              {"--run.output", "x.h5"}}) {
    const auto c = parse(base, ov);
    CHECK(first_difference(model_identity(ref), model_identity(c)).empty());
    CHECK(first_difference(training_identity(ref), training_identity(c)).empty());
  }
  // A constant schedule does not depend on the step count.
  CHECK(first_difference(training_identity(parse(base, {"--train.lr_schedule", "constant"})),
                         training_identity(parse(base, {"--train.lr_schedule", "constant", "--train.steps", "9"})))
            .empty());
}

TEST_CASE("[reference] values are kept only for the file's own physics", "[config]") {
  // A config with golden values at lam = 6.008 (no-1/2) on 8x8.
  const std::string file = "[lattice]\nextents = 8 8\n[phi4]\nm2 = -4\nlam = 6.008\n[reference]\nchi2 = 1.5 0.01\n";
  const auto plain = parse(file);
  CHECK(plain.reference.size() == 1);
  CHECK(plain.reference_note.empty());
  // Overrides that change the physics drop them and say which key.
  for (const std::vector<std::string>& o : std::vector<std::vector<std::string>>{
           {"--phi4.lam", "7.0"}, {"--lattice.extents", "16 16"}, {"--phi4.convention", "half"}}) {
    CAPTURE(o[0]);
    const auto c = parse(file, o);
    CHECK(c.reference.empty());
    CHECK_THAT(c.reference_note, Catch::Contains("not used") && Catch::Contains("command line changes its physics"));
    CHECK(c.effective_text.find("[reference]") == std::string::npos);
  }
  CHECK_THAT(parse(file, {"--phi4.lam", "7.0"}).reference_note, Catch::Contains("phi4.lam_nohalf: file 6.008"));
  CHECK_THAT(parse(file, {"--lattice.extents", "16 16"}).reference_note, Catch::Contains("lattice.extents"));
  // Overrides that leave the physics equal keep them: the same value, other keys, and another convention that
  // converts to the same no-1/2 couplings (half: phi_half = sqrt(2) phi, so lam_half = lam / 4, m2 equal).
  for (const std::vector<std::string>& o : std::vector<std::vector<std::string>>{
           {"--phi4.lam", "6.008"}, {"--train.steps", "5"}, {"--phi4.convention", "half", "--phi4.lam", "1.502"}}) {
    CAPTURE(o[0], o.size());
    const auto c = parse(file, o);
    CHECK(c.reference.size() == 1);
    CHECK(c.reference_note.empty());
  }
  // Gauge theories: beta and extents are the physics.
  const std::string u1 = "theory = u1\n[lattice]\nextents = 8 8\n[u1]\nbeta = 2\n[reference]\nplaq = 0.7 0.01\n";
  CHECK(parse(u1, {"--u1.beta", "3"}).reference.empty());
  CHECK(parse(u1, {"--u1.beta", "2.0"}).reference.size() == 1);
}

TEST_CASE("key registry: every key round-trips through the effective config and names itself on bad input",
          "[config]") {
  const std::vector<std::vector<std::string>> cases{
      {},
      {"--phi4.convention", "hopping", "--phi4.kappa", "0.21", "--phi4.lam", "0.02", "--flow.prior", "fourier"},
      {"--theory", "u1", "--u1.beta", "3.25", "--flow.loops", "true", "--flow.prior", "plaquette"},
      {"--theory", "sun", "--sun.n", "3", "--sun.beta", "0.1", "--hmc.algorithm", "heatbath", "--train.gradient",
       "path", "--ne.steps", "4", "--ne.parameter", "sun.beta", "--ne.start", "0"}};
  for (const auto& ov : cases) {
    CAPTURE(ov);
    const auto c = parse("[run]\nseed = 7\n", ov);
    // The effective config read back is the same config: every key's text parses to the value it came from.
    const auto again = parse(c.effective_text);
    CHECK(again.effective_text.substr(again.effective_text.find('\n')) ==
          c.effective_text.substr(c.effective_text.find('\n')));
    CHECK(model_identity(again) == model_identity(c));
    CHECK(training_identity(again) == training_identity(c));
    for (const auto& k : config_keys()) {
      if (k.derived) continue;
      CAPTURE(k.name);
      const auto line = k.name.substr(k.name.find('.') + 1) + " = " + k.text(c) + "\n";
      CHECK(c.effective_text.find(line) != std::string::npos);
      CHECK(keys_text().find(k.name + " ") != std::string::npos);
    }
  }
  // A value of the wrong kind is refused naming the key and the value; a text key keeps it verbatim.
  std::vector<std::string> verbatim;
  for (const auto& k : config_keys()) {
    if (k.derived) continue;
    CAPTURE(k.name);
    Config c;
    try {
      k.set(c, "bogus");
      CHECK(k.text(c) == "bogus");
      verbatim.push_back(k.name);
    } catch (const ConfigError& e) {
      CHECK(std::string(e.what()).rfind(k.name + " = bogus: ", 0) == 0);
    }
  }
  CHECK(verbatim ==
        std::vector<std::string>{"train.init_from", "hmc.start", "run.output", "run.checkpoint", "run.device"});
  // Derived keys cannot be set from a file.
  CHECK_THROWS_WITH(parse("[phi4]\nm2_nohalf = 1\n"), Catch::Contains("unknown key phi4.m2_nohalf"));
  CHECK_THROWS_AS(config_key("flow.no_such_key"), std::logic_error);
}

TEST_CASE("identity texts keep the line format and order of files written before the registry", "[config]") {
  // These texts are stored in checkpoints and ensembles; resuming compares them key by key, and the bitwise
  // comparisons of files across versions compare them as text.
  auto u1 = parse("theory = u1\n[lattice]\nextents = 8 8\n[u1]\nbeta = 0.1\n[flow]\nprior = plaquette\n");
  CHECK(model_identity(u1) ==
        "theory = u1\nlattice.extents = 8 8\nu1.beta = 0.10000000000000001\nflow.ncp_components = 2\n"
        "flow.loops = false\nflow.coupling = ncp\nflow.layers = 16\nflow.hidden = 8 8\nflow.kernel = 3\n"
        "flow.activation = leaky_relu\nflow.z2 = false\nflow.spline_bins = 8\nflow.spline_bound = 4\n"
        "flow.dtype = float32\nflow.prior = plaquette\n");
  auto phi4 = parse("[phi4]\nconvention = half\nm2 = 0.3\nlam = 0.1\n[train]\ngradient = path\nlr = 0.002\n");
  CHECK(physics_identity(phi4) ==
        "theory = phi4\nlattice.extents = 8 8\nphi4.m2_nohalf = 0.29999999999999999\n"
        "phi4.lam_nohalf = 0.40000000000000002\n");
  CHECK(training_identity(phi4) ==
        "run.seed = 1\ntrain.batch = 64\ntrain.lr = 0.002\ntrain.lr_schedule = cosine\ntrain.lr_min = "
        "1.0000000000000001e-05\n"
        "train.warmup = 0\ntrain.clip = 0\ntrain.gradient = path\ntrain.steps = 2500\n");
  auto sun = parse("theory = sun\n[sun]\nn = 3\nbeta = 5\n");
  CHECK(physics_identity(sun) == "theory = sun\nlattice.extents = 8 8\nsun.n = 3\nsun.beta = 5\n");
  // The theory's /theory attributes, from the registry.
  std::vector<std::string> names;
  for (const auto& [name, value] : theory_attributes(phi4)) names.push_back(name);
  CHECK(names == std::vector<std::string>{"input_convention", "input_m2", "input_lam", "input_kappa", "m2", "lam",
                                          "field_scale"});
  CHECK(std::get<double>(theory_attributes(phi4)[5].second) == 4 * 0.1);
  names.clear();
  for (const auto& [name, value] : theory_attributes(sun)) names.push_back(name);
  CHECK(names == std::vector<std::string>{"n", "beta"});
  CHECK(std::get<std::int64_t>(theory_attributes(sun)[0].second) == 3);
}

TEST_CASE("every config file in configs/ parses and validates", "[config]") {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(std::string(LATFLOW_SOURCE_DIR) + "/configs")) {
    if (e.path().extension() != ".ini") continue;
    CAPTURE(e.path().string());
    CHECK_NOTHROW(cli::load_config(e.path().string(), {}, "test"));
    ++n;
  }
  CHECK(n >= 20);
}
