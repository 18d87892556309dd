// SPDX-License-Identifier: MIT
// Exact finite-volume results of 2D U(1) lattice gauge theory with the Wilson action on a periodic L0 x L1 torus
// (docs/physics.md "U(1) gauge theory"). In 2D the plaquette angles are independent up to one global constraint (their
// sum is 0 mod 2 pi), so the character expansion of exp(beta cos theta) = sum_n I_n(beta) e^{i n theta} integrates the
// links out exactly: Z = sum_n I_n(beta)^V with V = L0 L1 plaquettes (normalised Haar measure). A Wilson loop of
// area A (or a pair of opposite Polyakov loops t apart, which bound A = t L1 plaquettes) shifts the
// representation inside it by one: <W_A> = sum_n I_n^{V-A} I_{n+1}^A / Z. Everything is summed in log space
// (I_n^V overflows) over |n| until the terms are below 1e-30 of the largest. Torch-free.
#pragma once
#include <cstdint>

namespace latflow {

// <cos theta_P>, the Wilson loop of A plaquettes (A = 1: the plaquette), <Q^2> and the free energy
// F = -ln Z - 2 V ln(2 pi) for the measure d theta on [0, 2 pi) per link, for V plaquettes at coupling beta.
double u1_wilson_loop(std::int64_t volume, double beta, std::int64_t area);
double u1_plaquette(std::int64_t volume, double beta);
double u1_topological_susceptibility_q2(std::int64_t volume, double beta);  // <Q^2>
double u1_free_energy(std::int64_t volume, double beta);

}  // namespace latflow
