// SPDX-License-Identifier: MIT
// Kernels of the gauge-equivariant coupling layers (torch-free): the U(1) and the SU(2)/SU(3) spectral layers of
// flows/gauge.hpp without autograd (sampling, log q of given fields) as two passes over the lattice in
// plain C++, in float64 whatever the storage type. Why: as LibTorch ops a layer is ~150 small ops over
// [B, L0, L1] tensors, each paying dispatch and allocation; measured with perf on `latflow bench
// configs/su3_tutorial.ini`, 62% of the time was in libtorch_cpu spread over hundreds of symbols. GaugeCoupling
// and SpectralCoupling (gauge.cpp) run these when autograd is off and the net's KernelPolicy has fused on, the
// net itself being the fused ConvNet evaluated at the active sites only (ConvNet::forward_at); tests/test_u1.cpp
// and tests/test_sun.cpp check them against the LibTorch formulas (every layer, forward and inverse, float64 to
// rounding, and float32). Each sample's result is independent of the others in the batch. In training (autograd)
// the 2D U(1) layers run u1_context and u1_update forward and the backward passes below (u1_grad.cpp) as the
// nodes of flows/gauge_nodes.hpp.
//
// SU(N) fields are LibTorch's real storage of the links, [B, 2, L0, L1, N, N, 2] (re, im) contiguous, U(1) fields
// the angles [B, 2, L0, L1]; masks are [L0, L1] row major, non-zero where the site (or loop) is frozen. Plaquette,
// eigenphases, splines and the updates follow the formulas of gauge.hpp and gauge.cpp (GaugeCoupling::kernel,
// SpectralCoupling::su2_kernel, su3_kernel, su3_alcove_phases).
#pragma once
#include <cstdint>

#include "latflow/kernels/policy.hpp"

namespace latflow::gauge_kernels {

struct Shape {
  std::int64_t batch, L0, L1;
  int n;  // 2 or 3 (SU(N)); unused for U(1)
};

// The net's input, [B, C, L0, L1]: for SU(2) (C = 1) Re tr P / 2, for SU(3) (C = 2) Re and Im tr P / 3 of the
// plaquette at each frozen site, 0 elsewhere.
// isa: the instruction set the kernel is compiled for (the net's KernelPolicy; results agree to rounding).
template <class T>
void spectral_context(const T* x, const Shape& s, const std::uint8_t* frozen, T* ctx, pconv::Isa isa);

// The layer on x in place: at the Va active sites (flat indices x0 L1 + x1) the link of direction mu moves by R
// (mu = 0) or R^+ (mu = 1) with P' = R P the spline-moved plaquette (or its inverse); par [B, Va, splines (3 bins
// + 1)] is the net's output there; log_det[b] += the layer's log|det| (the inverse's with inverse = true).
template <class T>
void spectral_update(T* x, const T* par, const Shape& s, const std::int32_t* active, std::int64_t Va, int mu, int bins,
                     bool inverse, double* log_det, pconv::Isa isa);

// U(1). The net's input [B, C, L0, L1]: cos and sin of the plaquette angle at frozen sites (frozen), and with
// loops also of the 2x1 and 1x2 loops P(x) + P(x + e0), P(x) + P(x + e1) where both plaquettes are frozen
// (frozen_rect0, frozen_rect1; null without loops, C = 2), 0 elsewhere. isa as for spectral_context.
template <class T>
void u1_context(const T* x, const Shape& s, const std::uint8_t* frozen, const std::uint8_t* frozen_rect0,
                const std::uint8_t* frozen_rect1, T* ctx, pconv::Isa isa);

// The U(1) layer on the angles x in place: every angle reduced to [0, 2 pi), and at the Va active sites the link of
// direction mu moved by +-(h(P) - P) reduced to [-pi, pi) (the sign with which it enters P); h the circular spline
// (spline = true, `components` bins, par [B, Va, 3K + 1]) or the NCP mixture (par [B, Va, 2K + 1]) followed by the
// rotation; log_det[b] += sum log h'(P) (the inverse's with inverse = true). The spline runs over 8 active sites
// at a time in double vector lanes (gauge_detail.hpp SplineLanes).
template <class T>
void u1_update(T* x, const T* par, const Shape& s, const std::int32_t* active, std::int64_t Va, int mu, bool spline,
               int components, bool inverse, double* log_det, pconv::Isa isa);

// Training (U(1)): the backward passes of the two calls above, each sample independent of the others.
// gx += dL/dx through the context ctx = u1_context(x) [B, C, L0, L1] (C = 6 with loops, else 2), from
// gctx = dL/dctx; only ctx is read (its cos and sin are the derivatives' sin and cos, 0 off the masks).
template <class T>
void u1_context_backward(const T* ctx, const Shape& s, bool loops, const T* gctx, T* gx);

// The backward of u1_update applied to x (the layer's input, not modified here) with the net output par: from
// gy = dL/dy [B, 2, L0, L1] and gld = dL/dlog_det [B] (null: zero), gx = dL/dx through the update (overwritten; the
// dependence through the context is u1_context_backward's) and gpar = dL/dpar [B, Va, channels] (overwritten).
// The inverse's derivatives are those of the implicit function (its value is a root of h).
template <class T>
void u1_update_backward(const T* x, const T* par, const Shape& s, const std::int32_t* active, std::int64_t Va, int mu,
                        bool spline, int components, bool inverse, const T* gy, const double* gld, T* gx, T* gpar,
                        pconv::Isa isa);

}  // namespace latflow::gauge_kernels
