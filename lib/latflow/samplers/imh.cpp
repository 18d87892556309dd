// SPDX-License-Identifier: MIT
#include "latflow/samplers/imh.hpp"

#include <algorithm>

#include "latflow/core/seed.hpp"
#include "latflow/samplers/hmc.hpp"

namespace latflow {

NeProtocol::NeProtocol(const Config& cfg) : seed(derive_seed(cfg.run.seed, "ne_hmc", 0)) {
  for (std::int64_t k = 0; k <= cfg.ne.steps; ++k) theories.push_back(make_theory(ne_stage(cfg, k)));
}

namespace {

// Moves proposals x_0 ~ q through the protocol: for k = 1 .. n the coupling steps from c_{k-1} to c_k, which
// does the work S_k(x_{k-1}) - S_{k-1}(x_{k-1}), and one HMC trajectory that leaves exp(-S_k) invariant makes
// x_k. Proposal i's HMC streams are keyed by (seed, global proposal index, k), like HMC chains by (chain,
// trajectory): independent of blocks and ranks. Returns W = sum of the work [n]; x becomes x_n.
torch::Tensor anneal(NeProtocol& protocol, const Config& cfg, torch::Tensor& x, std::int64_t first) {
  const std::int64_t n = x.size(0), steps = static_cast<std::int64_t>(protocol.theories.size()) - 1;
  auto W = torch::zeros({n}, torch::kFloat64);
  auto S_prev = protocol.theories[0]->action(x);
  for (std::int64_t k = 1; k <= steps; ++k) {
    const Theory& theory = *protocol.theories[static_cast<std::size_t>(k)];
    W += theory.action(x) - S_prev;
    HmcChains chains(theory, cfg.hmc, protocol.seed, first, n, x.options());
    chains.set_field(x);
    auto r = chains.trajectory(k);
    x = chains.field();
    protocol.hmc_accepted += r.accepted.sum().item<std::int64_t>();
    protocol.hmc_trajectories += n;
    if (k < steps) S_prev = theory.action(x);
  }
  return W;
}

}  // namespace

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
    W = anneal(*protocol, cfg, xd, b * cfg.sample.block);
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
