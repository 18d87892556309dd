// SPDX-License-Identifier: MIT
// How a model runs its nets: which kernels, which instruction set. A model holds one (ConvNetImpl::policy, set on
// a whole model with set_kernel_policy in flows/flow.hpp); there are no process-wide switches, so a test or a
// benchmark can run two models side by side with different kernels.
#pragma once

namespace latflow::pconv {

// The instruction sets the kernels are compiled for (x86-64 with GCC: x86-64-v4 = AVX-512, x86-64-v3 = AVX2 +
// FMA, baseline = SSE2; elsewhere only baseline). `best` is the best the CPU has, what a run uses.
enum class Isa { best, baseline, x86_64_v3, x86_64_v4 };

// Whether this build has kernels for `isa` and this CPU can run them (best and baseline: always).
bool isa_supported(Isa isa);
// `best` resolved to the instruction set it means on this CPU; any other value unchanged.
Isa resolve(Isa isa);
const char* isa_name(Isa isa);

struct KernelPolicy {
  // The hand-written CPU kernels where they apply (float32/float64 on the CPU); false: LibTorch ops, the
  // reference the kernels are tested against.
  bool fused = true;
  // Winograd's F(MxM, 3x3) for the hidden 3x3 convs of 2D affine couplings with even extents (else direct).
  bool winograd = true;
  Isa isa = Isa::best;
};

}  // namespace latflow::pconv
