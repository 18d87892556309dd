#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""The phi^4 tunnelling table and plot, from the files that analysis/tunnelling.sh writes in DIR:
DIR/phi4_L{L}_{flow,mixed}_vs_hmc.json (`latflow compare`) and DIR/phi4_L{L}{,_hmc,_mixed}.json (`latflow analyze`).

  /usr/bin/python3 analysis/plot_tunnelling.py runs/tunnel

writes DIR/tunnelling.md (per L: <|M|>/V; for HMC, the flow (IMH) and the mixed chain the tau_int of M, the sign
changes of M along the chains and the seconds per effective sample of M, the flow's and the mixed chain's with
the training counted; the cost ratios HMC/flow and HMC/mixed) and DIR/tunnelling.png (the ratios against L).
A `!` marks a tau_int from chains with fewer than 100 sign changes: the Gamma method then sees no tunnelling and
its tau_int (and the cost built on it) is a lower bound.
"""
import glob
import json
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    with open(path) as f:
        return json.load(f)


def main():
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) == 2 else 2)
    d = sys.argv[1]
    rows = []
    for path in glob.glob(os.path.join(d, "phi4_L*_flow_vs_hmc.json")):
        L = int(re.search(r"phi4_L(\d+)_flow_vs_hmc\.json$", path).group(1))
        base = os.path.join(d, f"phi4_L{L}")
        flow_cmp, hmc = load(path)["observables"]["mag"], load(base + "_hmc.json")
        flow = load(base + ".json")
        r = dict(L=L, abs_mag=hmc["observables"]["abs_mag"]["value"], acc=flow["acceptance"],
                 train=flow["train_seconds"], hmc_tau=flow_cmp["hmc"]["tau_int"],
                 hmc_changes=hmc["sectors"]["changes"], hmc_ok=hmc["sectors"]["reliable"],
                 hmc_s=flow_cmp["hmc"]["seconds_per_eff"], flow_tau=flow_cmp["flow"]["tau_int"],
                 flow_changes=flow["sectors"]["changes"], flow_ok=flow["sectors"]["reliable"],
                 flow_s=flow_cmp["flow"]["seconds_per_eff_with_training"], ratio=flow_cmp["cost_ratio_hmc_over_flow"])
        if os.path.exists(base + "_mixed_vs_hmc.json"):
            mixed_cmp = load(base + "_mixed_vs_hmc.json")["observables"]["mag"]
            mixed = load(base + "_mixed.json")
            r.update(mixed_acc=mixed["flow_acceptance"], mixed_tau=mixed_cmp["flow"]["tau_int"],
                     mixed_changes=mixed["sectors"]["changes"], mixed_ok=mixed["sectors"]["reliable"],
                     mixed_s=mixed_cmp["flow"]["seconds_per_eff_with_training"],
                     mixed_ratio=mixed_cmp["cost_ratio_hmc_over_flow"])
        rows.append(r)
    if not rows:
        sys.exit(f"no phi4_L*_flow_vs_hmc.json files in {d}")
    rows.sort(key=lambda r: r["L"])

    def flag(ok):
        return "" if ok else "!"

    lines = ["| L | <\\|M\\|>/V | HMC tau_int(M) [traj] | HMC sign changes | HMC s/eff | flow acceptance | "
             "flow tau_int(M) [prop] | flow sign changes | training [s] | flow s/eff (+T) | HMC/flow | "
             "mixed flow acceptance | mixed tau_int(M) [traj] | mixed sign changes | mixed s/eff (+T) | HMC/mixed |",
             "|---" * 16 + "|"]
    for r in rows:
        m = (f"{r['mixed_acc']:.3f} | {r['mixed_tau']:.3g}{flag(r['mixed_ok'])} | {r['mixed_changes']} | "
             f"{r['mixed_s']:.2e} | {r['mixed_ratio']:.3g}") if "mixed_tau" in r else "- | - | - | - | -"
        lines.append(f"| {r['L']} | {r['abs_mag']:.4f} | {r['hmc_tau']:.3g}{flag(r['hmc_ok'])} | {r['hmc_changes']} | "
                     f"{r['hmc_s']:.2e} | {r['acc']:.3f} | {r['flow_tau']:.3g}{flag(r['flow_ok'])} | "
                     f"{r['flow_changes']} | {r['train']:.0f} | {r['flow_s']:.2e} | {r['ratio']:.3g} | {m} |")
    with open(os.path.join(d, "tunnelling.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    Ls = [r["L"] for r in rows]
    ax.plot(Ls, [r["ratio"] for r in rows], "o-", label="HMC / flow (IMH)")
    mixed = [r for r in rows if "mixed_ratio" in r]
    if mixed:
        ax.plot([r["L"] for r in mixed], [r["mixed_ratio"] for r in mixed], "s-", label="HMC / mixed chain")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.axhline(1, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("L")
    ax.set_ylabel("cost per effective sample of M, HMC / other")
    ax.set_title("2D phi^4, m2 = -4, lam = 4.2 (training counted; ! = HMC frozen: lower bound)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(d, "tunnelling.png"), dpi=120)


if __name__ == "__main__":
    main()
