// SPDX-License-Identifier: MIT
// Fuzz target: the checkpoint reader (load_checkpoint) on arbitrary file contents, into the model and Adam
// optimizer of the fuzz config (4x4 phi^4, 2 affine layers, hidden 4: the seeds in the corpus are checkpoints of
// it, made by tests/fuzz/make_seeds.sh). Loading must either succeed or throw a latflow::Error. The backups
// CKPT.1/.2 do not exist, so no fallback. Built for libFuzzer (LATFLOW_FUZZ=ON) or with the replay driver
// replay_main.cpp (the normal build).
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_support.hpp"
#include "latflow/core/error.hpp"
#include "latflow/core/params.hpp"
#include "latflow/flows/checkpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static latflow::Config cfg = [] {
    latflow::Config c;
    c.lattice.extents = {4, 4};
    c.phi4.m2 = -1;
    c.phi4.lam = 1;
    c.flow.layers = 2;
    c.flow.hidden = {4};
    c.validate();
    return c;
  }();
  const std::string path = latflow::fuzz::input_file(data, size, "ckpt");
  if (path.empty()) return 0;
  latflow::FlowModel model = latflow::make_flow(cfg);
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(1e-3));
  try {
    auto meta = latflow::load_checkpoint(path, model, &opt, latflow::model_identity(cfg));
    (void)meta;
    ++latflow::fuzz::accepted;
  } catch (const latflow::Error&) {
  }
  return 0;
}
