#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The flow-versus-HMC cost table of the 2D gauge theories with the exact plaquette priors (flow.prior = exact):
# for each point a flow ensemble (`latflow run`, no training), an HMC ensemble (`latflow hmc`) and `latflow
# compare`; then analysis/plot_cost.py writes the table (runs/cost/cost_table.md) and the plot of the cost ratio
# HMC/flow per effective sample against beta (runs/cost/cost_ratio.png).
#
# Usage: analysis/cost_table.sh [quick|full]
#   quick (default): U(1) L = 16 at beta = 2..7 (HMC 16 chains x 10^4 trajectories after 1000), SU(2) and SU(3)
#                    L = 8 at beta = 2, 4, 6, 8 and 4, 6, 8, 10 (HMC 16 x 1000 after 200); flow 10^4 proposals.
#   full: also U(1) L = 32, HMC 5 x 10^4 trajectories for U(1) and 5000 for SU(N), SU(N) also at L = 16; then
#         the phi^4 tunnelling table (analysis/tunnelling.sh full: trained flows, so about 1.5 hours more).
# Outputs in runs/cost/; an existing ensemble is reused (delete it to remeasure). Extra arguments for every
# latflow call: LATFLOW_ARGS; sizes and HMC lengths: U1_SIZES, SUN_SIZES, U1_TRAJ, SUN_TRAJ (see below). Nothing
# is trained, so the training time is 0 and the cost ratio is per effective sample of generation alone; the flow's
# tau_int is 1/2 (independent draws, acceptance 1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${LATFLOW:-build/bin/latflow}
mode=${1:-quick}
read -r -a extra <<<"${LATFLOW_ARGS:-}"
out=runs/cost
mkdir -p "$out"

# point NAME CONFIG HMC_THERM HMC_TRAJ ARGS...
point() {
  local name=$1 cfg=$2 therm=$3 traj=$4
  shift 4
  if [ ! -f "$out/$name.h5" ]; then
    "$bin" run "$cfg" --output "$out/$name.h5" --sample.proposals 10000 "$@" "${extra[@]}" >"$out/$name.log" 2>&1
  fi
  if [ ! -f "$out/${name}_hmc.h5" ]; then
    "$bin" hmc "$cfg" --output "$out/${name}_hmc.h5" --hmc.thermalization "$therm" --hmc.trajectories "$traj" \
      "$@" "${extra[@]}" >"$out/${name}_hmc.log" 2>&1
  fi
  "$bin" compare "$out/$name.h5" "$out/${name}_hmc.h5" --json "$out/${name}_vs_hmc.json" >"$out/${name}_compare.txt"
  local obs=plaq
  [[ $name == u1_* ]] && obs=Q2
  echo "$name: $(grep -m1 -E "^$obs " "$out/${name}_compare.txt" | awk '{print $1, "HMC/flow", $(NF-1)}')"
}

u1_traj=10000 sun_traj=1000 sun_sizes=(8)
u1_sizes=(16)
if [ "$mode" = full ]; then
  u1_traj=50000 sun_traj=5000 sun_sizes=(8 16) u1_sizes=(16 32)
fi
# Overrides (space-separated sizes, trajectory counts), e.g. U1_SIZES="16 32" SUN_SIZES="8 16" for the quick run's
# HMC lengths on both volumes.
read -r -a u1_sizes <<<"${U1_SIZES:-${u1_sizes[*]}}"
read -r -a sun_sizes <<<"${SUN_SIZES:-${sun_sizes[*]}}"
u1_traj=${U1_TRAJ:-$u1_traj} sun_traj=${SUN_TRAJ:-$sun_traj}
for L in "${u1_sizes[@]}"; do
  for b in 2 3 4 5 6 7; do
    point "u1_L${L}_b$b" configs/u1_exact.ini 1000 "$u1_traj" --lattice.extents "$L $L" --u1.beta "$b"
  done
done
for L in "${sun_sizes[@]}"; do
  for b in 2 4 6 8; do
    point "su2_L${L}_b$b" configs/su2_exact.ini 200 "$sun_traj" --lattice.extents "$L $L" --sun.beta "$b"
  done
  for b in 4 6 8 10; do
    point "su3_L${L}_b$b" configs/su2_exact.ini 200 "$sun_traj" --lattice.extents "$L $L" --sun.n 3 --sun.beta "$b"
  done
done
/usr/bin/python3 analysis/plot_cost.py "$out"
if [ "$mode" = full ]; then
  LATFLOW=$bin analysis/tunnelling.sh full
fi
