#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The phi^4 tunnelling table: 2D phi^4 in the broken phase (configs/phi4_broken.ini, m2 = -4, lam = 4.2) at
# L = 8, 16, 32. For each L: the Z2-equivariant flow is trained (`latflow train`, wall-clock budget below) and
# sampled (`latflow sample`), HMC runs as the baseline, and a mixed chain (HMC with a flow step after every
# trajectory, hmc.flow_every = 1) runs on the same flow; `latflow compare` puts each against HMC and
# analysis/plot_tunnelling.py writes runs/tunnel/tunnelling.md (tau_int of M, sign changes, cost per effective
# sample of M with the training counted) and runs/tunnel/tunnelling.png (the cost ratio against L).
#
# Usage: analysis/tunnelling.sh [quick|full]
#   quick (default): L = 8, 16.   full: L = 8, 16, 32.
# Training: L = 8 the config's 4000 steps; L = 16 10 minutes; L = 32 15 minutes at batch 64.
# HMC 16 chains x 20000 trajectories after 1000 (L = 32: 10000); the mixed chain 16 x 5000; the flow 50000
# proposals. Outputs in runs/tunnel/; an existing file is reused (delete it to remeasure). Extra arguments for
# every latflow call: LATFLOW_ARGS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${LATFLOW:-build/bin/latflow}
mode=${1:-quick}
read -r -a extra <<<"${LATFLOW_ARGS:-}"
out=runs/tunnel
cfg=configs/phi4_broken.ini
mkdir -p "$out"
sizes=(8 16)
[ "$mode" = full ] && sizes=(8 16 32)

for L in "${sizes[@]}"; do
  name=$out/phi4_L$L
  lat=(--lattice.extents "$L $L")
  train=()
  traj=20000
  case $L in
    8) ;;
    16) train=(--train.max_minutes 10) ;;
    *) train=(--train.max_minutes 15 --train.batch 64) traj=10000 ;;
  esac
  ckpt=$name.h5.ckpt
  if [ ! -f "$name.h5" ]; then
    "$bin" train "$cfg" "${lat[@]}" "${train[@]}" --output "$name.h5" "${extra[@]}" >"$name.train.log" 2>&1
    "$bin" sample "$cfg" "${lat[@]}" "${train[@]}" --output "$name.h5" "${extra[@]}" >"$name.log" 2>&1
  fi
  if [ ! -f "${name}_hmc.h5" ]; then
    "$bin" hmc "$cfg" "${lat[@]}" --hmc.trajectories "$traj" --output "${name}_hmc.h5" "${extra[@]}" \
      >"${name}_hmc.log" 2>&1
  fi
  if [ ! -f "${name}_mixed.h5" ]; then
    "$bin" hmc "$cfg" "${lat[@]}" "${train[@]}" --hmc.trajectories 5000 --hmc.flow_every 1 --run.checkpoint "$ckpt" \
      --output "${name}_mixed.h5" "${extra[@]}" >"${name}_mixed.log" 2>&1
  fi
  for kind in flow mixed; do
    src=$name.h5
    [ $kind = mixed ] && src=${name}_mixed.h5
    "$bin" compare "$src" "${name}_hmc.h5" --json "${name}_${kind}_vs_hmc.json" >"${name}_${kind}_compare.txt"
  done
  for f in "$name" "${name}_hmc" "${name}_mixed"; do "$bin" analyze "$f.h5" --json "$f.json" >/dev/null; done
done
/usr/bin/python3 analysis/plot_tunnelling.py "$out"
