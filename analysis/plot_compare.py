#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Figures for a flow-versus-HMC comparison.

usage: /usr/bin/python3 analysis/plot_compare.py FLOW.h5 HMC.h5 OUTDIR [OBSERVABLE]

Needs the JSON files that `latflow analyze FLOW.h5`, `latflow analyze HMC.h5` and `latflow compare FLOW.h5 HMC.h5`
write next to the ensembles (FLOW.json, HMC.json, FLOW_vs_hmc.json): the autocorrelation functions come from
latflow's own Gamma-method analysis, not from a second implementation here. Writes to OUTDIR:
  histories.png   Monte Carlo histories of OBSERVABLE (default chi2) and <S>/V: the IMH chain and one HMC chain
  autocorr.png    rho(t) and tau_int(W) of OBSERVABLE for both, with the automatic windows
  training.png    the flow's training curves (Kish ESS/N, acceptance, loss against wall time)
  compare.png     the comparison table
"""
import json
import os
import sys

import h5py
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot_training import plot_training  # noqa: E402


def load_json(path, how):
    if not os.path.exists(path):
        sys.exit(f"plot_compare: {path} not found; run `{how}` first")
    with open(path) as f:
        return json.load(f)


def main(argv):
    if len(argv) < 4:
        sys.exit(__doc__)
    flow_h5, hmc_h5, outdir = argv[1:4]
    obs = argv[4] if len(argv) > 4 else "chi2"
    stem = lambda p: os.path.splitext(p)[0]  # noqa: E731
    flow_a = load_json(stem(flow_h5) + ".json", f"latflow analyze {flow_h5}")
    hmc_a = load_json(stem(hmc_h5) + ".json", f"latflow analyze {hmc_h5}")
    cmp = load_json(stem(flow_h5) + "_vs_hmc.json", f"latflow compare {flow_h5} {hmc_h5}")
    os.makedirs(outdir, exist_ok=True)

    # Monte Carlo histories.
    with h5py.File(flow_h5, "r") as f, h5py.File(hmc_h5, "r") as h:
        trail = f["chain/proposal"][:]
        fig, axes = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True)
        for ax, name in zip(axes, [obs, "action_density"]):
            flow_series = f["proposals/observables/" + name][:][trail]
            hmc_series = h["chains/observables/" + name][:, 0]
            n = min(2000, len(flow_series), len(hmc_series))
            ax.plot(np.arange(n), flow_series[:n], lw=0.6, label="flow + IMH (proposal steps)")
            ax.plot(np.arange(n), hmc_series[:n], lw=0.6, alpha=0.8, label="HMC chain 0 (trajectories)")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8, loc="upper right")
        axes[1].set_xlabel("Monte Carlo time")
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, "histories.png"), dpi=120)
        plt.close(fig)

    # Autocorrelation function and tau_int(W) with the chosen windows.
    fig, (ax_rho, ax_tau) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, a in [("flow + IMH", flow_a), ("HMC", hmc_a)]:
        o = a["observables"][obs]
        rho, tau = np.array(o["rho"], dtype=float), np.array(o["tau_int_of_w"], dtype=float)
        line, = ax_rho.plot(np.arange(len(rho)), rho, ".-", ms=3, label=label)
        ax_tau.plot(np.arange(len(tau)), tau, ".-", ms=3, color=line.get_color(),
                    label=f"{label}: tau_int = {o['tau_int']:.3g} +- {o['tau_int_error']:.2g}")
        for ax in (ax_rho, ax_tau):
            ax.axvline(o["window"], color=line.get_color(), ls=":", lw=1)
    ax_rho.axhline(0, color="k", lw=0.5)
    ax_rho.set_xlabel("t (IMH steps / HMC trajectories)")
    ax_rho.set_ylabel(f"rho(t) of {obs}")
    ax_tau.set_xlabel("summation window W")
    ax_tau.set_ylabel(f"tau_int(W) of {obs}")
    for ax in (ax_rho, ax_tau):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, "autocorr.png"), dpi=120)
    plt.close(fig)

    # Training curves.
    fig, (ax_ess, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    plot_training([flow_h5], ax_ess, ax_loss)
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, "training.png"), dpi=120)
    plt.close(fig)

    # The comparison table.
    cols = ["observable", "flow (IMH)", "HMC", "dev", "tau flow", "tau HMC", "eff/s flow", "eff/s HMC",
            "s/eff flow+train", "s/eff HMC", "HMC/flow"]
    rows = []
    for name, r in cmp["observables"].items():
        fl, hm = r["flow"], r["hmc"]
        g = lambda v, f="{:.3g}": "-" if v is None else f.format(v)  # noqa: E731
        rows.append([name, f"{fl['value']:.4g} ± {fl['error']:.2g}", f"{hm['value']:.4g} ± {hm['error']:.2g}",
                     g(r["deviation_sigma"], "{:+.1f}"), g(fl["tau_int"]), g(hm["tau_int"]), g(fl["eff_per_second"]),
                     g(hm["eff_per_second"]), g(fl["seconds_per_eff_with_training"]), g(hm["seconds_per_eff"]),
                     g(r["cost_ratio_hmc_over_flow"])])
    fig, ax = plt.subplots(figsize=(15, 0.32 * len(rows) + 0.9))
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=cols, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 1.3)
    f, h = cmp["flow"], cmp["hmc"]
    ax.set_title(f"flow: {f['proposals']} proposals in {f['generation_seconds']:.1f} s + training "
                 f"{f['training_seconds']:.0f} s;  HMC: {h['chains']} x {h['trajectories']} trajectories in "
                 f"{h['generation_seconds']:.1f} s", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, "compare.png"), dpi=120)
    plt.close(fig)
    print(f"wrote histories.png autocorr.png training.png compare.png to {outdir}")


if __name__ == "__main__":
    main(sys.argv)
