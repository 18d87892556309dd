#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Non-equilibrium (annealed) proposals against their number of steps: for each n in STEPS, `latflow sample` with
# ne.steps = n (the flow or prior of ne.start, trained first by `latflow train` when it has parameters), then
# `latflow compare` against an HMC ensemble of the same physics (made here unless HMC_FILE names one), and
# analysis/ne_table.py writes runs/ne/NAME.md: acceptance, Kish ESS/N, the work's spread, F, and per observable
# tau_int, seconds per effective sample (training counted) and the cost ratio HMC / NE.
#
# Usage: analysis/ne_scan.sh NAME CONFIG PARAMETER START "N1 N2 ..." [latflow overrides...]
#   e.g. analysis/ne_scan.sh u1_L16_b6 configs/u1_exact.ini u1.beta 0 "300 1000 3000" --flow.prior haar --u1.beta 6
# Environment: PROPOSALS (default 1000), HMC_FILE (an existing HMC ensemble; default: run one, 16 chains x
# HMC_TRAJ (default 10000) after 1000), LATFLOW (the binary), BLOCKS (a stochastic normalizing flow: M flow blocks,
# or `n` for one before every update, trained for each n by `latflow train --ne.steps n --ne.blocks M` from the start
# flow's weights (train.init_from) with the extra arguments SNF_TRAIN, e.g. "--train.steps 300 --train.lr 0.001";
# default 0 = the plain protocol from the start flow), START_TRAIN (extra arguments of the start flow's training
# only). Existing outputs are reused (delete to remeasure).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ $# -ge 5 ] || { sed -n 3,15p "$0"; exit 2; }
bin=${LATFLOW:-build/bin/latflow}
name=$1 cfg=$2 param=$3 start=$4 steps=$5
shift 5
extra=("$@")
out=runs/ne
mkdir -p "$out"
ne=(--ne.parameter "$param" --ne.start "$start" --sample.proposals "${PROPOSALS:-1000}")
ckpt=$out/$name.ckpt
blocks=${BLOCKS:-0}
read -r -a snf_train <<<"${SNF_TRAIN:-}"
read -r -a start_train <<<"${START_TRAIN:-}"
"$bin" train "$cfg" "${extra[@]}" "${ne[@]}" "${start_train[@]}" --ne.steps 1 --run.checkpoint "$ckpt" \
  --output "$out/$name.unused.h5" \
  >"$out/$name.train.log" 2>&1 || { cat "$out/$name.train.log"; exit 1; }
start_ckpt=$ckpt
hmc=${HMC_FILE:-$out/${name}_hmc.h5}
if [ ! -f "$hmc" ]; then
  "$bin" hmc "$cfg" "${extra[@]}" --hmc.thermalization 1000 --hmc.trajectories "${HMC_TRAJ:-10000}" --output "$hmc" \
    >"$out/${name}_hmc.log" 2>&1
fi
for n in $steps; do
  f=$out/${name}_n$n
  if [ "$blocks" != 0 ]; then
    ckpt=$f.ckpt
    ne_n=("${ne[@]}" --ne.steps "$n" --ne.blocks "$([ "$blocks" = n ] && echo "$n" || echo "$blocks")")
    [ -f "$start_ckpt" ] && init=(--train.init_from "$start_ckpt") || init=()
    ne_n+=("${snf_train[@]}")
    "$bin" train "$cfg" "${extra[@]}" "${ne_n[@]}" "${init[@]}" --run.checkpoint "$ckpt" --output "$f.unused.h5" \
      >"$f.train.log" 2>&1 || { cat "$f.train.log"; exit 1; }
  else
    ne_n=("${ne[@]}" --ne.steps "$n")
  fi
  if [ ! -f "$f.h5" ]; then
    "$bin" sample "$cfg" "${extra[@]}" "${ne_n[@]}" --run.checkpoint "$ckpt" --output "$f.h5" >"$f.log" 2>&1
  fi
  "$bin" analyze "$f.h5" --json "$f.json" >"$f.txt"
  "$bin" compare "$f.h5" "$hmc" --json "${f}_vs_hmc.json" >"${f}_compare.txt"
done
/usr/bin/python3 analysis/ne_table.py "$out" "$name" $steps >"$out/$name.md"
cat "$out/$name.md"
