// SPDX-License-Identifier: MIT
// Inference kernels of the SU(2)/SU(3) spectral coupling layers (torch-free): the layer of flows/gauge.hpp without
// autograd (sampling, log q of given fields) as two passes over the lattice in plain C++, in float64 whatever the
// storage type. Why: as LibTorch ops a layer is ~150 small ops over [B, L0, L1] tensors, each paying dispatch and
// allocation; measured with perf on `latflow bench configs/su3_tutorial.ini`, 62% of the time was in libtorch_cpu
// spread over hundreds of symbols. SpectralCoupling (gauge.cpp) runs these when autograd is off and the fused nets
// are on (set_fused_conv), the net itself still being the fused ConvNet; tests/test_sun.cpp checks them against
// the LibTorch formulas (every layer, forward and inverse, float64 to 1e-12, and float32).
//
// Fields are LibTorch's real storage of the links, [B, 2, L0, L1, N, N, 2] (re, im) contiguous; masks are [L0, L1]
// row major, non-zero where the site is frozen. Plaquette, eigenphases, splines and the update follow the
// formulas of gauge.hpp (SpectralCoupling) and gauge.cpp (su2_kernel, su3_kernel, su3_alcove_phases).
#pragma once
#include <cstdint>

namespace latflow::spectral {

struct Shape {
  std::int64_t batch, L0, L1;
  int n;  // 2 or 3
};

// The net's input, [B, C, L0, L1]: for SU(2) (C = 1) Re tr P / 2, for SU(3) (C = 2) Re and Im tr P / 3 of the
// plaquette at each frozen site, 0 elsewhere.
template <class T>
void context(const T* x, const Shape& s, const std::uint8_t* frozen, T* ctx);

// The layer on x in place: at the Va active sites (flat indices x0 L1 + x1) the link of direction mu moves by R
// (mu = 0) or R^+ (mu = 1) with P' = R P the spline-moved plaquette (or its inverse); par [B, Va, splines (3 bins
// + 1)] is the net's output there; log_det[b] += the layer's log|det| (the inverse's with inverse = true).
template <class T>
void update(T* x, const T* par, const Shape& s, const std::int32_t* active, std::int64_t Va, int mu, int bins,
            bool inverse, double* log_det);

}  // namespace latflow::spectral
