#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Table and plot of the flow-versus-HMC cost per effective sample, from the `latflow compare` JSON files that
analysis/cost_table.sh writes (DIR/NAME_vs_hmc.json, NAME = u1_L16_b6, su2_L8_b4, su3_L8_b8, ...).

  /usr/bin/python3 analysis/plot_cost.py runs/cost

writes DIR/cost_table.md (one row per point: acceptance, ESS/N, tau_int and seconds per effective sample of the
slow observable for both samplers, and the ratio HMC/flow, training counted) and DIR/cost_ratio.png (the ratio
against beta, one line per theory and lattice size). The slow observable is Q^2 for U(1) and the plaquette for
SU(N) (2D SU(N) has no topological charge).
"""
import glob
import json
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NAMES = {"u1": "U(1)", "su2": "SU(2)", "su3": "SU(3)"}


def main():
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) == 2 else 2)
    d = sys.argv[1]
    rows = []
    for path in sorted(glob.glob(os.path.join(d, "*_vs_hmc.json"))):
        m = re.match(r"(u1|su2|su3)_L(\d+)_b([0-9.]+)_vs_hmc\.json$", os.path.basename(path))
        if not m:
            continue
        with open(path) as f:
            c = json.load(f)
        theory, L, beta = m.group(1), int(m.group(2)), float(m.group(3))
        obs = "Q2" if theory == "u1" else "plaq"
        o = c["observables"][obs]
        rows.append(dict(theory=theory, L=L, beta=beta, obs=obs, acc=c["flow"]["acceptance"],
                         ess=c["flow"]["ess_fraction"], tau_flow=o["flow"]["tau_int"], tau_hmc=o["hmc"]["tau_int"],
                         s_flow=o["flow"]["seconds_per_eff_with_training"], s_hmc=o["hmc"]["seconds_per_eff"],
                         ratio=o["cost_ratio_hmc_over_flow"], dev=o["deviation_sigma"]))
    if not rows:
        sys.exit(f"no NAME_vs_hmc.json files in {d}")
    rows.sort(key=lambda r: (r["theory"], r["L"], r["beta"]))
    lines = ["| theory | L | beta | observable | flow acceptance | flow ESS/N | tau_int flow | tau_int HMC [traj] | "
             "s/eff flow | s/eff HMC | HMC/flow | flow - HMC [sigma] |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['theory']} | {r['L']} | {r['beta']:g} | {r['obs']} | {r['acc']:.3f} | {r['ess']:.3f} | "
                     f"{r['tau_flow']:.2f} | {r['tau_hmc']:.3g} | {r['s_flow']:.2e} | {r['s_hmc']:.2e} | "
                     f"{r['ratio']:.3g} | {r['dev']:+.1f} |")
    with open(os.path.join(d, "cost_table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key in sorted({(r["theory"], r["L"]) for r in rows}):
        sel = [r for r in rows if (r["theory"], r["L"]) == key]
        ax.plot([r["beta"] for r in sel], [r["ratio"] for r in sel], "o-",
                label=f"{NAMES[key[0]]} L = {key[1]} ({sel[0]['obs']})")
    ax.set_yscale("log")
    ax.axhline(1, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("beta")
    ax.set_ylabel("cost per effective sample, HMC / flow")
    ax.set_title("exact plaquette priors against HMC (2D, no training)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(d, "cost_ratio.png"), dpi=120)


if __name__ == "__main__":
    main()
