// SPDX-License-Identifier: MIT
// Hand-written CPU kernels for the small periodic conv nets of the coupling layers (torch-free).
//
// Why: the nets are tiny (8x8 sites, 1-8 channels), so a LibTorch step spends about half its time in per-op
// overhead (dispatch, autograd nodes, allocation, padding copies) rather than in arithmetic; measured with perf
// on `latflow bench configs/tutorial.ini`: 48% in oneDNN's conv kernels, 30% libtorch_cpu, 10% malloc/free.
// These kernels run a whole net (every conv, its periodic wrap and its activation) as one autograd node, with a
// hand-written backward; flows/conv_net.cpp wraps them (ConvNetImpl, fused path). tests/test_kernels.cpp checks them
// against naive scalar loops for every instruction set the CPU has, tests/test_flows.cpp against the LibTorch net.
//
// Files (lib/latflow/kernels, the library latflow_kernels, torch-free): simd.hpp/.cpp the vector types and the
// instruction-set dispatch; direct.cpp the gather convolutions and their weight gradients; winograd.cpp
// Winograd's minimal filtering; lane_math.hpp/.cpp activations, exp of float lanes and elementwise passes;
// affine.cpp the fused affine coupling; gauge_kernels.* the 2D gauge layers' inference and u1_grad.cpp the U(1)
// layers' backward (gauge_detail.hpp what they share); policy.hpp the per-model KernelPolicy (which kernels, which
// instruction set).
//
// Layout: activations channels-last [n, V, C] (V = lattice sites in row-major order); weights in LibTorch's layout
// [C_out, C_in, taps] with taps in the row-major order of the kernel window; the periodic neighbour of site s at tap
// t is nbr[s * taps + t], so any dimension and odd kernel size is handled by the same loops. The inner loops run over
// blocks of 8 output channels held in registers (vectorised by the compiler without reassociating sums, so results
// do not depend on the vector width); the input-gradient is the same gather with the mirrored taps.
//
// A whole affine coupling layer also runs as one call (affine_coupling below; in training a forward that keeps a
// tape and a hand-written backward) that does less arithmetic than the net as written: the Z2 symmetrisation's
// first conv is shared between c and -c, the last conv is evaluated only where the layer updates and, with Z2, at
// half the width, and the hidden 3x3 convs of 2D nets use Winograd's minimal filtering.
#pragma once
#include <cstdint>
#include <vector>

#include "latflow/kernels/policy.hpp"

namespace latflow::pconv {

enum class Act { leaky_relu, tanh, silu };

// nbr[s * taps + t]: the site at offset (window index t) - kernel / 2 from s, periodic; taps = kernel^d.
std::vector<std::int32_t> neighbour_table(const std::vector<std::int64_t>& extents, int kernel);

// out[b, s, :] = act(pre), pre = bias + sum_t W[:, :, t] in[b, nbr(s, t), :] for b in [0, n); no activation when
// act is null; pre is written only when not null (what the backward needs).
template <class T>
void conv_forward(const T* in, std::int64_t n, std::int64_t V, int taps, const std::int32_t* nbr, int cin, int cout,
                  const T* w, const T* bias, const Act* act, T* pre, T* out, Isa isa = Isa::best);

// conv_forward (pre not kept) of a 2D 3x3 conv on an L0 x L1 lattice (in [n, L0 L1, cin]) by Winograd's F(MxM, 3x3),
// M = 4 for extents multiples of 4, else 2: the same values to rounding, 4x or 2.25x fewer multiply-adds. Returns
// false (and does nothing) where it does not apply: odd extents, or inputs not a multiple of 8 (the direct kernels
// are faster there: the U(1) nets' first conv, 6 inputs, proposals 7-15% slower by Winograd).
template <class T>
bool conv_forward_winograd(const T* in, std::int64_t n, std::int64_t L0, std::int64_t L1, int cin, int cout, const T* w,
                           const T* bias, const Act* act, T* out, Isa isa = Isa::best);

// conv_forward without activation at the Vr sites `sites` only: out[b, i, :] for the site sites[i], i < Vr
// (out [n, Vr, cout]); in is [n, V, cin] as above.
template <class T>
void conv_forward_at(const T* in, std::int64_t n, std::int64_t V, int taps, const std::int32_t* nbr,
                     const std::int32_t* sites, std::int64_t Vr, int cin, int cout, const T* w, const T* bias, T* out,
                     Isa isa = Isa::best);

// Backward of conv_forward for b in [0, n) from gpre = dL/dpre: gw += dL/dW (W's layout), gb += dL/dbias, and
// when gin is not null gin = dL/din (overwritten) or, when in_pre is not null (in = in_act(in_pre), the previous
// layer's output), gin = dL/din_pre. gw and gb null: no parameter gradients (only gin).
template <class T>
void conv_backward(const T* in, const T* gpre, std::int64_t n, std::int64_t V, int taps, const std::int32_t* nbr,
                   int cin, int cout, const T* w, const T* in_pre, const Act* in_act, T* gin, T* gw, T* gb,
                   Isa isa = Isa::best);

// Backward of conv_forward_at (no activation on its output) from gpre = dL/dout [n, Vr, cout]: gin = dL/din
// [n, V, cin] (overwritten; times in_act'(in_pre) when in_pre is not null, as conv_backward), gw += dL/dW and
// gb += dL/dbias when not null. Work in proportion to Vr, not V.
template <class T>
void conv_backward_at(const T* in, const T* gpre, std::int64_t n, std::int64_t V, int taps, const std::int32_t* nbr,
                      const std::int32_t* sites, std::int64_t Vr, int cin, int cout, const T* w, const T* in_pre,
                      const Act* in_act, T* gin, T* gw, T* gb, Isa isa = Isa::best);

// Sample pairs: a batch of n (even) samples [n, rows, C] stored as [n/2, rows, C, 2], channel c of samples 2p and
// 2p + 1 side by side (to_pairs, from_pairs convert). conv_forward_pairs and conv_backward_pairs are
// conv_forward and conv_backward with in, pre, out, gpre, in_pre and gin in that layout (w, bias, gw, gb as
// there): the same outputs and input gradients bit for bit, the parameter gradients to rounding (other sums).
// On AVX-512 the float kernels fill its 16 lanes with 8 output channels of two samples (pairs_pay).
template <class T>
void to_pairs(const T* in, std::int64_t n, std::int64_t rows, int C, T* out);
template <class T>
void from_pairs(const T* in, std::int64_t n, std::int64_t rows, int C, T* out);
template <class T>
void conv_forward_pairs(const T* in, std::int64_t n, std::int64_t V, int taps, const std::int32_t* nbr, int cin,
                        int cout, const T* w, const T* bias, const Act* act, T* pre, T* out, Isa isa = Isa::best);
template <class T>
void conv_backward_pairs(const T* in, const T* gpre, std::int64_t n, std::int64_t V, int taps, const std::int32_t* nbr,
                         int cin, int cout, const T* w, const T* in_pre, const Act* in_act, T* gin, T* gw, T* gb,
                         Isa isa = Isa::best);
// conv_forward_at and conv_backward_at on pairs: in, in_pre, gin [n/2, V, cin, 2], out and gpre [n/2, Vr, cout, 2].
template <class T>
void conv_forward_at_pairs(const T* in, std::int64_t n, std::int64_t V, int taps, const std::int32_t* nbr,
                           const std::int32_t* sites, std::int64_t Vr, int cin, int cout, const T* w, const T* bias,
                           T* out, Isa isa = Isa::best);
template <class T>
void conv_backward_at_pairs(const T* in, const T* gpre, std::int64_t n, std::int64_t V, int taps,
                            const std::int32_t* nbr, const std::int32_t* sites, std::int64_t Vr, int cin, int cout,
                            const T* w, const T* in_pre, const Act* in_act, T* gin, T* gw, T* gb, Isa isa = Isa::best);
inline bool pairs_pay(Isa isa, bool is_float) { return is_float && resolve(isa) == Isa::x86_64_v4; }
// g[k] *= act'(pre[k]) for k < count.
template <class T>
void scale_by_derivative(T* g, const T* pre, std::int64_t count, Act act, Isa isa = Isa::best);

// One conv of a net: weights [cout, cin, taps] (LibTorch's layout), bias [cout].
template <class T>
struct ConvWeights {
  const T* w;
  const T* bias;
  int cin, cout;
};

// One affine coupling layer: the net (convs with the activation act between them, the last with 2 outputs) of
// the frozen field c (x zeroed at the Va `active` sites) gives (a_s, a_t) at each active site; s = tanh(a_s),
// t = a_t, or with z2 the net is also applied to -c and s = tanh((a_s(c) + a_s(-c)) / 2), t = (a_t(c) - a_t(-c)) / 2.
// Forward: x_a -> x_a exp(s) + t, log|det| = sum_a s; inverse: x_a -> (x_a - t) exp(-s), log|det| = -sum_a s.
// The same function as AffineCoupling's LibTorch formulas in flow.cpp, with less work: the first conv is linear,
// so its value on -c is 2 bias - its value on c and is not recomputed; the last conv is evaluated at the active
// sites only and, with z2, as two one-output convs of (h(c) + h(-c)) / 2 and (h(c) - h(-c)) / 2 (it is linear); in
// 2D with 3x3 kernels and even extents the hidden convs (more than one input channel) use Winograd's F(4x4, 3x3)
// (extents multiples of 4) or F(2x2, 3x3), 4x or 2.25x fewer multiply-adds.
template <class T>
struct AffineLayer {
  std::vector<std::int64_t> extents;  // V = their product
  int taps;
  const std::int32_t* nbr;
  std::vector<ConvWeights<T>> net;
  Act act;
  bool z2;
  const std::int32_t* active;
  std::int64_t Va;
  KernelPolicy policy;  // winograd and isa are read (fused is the caller's choice)
};

// Inference (no autograd): the layer in place on n samples x [n, V], logdet[b] += its log|det| (float64 sums).
// A sample's result does not depend on the other samples.
template <class T>
void affine_coupling(T* x, std::int64_t n, const AffineLayer<T>& layer, bool inverse, double* logdet);

// Training: the same map in place on x, logdet[b] += its log|det|, keeping in `tape` (affine_tape_size(layer, n)
// values) what the backward needs.
template <class T>
std::int64_t affine_tape_size(const AffineLayer<T>& layer, std::int64_t n);
template <class T>
void affine_coupling_forward(T* x, std::int64_t n, const AffineLayer<T>& layer, bool inverse, double* logdet, T* tape);
// Its backward, from gy = dL/dy [n, V] and gld = dL/dlogdet [n] (null: zero), with the tape of the forward call
// on the same n samples: gx = dL/dx [n, V] (overwritten) and, when gparams is not null, gparams += dL/dparameters,
// laid out as the convs' (weight [cout, cin, taps], bias [cout]) one after the other (affine_param_count values).
template <class T>
void affine_coupling_backward(const T* gy, const double* gld, std::int64_t n, const AffineLayer<T>& layer, bool inverse,
                              const T* tape, T* gx, T* gparams);
template <class T>
std::int64_t affine_param_count(const AffineLayer<T>& layer);

}  // namespace latflow::pconv
