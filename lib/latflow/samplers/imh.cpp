// SPDX-License-Identifier: MIT
#include "latflow/samplers/imh.hpp"

#include <algorithm>

#include "latflow/core/seed.hpp"
#include "latflow/samplers/hmc.hpp"

namespace latflow {

NeProtocol::NeProtocol(const Config& cfg) : seed(derive_seed(cfg.run.seed, "ne_hmc", 0)) {
  for (std::int64_t k = 0; k <= cfg.ne.steps; ++k) theories.push_back(make_theory(ne_stage(cfg, k)));
}

torch::Tensor anneal(FlowModelImpl& model, NeProtocol& protocol, const HmcParams& hmc, std::uint64_t seed,
                     std::int64_t first, torch::Tensor& x) {
  const std::int64_t n = x.size(0), steps = static_cast<std::int64_t>(protocol.theories.size()) - 1;
  auto W = torch::zeros({n}, torch::kFloat64);
  auto S_prev = protocol.theories[0]->action(x);
  std::size_t j = 0;  // the next flow block
  for (std::int64_t k = 1; k <= steps; ++k) {
    const Theory& theory = *protocol.theories[static_cast<std::size_t>(k)];
    if (j < model.num_blocks() && model.block_step(j) == k) {
      auto [y, log_det] = model.block(j++).transform(x);
      x = y.to(torch::kFloat64);
      W = W + (theory.action(x) - S_prev - log_det);
    } else {
      W = W + (theory.action(x) - S_prev);
    }
    torch::NoGradGuard updates_are_noise;
    HmcChains chains(theory, hmc, seed, first, n, x.options());
    // The updates may work in place (the heat bath): never on a tensor that a gradient graph holds.
    chains.set_field(x.requires_grad() ? x.detach().clone() : x);
    auto r = chains.trajectory(k);
    x = chains.field();
    protocol.hmc_accepted += r.accepted.sum().item<std::int64_t>();
    protocol.hmc_trajectories += n;
    if (k < steps) S_prev = theory.action(x);
  }
  return W;
}

ImhBlock make_block(FlowModel& model, const Theory& theory, NeProtocol* protocol, const Config& cfg, std::int64_t b) {
  ImhBlock blk;
  blk.block = b;
  blk.n = std::min(cfg.sample.block, cfg.sample.proposals - b * cfg.sample.block);
  auto [x, log_q] = model->sample(blk.n, derive_seed(cfg.run.seed, "propose", static_cast<std::uint64_t>(b)));
  auto xd = x.to(torch::kCPU, torch::kFloat64).contiguous();  // exact for float32 fields
  torch::Tensor log_w, W;
  if (protocol != nullptr) {
    // log w = -S_0(x_0) - log q(x_0) - W: the flow's weight at the start coupling, times exp(-W).
    log_w = -protocol->theories[0]->action(xd) - log_q.to(torch::kCPU, torch::kFloat64);
    W = anneal(*model, *protocol, cfg.hmc, protocol->seed, b * cfg.sample.block, xd);
    log_w = log_w - W;
    xd = xd.contiguous();
  }
  auto S = theory.action(xd);
  auto m = theory.measure(xd);
  auto copy = [](const torch::Tensor& t, std::vector<double>& v) {
    auto c = t.to(torch::kCPU).contiguous();
    v.assign(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  };
  copy(log_q, blk.log_q);
  copy(S, blk.S);
  copy(m.scalars, blk.scalars);
  copy(m.correlator, blk.correlator);
  copy(xd, blk.x);
  if (protocol != nullptr) {
    copy(log_w, blk.log_w);
    copy(W, blk.work);
  }
  return blk;
}

}  // namespace latflow
