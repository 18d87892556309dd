#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Topological freezing: tau_int(Q) and the cost per effective sample of Q against beta, flow versus HMC.

usage: /usr/bin/python3 analysis/plot_freezing.py OUT.png COMPARE.json [COMPARE.json ...]

Reads the JSON files of `latflow compare FLOW.h5 HMC.h5 --json X.json` (one per beta, U(1) ensembles) and plots
  left:  tau_int of the observable (default Q2; env OBS=Q for the charge itself) with errors, in IMH steps for the
         flow and in trajectories for HMC, on a log scale;
  right: seconds per effective sample, the flow's with its training time counted, and HMC's.
Also prints the table it plots.
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    obs = os.environ.get("OBS", "Q2")
    rows = []
    for path in argv[2:]:
        with open(path) as f:
            c = json.load(f)
        if c.get("theory") != "u1" or obs not in c["observables"]:
            sys.exit(f"plot_freezing: {path} is not a U(1) comparison with observable {obs}")
        o = c["observables"][obs]
        rows.append((c["beta"], o["flow"], o["hmc"], c["flow"]["acceptance"]))
    rows.sort(key=lambda r: r[0])
    print(f"{'beta':>5} {'acc':>6} {'tau flow':>16} {'tau HMC':>18} {'s/eff flow+T':>13} {'s/eff HMC':>11} {'ratio':>8}")
    for beta, fl, hm, acc in rows:
        ratio = hm["seconds_per_eff"] / fl["seconds_per_eff_with_training"]
        print(f"{beta:5.2f} {acc:6.3f} {fl['tau_int']:8.2f}({fl['tau_int_error']:5.2f}) "
              f"{hm['tau_int']:9.1f}({hm['tau_int_error']:6.1f}) {fl['seconds_per_eff_with_training']:13.4g} "
              f"{hm['seconds_per_eff']:11.4g} {ratio:8.3g}")
    betas = [r[0] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label, marker in (("flow", "flow (IMH steps)", "o"), ("hmc", "HMC (unit trajectories)", "s")):
        side = [r[1] if key == "flow" else r[2] for r in rows]
        ax[0].errorbar(betas, [s["tau_int"] for s in side], yerr=[s["tau_int_error"] for s in side], marker=marker,
                       capsize=3, label=label)
    ax[0].set_yscale("log")
    ax[0].set_xlabel(r"$\beta$")
    ax[0].set_ylabel(rf"$\tau_{{int}}$({obs})")
    ax[0].set_title("2D U(1), L = 16: integrated autocorrelation time")
    ax[0].legend()
    ax[1].plot(betas, [r[1]["seconds_per_eff_with_training"] for r in rows], "o-", label="flow, training counted")
    ax[1].plot(betas, [r[1]["seconds_per_eff"] for r in rows], "o--", label="flow, sampling only")
    ax[1].plot(betas, [r[2]["seconds_per_eff"] for r in rows], "s-", label="HMC")
    ax[1].set_yscale("log")
    ax[1].set_xlabel(r"$\beta$")
    ax[1].set_ylabel(f"seconds per effective sample of {obs}")
    ax[1].set_title("cost (the flow's per ensemble of the size generated)")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(argv[1], dpi=120)
    print(f"wrote {argv[1]}")


if __name__ == "__main__":
    main(sys.argv)
