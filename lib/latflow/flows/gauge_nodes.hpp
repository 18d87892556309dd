// SPDX-License-Identifier: MIT
// Internal to lib/latflow/flows (gauge.cpp, gauge_nodes.cpp): the gauge layers' torch-free kernels
// (kernels/gauge_kernels.hpp) called from LibTorch. gauge_nodes.cpp also defines the layers' in-place inference
// (GaugeCoupling::apply_in_place, SpectralCoupling::apply_in_place). In training a 2D U(1) coupling layer
// (GaugeCoupling) on the CPU with the fused nets is three autograd nodes instead of ~150 LibTorch ops:
// the context (cos, sin of the frozen plaquettes and loops; kernels/gauge_kernels.hpp u1_context and its
// backward), the net at the active sites only (ConvNetImpl::forward_at: the last conv and its backward nowhere
// else), and the update with its log-det (u1_update, u1_update_backward). Same function as gauge.cpp's LibTorch
// formulas, which tests/test_u1.cpp compares it with (values and every gradient).
#pragma once
#include <torch/torch.h>

#include <utility>

#include "latflow/flows/flow.hpp"

namespace latflow {

struct U1LayerGeometry {
  torch::Tensor active;                // int32: flat indices x0 L1 + x1 of the active sites
  torch::Tensor frozen, rect0, rect1;  // uint8 [L0, L1]; rect0, rect1 undefined without the loop features
  int mu;
  bool spline;
  int components;
  pconv::Isa isa = pconv::Isa::best;  // the instruction set the kernels run (u1_coupling_node sets the net's)
};

// The flat indices (int32, CPU) of the sites where mask > 0.5, and the mask as uint8; normal tensors even when first
// made while sampling, since later training passes may hold them.
torch::Tensor site_indices(const torch::Tensor& mask);
torch::Tensor mask_bytes(const torch::Tensor& mask);

// (y, log|det|) of the layer for x [B, 2, L0, L1] (CPU, float32/float64, contiguous); log|det| float64 [B].
std::pair<torch::Tensor, torch::Tensor> u1_coupling_node(const torch::Tensor& x, ConvNet& net,
                                                         const U1LayerGeometry& geometry, bool inverse);

}  // namespace latflow
