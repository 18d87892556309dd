// SPDX-License-Identifier: MIT
// libFuzzer target: the checkpoint reader (load_checkpoint) on arbitrary file contents, into the model and Adam
// optimizer of the fuzz config (4x4, 2 affine layers, hidden 4: the seeds in the corpus are checkpoints of it).
// Loading must either succeed or throw a latflow::Error. The backups CKPT.1/.2 do not exist, so no fallback.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "latflow/core/error.hpp"
#include "latflow/core/params.hpp"
#include "latflow/flows/checkpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::string path = "/tmp/latflow_fuzz_checkpoint_" + std::to_string(::getpid()) + ".ckpt";
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
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  latflow::FlowModel model = latflow::make_flow(cfg);
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(1e-3));
  try {
    auto meta = latflow::load_checkpoint(path, model, &opt, latflow::model_identity(cfg));
    (void)meta;
  } catch (const latflow::Error&) {
  }
  return 0;
}
