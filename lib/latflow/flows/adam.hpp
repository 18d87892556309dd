// SPDX-License-Identifier: MIT
// One Adam step of torch::optim::Adam without its per-tensor dispatch (see adam.cpp).
#pragma once
#include <torch/torch.h>

namespace latflow {

// Applies opt's next step to every parameter with a gradient, bitwise as opt.step() would, in one loop per tensor,
// and returns true; returns false without changing anything where the loop does not apply (a non-CPU or
// non-contiguous parameter, weight decay, AMSGrad): then call opt.step().
bool fused_adam_step(torch::optim::Adam& opt);

}  // namespace latflow
