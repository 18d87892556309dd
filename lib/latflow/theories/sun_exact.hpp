// SPDX-License-Identifier: MIT
// Exact finite-volume results of 2D SU(N) lattice gauge theory with the Wilson action
// S = -(beta/N) sum_P Re tr U_P on a periodic torus of V plaquettes (docs/physics.md "SU(N) gauge theory").
// Torch-free.
//
// Derivation (character expansion; normalised Haar measure throughout).
//  * One plaquette: f(U) = exp((beta/N) Re tr U) = sum_r d_r c_r chi_r(U) over the irreducible representations r,
//    c_r = (1/d_r) int dU f(U) chi_r(U)^*. For U(N) and x = beta/N, int dU exp((x/2)(tr U + tr U^+)) chi_lambda(U)
//    = det[I_{lambda_i - i + j}(x)]_{i,j=1..N} (Gross-Witten, Bars); restricting to SU(N) inserts sum_n det(U)^n,
//    so d_r c_r = sum_{n in Z} det[I_{lambda_i - i + j + n}(x)], with r labelled by a partition
//    lambda_1 >= ... >= lambda_{N-1} >= lambda_N = 0 (a Young diagram), d_r from Weyl's formula. (SU(2): c_j =
//    2 I_{2j+1}(beta)/beta.) The tests check c_r against Weyl-formula quadrature for N = 2, 3.
//  * Class functions convolve as chi_r * chi_s = delta_rs chi_r / d_r, so the product of k independent plaquettes
//    is distributed as sum_r d_r c_r^k chi_r. In 2D (maximal-tree gauge) the V plaquettes of the torus are
//    independent except that their ordered product equals the commutator [a, b] of the two winding holonomies, and
//    int da db delta(X, [a, b]) = sum_r chi_r(X) / d_r. Hence Z = sum_r c_r^V (the torus has Euler
//    characteristic 0, so no powers of d_r survive).
//  * A contractible Wilson loop W around A plaquettes: the inside carries r' and the outside r, with
//    <tr W> = sum_{r, r'} N_{f r}^{r'} (d_{r'} / d_r) c_r^{V-A} c_{r'}^A / Z, where N_{f r}^{r'} (0 or 1) counts
//    r' in fundamental (x) r: r' is the diagram of r with one box added (a full column of N boxes removed).
//    Infinite volume (r = trivial dominates): <tr W>/N = (c_f / c_0)^A.
//  * Two Polyakov loops (winding along x1) t apart bound a cylinder of A = t L1 plaquettes; gluing the cylinder
//    kernels sum_r c_r^A chi_r(g) chi_r(h^+) gives <tr P(0) tr P(t)^*> = sum_{r, r'} N_{f r}^{r'} c_r^{V-A}
//    c_{r'}^A / Z (the multiplicities are 0 or 1, so their square is themselves; no dimension factors).
// Coefficients are kept as ratios c_r / c_0 (|c_r| <= c_0), representations truncated at lambda_1 <= M with M large
// enough that (c_r/c_0) at the cut is below 1e-30 or rounding.
#pragma once
#include <cstdint>
#include <vector>

namespace latflow {

// d_r c_r for the partition lambda (N entries, last 0) at coupling beta (the plaquette weight
// exp((beta/N) Re tr U)).
double sun_character_coefficient_times_dim(int n, const std::vector<int>& lambda, double beta);
int sun_dimension(int n, const std::vector<int>& lambda);

// <Re tr W>/N for a contractible loop of `area` plaquettes on a torus of `volume` plaquettes (area 1: plaquette).
double sun_wilson_loop(int n, std::int64_t volume, double beta, std::int64_t area);
double sun_plaquette(int n, std::int64_t volume, double beta);
// Infinite-volume (planar) value (c_f / c_0)^area.
double sun_wilson_loop_infinite(int n, double beta, std::int64_t area);
// <Re tr P(x0) tr P(x0 + t)^*> for Polyakov loops bounding `area` = t L1 plaquettes.
double sun_polyakov_correlator(int n, std::int64_t volume, double beta, std::int64_t area);
// F = -ln Z for the normalised Haar measure on every link.
double sun_free_energy(int n, std::int64_t volume, double beta);

}  // namespace latflow
