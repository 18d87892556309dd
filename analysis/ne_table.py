#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Markdown table of a non-equilibrium scan (analysis/ne_scan.sh): one row per number of steps n.

Usage: ne_table.py OUTDIR NAME N1 N2 ...  (reads OUTDIR/NAME_nN.json and OUTDIR/NAME_nN_vs_hmc.json)
"""
import json
import sys


def main():
    out, name, steps = sys.argv[1], sys.argv[2], sys.argv[3:]
    rows = []
    observables = None
    for n in steps:
        rep = json.load(open(f"{out}/{name}_n{n}.json"))
        cmp = json.load(open(f"{out}/{name}_n{n}_vs_hmc.json"))
        if observables is None:
            observables = [o for o in cmp["observables"] if not o.startswith("corr(")][:6]
        rows.append((n, rep, cmp))
    print(f"# {name}: non-equilibrium proposals against the number of steps\n")
    # n = 0 rows (the start alone) carry no protocol; the header describes the first row that has one.
    rep0 = next((r for _, r, _ in rows if "ne" in r), rows[0][1])
    rep0.setdefault("ne", {"parameter": "none", "start": "-", "n_md": "-"})
    print(f"{rep0['theory']} on {'x'.join(map(str, rep0['extents']))}; protocol {rep0['ne']['parameter']} from "
          f"{rep0['ne']['start']}, one HMC trajectory (n_md {rep0['ne']['n_md']}) per step"
          + (f", {rep0['ne']['blocks']} flow blocks of {rep0['ne']['block_layers']} layers" if "blocks" in rep0["ne"]
             else "")
          + f"; {rep0['proposals']} proposals per row; the training is counted.\n")
    print("| n | acceptance | Kish ESS/N | W spread | training [s] | sampling [s] | F (exact) | "
          + " | ".join(f"{o}: tau_int, s/eff, HMC/NE, dev [sigma]" for o in observables) + " |")
    print("|" + "---|" * (7 + len(observables)))
    for n, rep, cmp in rows:
        fe = rep["free_energy"]
        F = f"{fe['value']:.3f}({fe['error']:.3f})"
        if "exact" in fe:
            F += f" ({fe['exact']:.3f})"
        spread = f"{rep['ne']['work_std']:.3g}" if "ne" in rep and "work_std" in rep["ne"] else "-"
        cells = [n, f"{rep['acceptance']:.3f}", f"{rep['ess_fraction']:.3f}", spread,
                 f"{rep['train_seconds']:.0f}", f"{rep['sampling_seconds']:.0f}", F]
        for o in observables:
            c = cmp["observables"][o]
            f = c["flow"]
            cells.append(f"{f['tau_int']:.3g}, {f['seconds_per_eff_with_training']:.3g}, "
                         f"{c['cost_ratio_hmc_over_flow']:.3g}, {c['deviation_sigma']:+.1f}")
        print("| " + " | ".join(map(str, cells)) + " |")
    hmc = rows[0][2]["observables"]
    print("\nHMC: " + "; ".join(f"{o} tau_int {hmc[o]['hmc']['tau_int']:.3g} [traj], "
                                f"{hmc[o]['hmc']['seconds_per_eff']:.3g} s/eff" for o in observables))


if __name__ == "__main__":
    main()
