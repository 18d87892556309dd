#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Training curves of latflow ensembles: Kish ESS/N and IMH acceptance against training wall time, and the loss.

usage: /usr/bin/python3 analysis/plot_training.py OUT.png FILE.h5 [FILE.h5 ...]

Reads only the HDF5 files (h5py, numpy, matplotlib from Debian). The evaluation points (train.eval_every) are
estimates on train.eval_samples fresh proposals; the interval points are per-batch estimates, biased high for
small batches, drawn thin.
"""
import sys

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_training(files, ax_ess, ax_loss):
    for path in files:
        with h5py.File(path, "r") as f:
            t = f["training"]
            label = f"{path.split('/')[-1]} ({f['model'].attrs['coupling']}, {int(f['model'].attrs['layers'])} layers)"
            wall = t["wall_seconds"][:] / 60
            line, = ax_ess.plot(wall, t["ess"][:], lw=0.8, alpha=0.4)
            c = line.get_color()
            if len(t["eval_step"]) > 0:
                ew = t["eval_wall_seconds"][:] / 60
                ax_ess.plot(ew, t["eval_ess"][:], "o-", color=c, label=label + ": ESS/N")
                ax_ess.plot(ew, t["eval_acceptance"][:], "s--", color=c, mfc="none", label=label + ": acceptance")
            ax_loss.plot(wall, t["loss"][:], color=c, label=label)
    ax_ess.set_xlabel("training wall time [min]")
    ax_ess.set_ylabel("Kish ESS/N, IMH acceptance")
    ax_ess.set_ylim(0, 1)
    ax_ess.grid(alpha=0.3)
    ax_ess.legend(fontsize=7)
    ax_loss.set_xlabel("training wall time [min]")
    ax_loss.set_ylabel("loss = <log q + S>  (>= F)")
    ax_loss.grid(alpha=0.3)
    # Zoom on the last 80 percent of training, where the interesting changes are.
    tails = [l.get_ydata()[len(l.get_ydata()) // 5:] for l in ax_loss.lines]
    lo, hi = min(min(t) for t in tails), max(max(t) for t in tails)
    ax_loss.set_ylim(lo - 0.1 * (hi - lo + 1e-9), hi + 0.5 * (hi - lo + 1e-9))


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    out, files = argv[1], argv[2:]
    fig, (ax_ess, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    plot_training(files, ax_ess, ax_loss)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv)
