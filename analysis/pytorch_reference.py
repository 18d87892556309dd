#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A plain PyTorch implementation of latflow's flows, for the side-by-side benchmark of issue 7.

What a PyTorch user would write for the same models: torch.nn.Conv{1,2,3}d with padding_mode='circular', autograd,
torch.optim.Adam. It reads latflow's INI files and builds the same architecture as the C++ code:

  lib/latflow/flows/{conv_net,flow}.cpp ConvNetImpl (convs of kernel k through the hidden channels, activation after every
                                conv but the last, last conv zero-initialised), AffineCoupling (optionally
                                Z2-symmetrised), SplineCoupling (rational-quadratic spline on [-B, B]), checkerboard
                                masks alternating parity per layer, N(0,1) prior (flow.prior = fourier: then
                                FourierScale, a learned circulant);
  lib/latflow/flows/gauge.cpp   U(1) GaugeCoupling (direction mu = i % 2, stripe offset (i / 2) % 4; NCP or
                                circular-spline kernel of the active plaquettes conditioned on the frozen plaquettes
                                [and 2x1 / 1x2 loops]), uniform prior on [0, 2 pi), angles reduced at the end;
  lib/latflow/theories/{phi4,u1}.cpp   actions and the observables of Theory::measure;
  lib/latflow/jobs/bench.cpp    the timing protocol of `latflow bench`.

Nets run in flow.dtype; prior log-density, log q, actions and log weights are accumulated in float64, like latflow.
Only the forward (sampling) direction is implemented: it is all that training by reverse KL and making proposals
need, which is what both benchmarks time.

  python3 analysis/pytorch_reference.py CONFIG.ini --batches 64,1024 --repeats 5 --threads 1 [--lattice 16,16] [--pad wrap]
  python3 analysis/pytorch_reference.py --check [CONFIG.ini]

Benchmark output, one line per batch size (medians over the rounds):
  pytorch batch 64 train_ms 51.20 train_steps_per_s 19.5 train_samples_per_s 1250 proposals_per_s 6093
"""
import argparse
import configparser
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

TWO_PI = 2 * math.pi


# --------------------------------------------------------------------------------------------------------------
# Configuration: latflow's INI files (a `theory = ...` line before the first section), defaults of params.hpp.
def _bool(v):
    v = v.strip()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise ValueError("not a boolean: " + v)


def load_config(path, lattice=None):
    cp = configparser.ConfigParser()
    with open(path) as f:
        cp.read_string("[top]\n" + f.read())

    def get(sec, key, default, conv=str):
        if cp.has_option(sec, key):
            return conv(cp.get(sec, key))
        return default

    ints = lambda v: [int(t) for t in v.replace(",", " ").split()]
    c = {}
    c["theory"] = get("top", "theory", "phi4").strip()
    c["extents"] = get("lattice", "extents", [8, 8], ints)
    if lattice:
        c["extents"] = lattice
    gauge = c["theory"] == "u1"
    c["coupling"] = get("flow", "coupling", "", str.strip) or ("ncp" if gauge else "affine")
    c["layers"] = get("flow", "layers", 16, int)
    c["hidden"] = get("flow", "hidden", [8, 8], ints)
    c["kernel"] = get("flow", "kernel", 3, int)
    c["activation"] = get("flow", "activation", "leaky_relu", str.strip)
    c["z2"] = get("flow", "z2", False, _bool)
    c["spline_bins"] = get("flow", "spline_bins", 8, int)
    c["ncp_components"] = get("flow", "ncp_components", 2, int)
    c["loops"] = get("flow", "loops", False, _bool)
    c["spline_bound"] = get("flow", "spline_bound", 4.0, float)
    c["dtype"] = get("flow", "dtype", "float32", str.strip)
    c["prior"] = get("flow", "prior", "normal", str.strip)
    c["beta"] = get("u1", "beta", 2.0, float)
    # phi^4 couplings converted exactly to the no-1/2 convention used internally (Phi4Params::resolve).
    conv = get("phi4", "convention", "nohalf", str.strip)
    m2, lam, kappa = get("phi4", "m2", -4.0, float), get("phi4", "lam", 8.0, float), get("phi4", "kappa", 0.0, float)
    d = len(c["extents"])
    if conv == "nohalf":
        c["m2"], c["lam"] = m2, lam
    elif conv == "half":
        c["m2"], c["lam"] = m2, 4.0 * lam
    elif conv == "hopping":
        c["m2"], c["lam"] = (1.0 - 2.0 * lam) / kappa - 2.0 * d, lam / (kappa * kappa)
    else:
        raise ValueError("phi4.convention = " + conv)
    return c


# --------------------------------------------------------------------------------------------------------------
# Theories (lib/latflow/theories). Fields are batch-first; phi4 [B, L_0..L_{d-1}], U(1) angles [B, 2, L0, L1].
class Phi4:
    """S = sum_x [(2d + m2) phi^2 + lam phi^4 - 2 sum_mu phi(x) phi(x+mu)]
         = sum_x [sum_mu (phi(x+mu) - phi(x))^2 + m2 phi^2 + lam phi^4]   (no-1/2 convention)."""

    def __init__(self, c):
        self.extents, self.m2, self.lam = c["extents"], c["m2"], c["lam"]
        self.d = len(self.extents)
        self.dims = tuple(range(1, self.d + 1))
        self.V = math.prod(self.extents)

    def action(self, phi):
        phi2 = phi * phi
        hop = sum(torch.roll(phi, -1, mu + 1) for mu in range(self.d))
        return ((2.0 * self.d + self.m2) * phi2 + self.lam * phi2 * phi2 - 2.0 * phi * hop).sum(self.dims)

    def measure(self, phi):
        """Phi4::measure: scalars (mag, |mag|, chi2, m^4, phi2, S/V, g_pmin) and the zero-momentum correlator."""
        phi = phi.double()
        V, d, L0 = self.V, self.d, self.extents[0]
        M = phi.sum(self.dims)
        m = M / V
        S = self.action(phi)
        g = torch.zeros_like(M)
        n_dirs = 0
        for mu in range(d):
            if self.extents[mu] != L0:
                continue
            other = tuple(nu + 1 for nu in range(d) if nu != mu)
            sl = phi.sum(other) if other else phi
            x = torch.arange(self.extents[mu], dtype=phi.dtype) * (TWO_PI / self.extents[mu])
            re, im = (sl * torch.cos(x)).sum(1), (sl * torch.sin(x)).sum(1)
            g = g + (re * re + im * im) / V
            n_dirs += 1
        g = g / n_dirs
        scalars = torch.stack([m, m.abs(), M * M / V, m.pow(4), (phi * phi).sum(self.dims) / V, S / V, g], 1)
        s = phi.sum(self.dims[1:]) if d > 1 else phi  # time-slice sums [B, L0]
        Vs = V / L0
        corr = torch.stack([(s * torch.roll(s, -t, 1)).sum(1) / (L0 * Vs) for t in range(L0)], 1)
        return scalars, corr


def shift(t, by, dim):
    """t(x + by e_dim) (latflow's shift)."""
    return torch.roll(t, -by, dim)


def centred(a):
    """Angles reduced to [-pi, pi)."""
    return torch.remainder(a + math.pi, TWO_PI) - math.pi


def plaquettes(theta):
    """theta_P(x) = theta_0(x) + theta_1(x + e0) - theta_0(x + e1) - theta_1(x), [B, L0, L1]."""
    t0, t1 = theta[:, 0], theta[:, 1]
    return t0 + shift(t1, 1, 1) - shift(t0, 1, 2) - t1


class U1:
    """S = -beta sum_P cos theta_P."""

    def __init__(self, c):
        self.extents, self.beta = c["extents"], c["beta"]
        half = min(self.extents) // 2
        self.loop_sizes = list(range(2, min(4, half) + 1))

    def action(self, theta):
        return -self.beta * torch.cos(plaquettes(theta)).sum((1, 2))

    def measure(self, theta):
        """U1::measure: plaq, S/V, Q, Q^2, R x R Wilson loops; Polyakov-loop correlator."""
        theta = theta.double()
        V = self.extents[0] * self.extents[1]
        P = plaquettes(theta)
        plaq = torch.cos(P).sum((1, 2)) / V
        Q = torch.round(centred(P).sum((1, 2)) / TWO_PI)
        cols = [plaq, -self.beta * plaq, Q, Q * Q]
        strip = torch.zeros_like(P)
        built = 0
        for R in self.loop_sizes:
            while built < R:
                strip = strip + shift(P, built, 1)
                built += 1
            box = torch.zeros_like(P)
            for b in range(R):
                box = box + shift(strip, b, 2)
            cols.append(torch.cos(box).sum((1, 2)) / V)
        poly = theta[:, 1].sum(2)  # [B, L0]
        corr = torch.stack([torch.cos(poly - shift(poly, t, 1)).mean(1) for t in range(self.extents[0])], 1)
        return torch.stack(cols, 1), corr


# --------------------------------------------------------------------------------------------------------------
# Nets and coupling layers (lib/latflow/flows/flow.cpp, gauge.cpp).
class ConvNet(nn.Module):
    """Periodic conv net: conv(in -> h1) act ... conv(h_n -> out); circular padding keeps the lattice shape. The
    last conv is zero-initialised, so a fresh flow is the identity (as ConvNetImpl).
    PADDING = "circular" (default) is what a PyTorch user writes; "wrap" (--pad wrap) pads explicitly by
    concatenation and runs unpadded convs, as latflow's LibTorch-ops path does (same function, often faster)."""

    PADDING = "circular"

    def __init__(self, dim, cin, hidden, cout, kernel, activation):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dim]
        ch = [cin] + list(hidden) + [cout]
        self.dim, self.pad, self.wrap = dim, kernel // 2, ConvNet.PADDING == "wrap"
        opts = dict(padding=0) if self.wrap else dict(padding=kernel // 2, padding_mode="circular")
        self.convs = nn.ModuleList(conv(ch[i], ch[i + 1], kernel, **opts) for i in range(len(ch) - 1))
        self.act = {"leaky_relu": lambda x: F.leaky_relu(x, 0.01), "tanh": torch.tanh, "silu": F.silu}[activation]
        with torch.no_grad():
            self.convs[-1].weight.zero_()
            self.convs[-1].bias.zero_()

    def wrap_pad(self, x):
        for ax in range(2, 2 + self.dim):
            L, p = x.shape[ax], self.pad
            x = torch.cat([x.narrow(ax, L - p, p), x, x.narrow(ax, 0, p)], ax)
        return x

    def forward(self, x):
        for i, conv in enumerate(self.convs):
            x = conv(self.wrap_pad(x) if self.wrap and self.pad else x)
            if i + 1 < len(self.convs):
                x = self.act(x)
        return x


def checkerboard(extents, parity):
    """Sites with (sum_mu x_mu) % 2 == parity, float mask [L_0..L_{d-1}]."""
    grids = torch.meshgrid(*[torch.arange(L) for L in extents], indexing="ij")
    return (sum(grids) % 2 == parity).double()


class AffineCoupling(nn.Module):
    """Active sites x -> x exp(s) + t, (s, t) from the net of the frozen sites (x * mask). With z2 the net runs on
    cat(xf, -xf) and s = tanh((a0 + b0) / 2) is even, t = (a1 - b1) / 2 odd in the frozen field; otherwise
    s = tanh(out0), t = out1. log|det| = sum of s over the active sites."""

    def __init__(self, frozen, c):
        super().__init__()
        d = frozen.dim()
        self.register_buffer("mask", frozen.unsqueeze(0))
        self.register_buffer("active", 1 - frozen.unsqueeze(0))
        self.z2 = c["z2"]
        self.sites = tuple(range(1, d + 1))
        self.net = ConvNet(d, 1, c["hidden"], 2, c["kernel"], c["activation"])

    def forward(self, x):
        xf = (x * self.mask).unsqueeze(1)
        if self.z2:
            a, b = self.net(torch.cat([xf, -xf], 0)).chunk(2, 0)
            s = torch.tanh(0.5 * (a[:, 0] + b[:, 0]))
            t = 0.5 * (a[:, 1] - b[:, 1])
        else:
            out = self.net(xf)
            s, t = torch.tanh(out[:, 0]), out[:, 1]
        s, t = s * self.active, t * self.active
        return x * torch.exp(s) + t, s.sum(self.sites)


MIN_BIN, MIN_DERIV = 1e-3, 1e-3
DERIV_SHIFT = math.log(math.expm1(1.0 - MIN_DERIV))  # softplus(DERIV_SHIFT) + MIN_DERIV = 1: zero net -> identity


def spline_knots(fractions, lo, hi):
    """Knots lo = k_0 < ... < k_K = hi from bin fractions [..., K] summing to 1 (k_K exactly hi)."""
    c = torch.cumsum(fractions, -1) * (hi - lo) + lo
    first = torch.full_like(c[..., :1], lo)
    return torch.cat([first, c[..., :-1], torch.full_like(first, hi)], -1)


def rational_quadratic(v, xk, yk, dk):
    """Monotone rational-quadratic spline (Durkan et al. 2019, arXiv:1906.04032, eqs. 4-5) through the knots
    (xk, yk) with slopes dk, at v inside [xk_0, xk_K]; returns (y, log dy/dv)."""
    K = xk.shape[-1] - 1
    bin_ = torch.searchsorted(xk[..., 1:K].contiguous(), v.unsqueeze(-1).contiguous(), right=True)
    g = lambda t, off: t.gather(-1, bin_ + off).squeeze(-1)
    x0, x1, y0, y1, d0, d1 = g(xk, 0), g(xk, 1), g(yk, 0), g(yk, 1), g(dk, 0), g(dk, 1)
    w, h = x1 - x0, y1 - y0
    s = h / w
    xi = ((v - x0) / w).clamp(0, 1)
    xi1 = xi * (1 - xi)
    den = s + (d1 + d0 - 2 * s) * xi1
    log_slope = 2 * torch.log(s) + torch.log(d1 * xi * xi + 2 * s * xi1 + d0 * (1 - xi) * (1 - xi)) - 2 * torch.log(den)
    return y0 + h * (s * xi * xi + d0 * xi1) / den, log_slope


class SplineCoupling(nn.Module):
    """Active sites inside (-B, B) go through a K-bin rational-quadratic spline of [-B, B] (unit slopes at the ends,
    identity outside); widths, heights and the K - 1 interior slopes come from the net of the frozen sites. With z2
    the raw parameters are (net(c) + mirror(net(-c))) / 2, each group reversed by mirror: the spline of -c is the
    point reflection of the spline of c, so the layer commutes with phi -> -phi."""

    def __init__(self, frozen, c):
        super().__init__()
        d = frozen.dim()
        self.register_buffer("mask", frozen.unsqueeze(0))
        self.register_buffer("active", 1 - frozen.unsqueeze(0))
        self.K, self.bound, self.z2 = c["spline_bins"], c["spline_bound"], c["z2"]
        self.sites = tuple(range(1, d + 1))
        self.perm = (0,) + tuple(range(2, d + 2)) + (1,)
        self.net = ConvNet(d, 1, c["hidden"], 3 * self.K - 1, c["kernel"], c["activation"])

    def forward(self, x):
        K, B = self.K, self.bound
        xf = (x * self.mask).unsqueeze(1)
        if self.z2:
            a, b = self.net(torch.cat([xf, -xf], 0)).chunk(2, 0)
            mirrored = torch.cat([b[:, :K].flip(1), b[:, K:2 * K].flip(1), b[:, 2 * K:].flip(1)], 1)
            raw = 0.5 * (a + mirrored)
        else:
            raw = self.net(xf)
        raw = raw.permute(self.perm)  # [B, L..., 3K-1]
        widths = MIN_BIN + (1 - K * MIN_BIN) * torch.softmax(raw[..., :K], -1)
        heights = MIN_BIN + (1 - K * MIN_BIN) * torch.softmax(raw[..., K:2 * K], -1)
        derivs = MIN_DERIV + F.softplus(raw[..., 2 * K:] + DERIV_SHIFT)
        xk, yk = spline_knots(widths, -B, B), spline_knots(heights, -B, B)
        ones = torch.ones_like(derivs[..., :1])
        dk = torch.cat([ones, derivs, ones], -1)
        inside = (x > -B) & (x < B) & (self.active > 0.5)
        y, log_slope = rational_quadratic(torch.clamp(x, -B, B), xk, yk, dk)
        y = torch.where(inside, y, x)
        return y, torch.where(inside, log_slope, torch.zeros_like(log_slope)).sum(self.sites)


MAX_LOG_ALPHA = 6.0  # NCP: log alpha bounded smoothly to +-6


def stripes(ext, axis, offset, residues):
    """[L0, L1] mask of the sites whose coordinate along `axis`, minus offset, is in `residues` mod 4."""
    r = torch.remainder(torch.arange(ext[axis]) - offset, 4)
    m = torch.zeros(ext[axis], dtype=torch.bool)
    for v in residues:
        m = m | (r == v)
    shape = [1, 1]
    shape[axis] = ext[axis]
    return m.view(shape).expand(ext).double().contiguous()


class GaugeCoupling(nn.Module):
    """U(1) gauge-equivariant coupling: the links of direction mu on the stripe x_nu = offset (mod 4) move so that
    their active plaquette P goes to h(P); h is an NCP mixture or a circular spline followed by a rotation, its
    parameters from a CNN of (cos, sin) of the frozen plaquettes [and frozen 2x1 / 1x2 loops]. log|det| =
    sum_active log h'(P)."""

    def __init__(self, mu, offset, ext, c):
        super().__init__()
        self.mu, self.kind, self.loops = mu, c["coupling"], c["loops"]
        self.K = c["spline_bins"] if self.kind == "spline" else c["ncp_components"]
        nu = 1 - mu
        frozen = stripes(ext, nu, offset, [1, 2])
        self.register_buffer("active", stripes(ext, nu, offset, [0]))
        self.register_buffer("frozen", frozen)
        self.register_buffer("frozen_rect0", frozen * shift(frozen, 1, 0))
        self.register_buffer("frozen_rect1", frozen * shift(frozen, 1, 1))
        cout = 3 * self.K + 1 if self.kind == "spline" else 2 * self.K + 1
        self.net = ConvNet(2, 6 if self.loops else 2, c["hidden"], cout, c["kernel"], c["activation"])

    def kernel(self, plaq, par):
        K = self.K
        if self.kind == "spline":
            widths = MIN_BIN + (1 - K * MIN_BIN) * torch.softmax(par[..., :K], -1)
            heights = MIN_BIN + (1 - K * MIN_BIN) * torch.softmax(par[..., K:2 * K], -1)
            d = MIN_DERIV + F.softplus(par[..., 2 * K:3 * K] + DERIV_SHIFT)
            dk = torch.cat([d, d[..., :1]], -1)  # equal slopes at 0 and 2 pi
            t = par[..., 3 * K]
            xk, yk = spline_knots(widths, 0, TWO_PI), spline_knots(heights, 0, TWO_PI)
            v = torch.clamp(torch.remainder(plaq, TWO_PI), 0, TWO_PI)
            out, log_slope = rational_quadratic(v, xk, yk, dk)
            return out + t, log_slope
        alpha = torch.exp(MAX_LOG_ALPHA * torch.tanh(par[..., :K] / MAX_LOG_ALPHA))
        rho = torch.softmax(par[..., K:2 * K], -1)
        t = par[..., 2 * K]
        half = (centred(plaq) / 2).unsqueeze(-1)
        c, s = torch.cos(half), torch.sin(half)
        h = (rho * 2 * torch.atan2(alpha * s, c)).sum(-1)
        slope = (rho * alpha / (c * c + alpha * alpha * s * s)).sum(-1)
        return h + t, torch.log(slope)

    def forward(self, x):
        plaq = plaquettes(x)
        ctx = [torch.cos(plaq) * self.frozen, torch.sin(plaq) * self.frozen]
        if self.loops:
            r0, r1 = plaq + shift(plaq, 1, 1), plaq + shift(plaq, 1, 2)
            ctx += [torch.cos(r0) * self.frozen_rect0, torch.sin(r0) * self.frozen_rect0,
                    torch.cos(r1) * self.frozen_rect1, torch.sin(r1) * self.frozen_rect1]
        par = self.net(torch.stack(ctx, 1)).permute(0, 2, 3, 1)  # [B, L0, L1, C]
        moved, log_slope = self.kernel(plaq, par)
        # The active link enters its plaquette with sign +1 (mu = 0) or -1 (mu = 1).
        dp = centred(moved - plaq) * self.active
        sign = 1.0 if self.mu == 0 else -1.0
        zero = torch.zeros_like(dp)
        dlink = torch.stack([sign * dp, zero] if self.mu == 0 else [zero, sign * dp], 1)
        return torch.remainder(x + dlink, TWO_PI), (log_slope * self.active).sum((1, 2))


class FourierScale(nn.Module):
    """flow.prior = fourier: x = C z, C the circulant with eigenvalue exp(a(|p^|)) at lattice momentum p,
    |p^|^2 = sum_mu 4 sin^2(p_mu / 2), a piecewise linear between 32 learned values on [0, 2 sqrt(d)]."""

    NODES = 32

    def __init__(self, extents):
        super().__init__()
        self.nodes = nn.Parameter(torch.zeros(self.NODES))
        self.extents = extents
        d = len(extents)
        phat2 = torch.zeros(extents, dtype=torch.float64)
        for mu, L in enumerate(extents):
            k = torch.arange(L, dtype=torch.float64) * (2 * math.pi / L)
            shape = [1] * d
            shape[mu] = L
            phat2 = phat2 + (4 * torch.sin(0.5 * k) ** 2).reshape(shape)
        u = (phat2.sqrt() / (2 * math.sqrt(d)) * (self.NODES - 1)).clamp(0, self.NODES - 1)
        self.i0 = u.floor().clamp(max=self.NODES - 2).long()
        self.f = u - self.i0.double()
        self.dims = tuple(range(1, d + 1))

    def forward(self, x):
        f = self.f.to(self.nodes.dtype)
        a = self.nodes[self.i0] * (1 - f) + self.nodes[self.i0 + 1] * f
        half = a[..., :self.extents[-1] // 2 + 1]
        y = torch.fft.irfftn(torch.fft.rfftn(x, dim=self.dims) * torch.exp(half), s=self.extents, dim=self.dims)
        return y.to(x.dtype), a.double().sum().expand(x.shape[0])


class Flow(nn.Module):
    """Prior pushed through the coupling layers: log q(x) = log r(z) - sum log|det J|, in float64."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.gauge = c["theory"] == "u1"
        self.extents = c["extents"]
        if self.gauge:
            layers = [GaugeCoupling(i % 2, (i // 2) % 4, self.extents, c) for i in range(c["layers"])]
        else:
            cls = SplineCoupling if c["coupling"] == "spline" else AffineCoupling
            layers = [cls(checkerboard(self.extents, i % 2), c) for i in range(c["layers"])]
            if c.get("prior", "normal") == "fourier":
                layers = [FourierScale(self.extents)] + layers
        self.layers = nn.ModuleList(layers)
        self.dtype = torch.float64 if c["dtype"] == "float64" else torch.float32
        self.to(self.dtype)

    def prior_log_prob(self, z):
        zd = z.double()
        if self.gauge:
            return torch.full((z.shape[0],), -zd[0].numel() * math.log(TWO_PI), dtype=torch.float64)
        return -0.5 * (zd * zd).flatten(1).sum(1) - 0.5 * zd[0].numel() * math.log(TWO_PI)

    def draw_prior(self, batch, gen):
        # Drawn in float64, then cast to the nets' dtype (as latflow's draw_prior).
        if self.gauge:
            z = torch.rand([batch, 2] + self.extents, generator=gen, dtype=torch.float64) * TWO_PI
        else:
            z = torch.randn([batch] + self.extents, generator=gen, dtype=torch.float64)
        return z.to(self.dtype)

    def forward(self, z):
        x = z.to(self.dtype)
        log_q = self.prior_log_prob(x)
        for layer in self.layers:
            x, ld = layer(x)
            log_q = log_q - ld.double()
        if self.gauge:
            x = torch.remainder(x, TWO_PI)
        return x, log_q

    def sample(self, batch, gen):
        return self(self.draw_prior(batch, gen))


def make_theory(c):
    return U1(c) if c["theory"] == "u1" else Phi4(c)


# --------------------------------------------------------------------------------------------------------------
# Benchmark: the protocol of `latflow bench` (lib/latflow/jobs/bench.cpp).
def bench(c, batches, repeats, threads):
    torch.set_num_threads(threads)
    theory = make_theory(c)
    model = Flow(c)
    with torch.no_grad():  # random weights, so that no op is a multiplication by zero
        for p in model.parameters():
            p.normal_(0, 0.05)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(1)

    def train_step(B):
        x, log_q = model.sample(B, gen)
        loss = (log_q + theory.action(x.double())).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def propose(B):
        with torch.inference_mode():
            x, log_q = model.sample(B, gen)
            xd = x.double()
            lw = -(theory.action(xd) + log_q)
            theory.measure(xd)
            return lw

    steps_for = lambda B: max(1, 4096 // B)
    for B in batches:  # warm-up
        train_step(B)
        propose(B)
    train_t = {B: [] for B in batches}
    prop_t = {B: [] for B in batches}
    for _ in range(repeats):
        for B in batches:
            n = steps_for(B)
            t0 = time.perf_counter()
            for _ in range(n):
                train_step(B)
            train_t[B].append((time.perf_counter() - t0) / n)
            t0 = time.perf_counter()
            for _ in range(n):
                propose(B)
            prop_t[B].append((time.perf_counter() - t0) / n)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"# pytorch {torch.__version__}: {c['theory']} {c['coupling']} flow, {c['layers']} layers, hidden "
          f"{' '.join(map(str, c['hidden']))}, {c['dtype']}, z2 {'on' if c['z2'] else 'off'}, "
          f"{c.get('prior', 'normal')} prior, loops {'on' if c['loops'] else 'off'}, lattice {'x'.join(map(str, c['extents']))}, {n_params} parameters, "
          f"{ConvNet.PADDING} padding, {threads} thread(s), median of {repeats} rounds")
    for B in batches:
        ts, ps = statistics.median(train_t[B]), statistics.median(prop_t[B])
        print(f"pytorch batch {B} train_ms {1e3 * ts:.2f} train_steps_per_s {1 / ts:.1f} "
              f"train_samples_per_s {B / ts:.0f} proposals_per_s {B / ps:.0f}")
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------------------------
# Self-check: log q of the forward pass against log r(z) - log|det dx/dz| from the full Jacobian, in float64.
def check_one(c, label, n_samples=3, std=0.1):
    torch.manual_seed(7)
    model = Flow(c)
    # Weights larger than the benchmark's, so that the flow is far from the identity (|log det| of order 1-10, fields
    # moved by O(1)). Much larger weights make the full Jacobian ill-conditioned (condition numbers ~1e20 seen at
    # std 1), and then slogdet itself, not the flow, limits the agreement.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    gen = torch.Generator().manual_seed(11)
    z = model.draw_prior(n_samples, gen)
    _, log_q = model(z)
    worst, logdets = 0.0, []
    for i in range(n_samples):
        zi = z[i:i + 1]
        f = lambda flat: model(flat.view_as(zi))[0].flatten()
        J = torch.autograd.functional.jacobian(f, zi.flatten())
        sign, logabsdet = torch.linalg.slogdet(J)
        expected = model.prior_log_prob(zi)[0] - logabsdet
        worst = max(worst, abs(float(expected - log_q[i])))
        logdets.append(f"{float(logabsdet):.3f}")
    print(f"check {label}: lattice {'x'.join(map(str, c['extents']))}, {c['layers']} layers, {z[0].numel()} dof, "
          f"log|det J| = {' '.join(logdets)}; max |log q - (log r - log|det J|)| = {worst:.3e}")
    return worst


def check(config_path):
    base = {"extents": [4, 4], "layers": 8, "hidden": [8, 8], "kernel": 3, "activation": "leaky_relu",
            "z2": False, "spline_bins": 8, "ncp_components": 2, "loops": False, "spline_bound": 4.0,
            "dtype": "float64", "beta": 2.0, "m2": -4.0, "lam": 8.0}
    variants = [
        ("phi4 affine z2", dict(theory="phi4", coupling="affine", z2=True)),
        ("phi4 affine", dict(theory="phi4", coupling="affine", activation="tanh")),
        ("phi4 spline", dict(theory="phi4", coupling="spline", activation="silu", spline_bound=1.5)),
        ("phi4 spline z2", dict(theory="phi4", coupling="spline", z2=True, spline_bins=4)),
        ("phi4 affine z2 fourier", dict(theory="phi4", coupling="affine", z2=True, prior="fourier")),
        ("u1 ncp", dict(theory="u1", coupling="ncp")),
        ("u1 ncp loops", dict(theory="u1", coupling="ncp", loops=True, ncp_components=4)),
        ("u1 spline loops", dict(theory="u1", coupling="spline", loops=True)),
    ]
    cases = [(label, {**base, **v}) for label, v in variants]
    if config_path:
        c = load_config(config_path, [4, 4])
        c["dtype"] = "float64"
        cases.append((config_path, c))
    worst = max(check_one(c, label) for label, c in cases)
    ok = worst < 1e-8
    print(f"check: max error {worst:.3e} ({'ok' if ok else 'FAILED'}, tolerance 1e-8)")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", nargs="?")
    ap.add_argument("--batches", default="64,1024")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lattice", default=None, help="extents overriding [lattice] extents, e.g. 16,16")
    ap.add_argument("--pad", choices=["circular", "wrap"], default="circular",
                    help="circular: padding_mode='circular' (default); wrap: explicit wrap padding + unpadded convs")
    ap.add_argument("--check", action="store_true", help="Jacobian self-check in float64 on 4x4 lattices")
    a = ap.parse_args()
    ConvNet.PADDING = a.pad
    if a.check:
        torch.set_num_threads(a.threads)
        sys.exit(0 if check(a.config) else 1)
    if not a.config:
        ap.error("CONFIG.ini is required")
    lattice = [int(t) for t in a.lattice.replace(",", " ").split()] if a.lattice else None
    batches = [int(t) for t in a.batches.split(",")]
    bench(load_config(a.config, lattice), batches, a.repeats, a.threads)


if __name__ == "__main__":
    main()
