#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Topological freezing of 2D U(1) at L = 16 (issue 4): for each beta, an HMC ensemble, a flow ensemble (train +
# independence Metropolis) and `latflow compare`, then the plot of tau_int(Q) and of the cost per effective sample
# of Q versus beta. Usage: analysis/u1_freezing.sh [BETA ...]   (default 2 3 4 5 6; outputs in runs/)
# HMC runs 16 chains of 2*10^4 trajectories after 2000 of thermalisation; at beta >= 5, where tau_int(Q) is in
# the hundreds to thousands, 5*10^4 after 5000 (an existing HMC ensemble is reused).
# The flow is trained in two stages: PRE_STEPS (default 1000) steps on 8x8, where a step costs a quarter, then
# FINE_STEPS (default 100) steps on 16x16 starting from those weights (train.init_from; the nets are local, so the
# same weights apply to any volume); the training time of both stages is counted in the comparison.
# Extra arguments for every latflow call: LATFLOW_ARGS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${LATFLOW:-build/bin/latflow}
betas=("$@")
((${#betas[@]})) || betas=(6 5 4 3 2)
read -r -a extra <<<"${LATFLOW_ARGS:-}"
mkdir -p runs
for b in "${betas[@]}"; do
  out=runs/u1_L16_b$b
  hmc_len=(--hmc.thermalization 2000 --hmc.trajectories 20000)
  if awk "BEGIN{exit !($b >= 5)}"; then hmc_len=(--hmc.thermalization 5000 --hmc.trajectories 50000); fi
  if [ ! -e "${out}_hmc.h5" ]; then
    echo "== beta $b: HMC"
    "$bin" hmc configs/u1_L16.ini --u1.beta "$b" --output "${out}_hmc.h5" "${hmc_len[@]}" "${extra[@]}" \
      >"${out}_hmc.log" 2>&1
  fi
  grep -E "^(plaq|Q2) " "${out}_hmc.log" || true
  echo "== beta $b: flow (8x8 pre-training, 16x16 fine-tuning and sampling)"
  pre=runs/u1_L8_b$b
  "$bin" train configs/u1_L16.ini --u1.beta "$b" --lattice.extents 8,8 --output "$pre.h5" \
    --train.steps "${PRE_STEPS:-1000}" --train.eval_every 0 "${extra[@]}" >"$pre.log" 2>&1
  "$bin" run configs/u1_L16.ini --u1.beta "$b" --output "$out.h5" --overwrite --retrain --train.init_from "$pre.h5.ckpt" \
    --train.steps "${FINE_STEPS:-100}" --train.eval_every "${FINE_STEPS:-100}" "${extra[@]}" >"$out.log" 2>&1
  grep -E "^(IMH acceptance|plaq|Q2) " "$out.log" || true
  "$bin" compare "$out.h5" "${out}_hmc.h5" --json "${out}_compare.json" >"${out}_compare.txt"
  grep -E "^(Q|Q2) " "${out}_compare.txt" || true
done
/usr/bin/python3 analysis/plot_freezing.py runs/u1_freezing.png runs/u1_L16_b*_compare.json
