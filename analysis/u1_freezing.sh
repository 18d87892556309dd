#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Topological freezing of 2D U(1) at L = 16 (issue 4): for each beta, an HMC ensemble, a flow ensemble and
# `latflow compare`, then the plot of tau_int(Q2) and of the cost per effective sample versus beta.
# Usage: analysis/u1_freezing.sh [BETA ...]   (default 2 3 4 5 6, ascending; outputs in runs/)
#
# HMC: 16 chains of 2*10^4 trajectories after 2000 of thermalisation; at beta >= 5, where tau_int(Q) is in the
# hundreds, 5*10^4 after 5000 (an existing HMC ensemble is reused).
# Flow: trained on 8x8, where a step costs a quarter of a 16x16 one, with the coupling annealed: FIRST_STEPS
# (default 1000) steps at the first beta from scratch, then STEPS (default 600) at each next beta starting from the
# previous beta's weights (train.init_from); then FINE_STEPS (default 100) steps on 16x16 from the 8x8 weights of
# the same beta (the nets are local, so weights apply to any volume) and the independence Metropolis ensemble.
# Training time accumulates through train.init_from, so each beta's comparison counts all the training that led
# to its model. Extra arguments for every latflow call: LATFLOW_ARGS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${LATFLOW:-build/bin/latflow}
betas=("$@")
((${#betas[@]})) || betas=(2 3 4 5 6)
read -r -a extra <<<"${LATFLOW_ARGS:-}"
mkdir -p runs

prev=""
for b in "${betas[@]}"; do
  pre=runs/u1_L8_b$b
  if [ -z "$prev" ]; then
    from=(--train.steps "${FIRST_STEPS:-1000}")
  else
    from=(--train.steps "${STEPS:-600}" --train.init_from "$prev.h5.ckpt")
  fi
  echo "== beta $b: 8x8 training ${from[*]}"
  "$bin" train configs/u1_L16.ini --u1.beta "$b" --lattice.extents 8,8 --output "$pre.h5" --train.eval_every 0 \
    "${from[@]}" "${extra[@]}" >"$pre.log" 2>&1
  tail -n 1 "$pre.log"
  prev=$pre
done

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
  echo "== beta $b: flow on 16x16"
  "$bin" run configs/u1_L16.ini --u1.beta "$b" --output "$out.h5" --overwrite --retrain \
    --train.init_from "runs/u1_L8_b$b.h5.ckpt" --train.steps "${FINE_STEPS:-100}" \
    --train.eval_every "${FINE_STEPS:-100}" "${extra[@]}" >"$out.log" 2>&1
  grep -E "^(IMH acceptance|plaq|Q2) " "$out.log" || true
  "$bin" compare "$out.h5" "${out}_hmc.h5" --json "${out}_compare.json" >"${out}_compare.txt"
  grep -E "^(Q|Q2) " "${out}_compare.txt" || true
done
/usr/bin/python3 analysis/plot_freezing.py runs/u1_freezing.png runs/u1_L16_b*_compare.json
