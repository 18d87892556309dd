#!/bin/sh
# SPDX-License-Identifier: MIT
# MPI scaling of latflow: proposals/s of `latflow sample` and training steps/s of `latflow train` at R = 1 and
# R = 2 ranks (1 thread each), measured end to end through the binary, R = 1 and R = 2 alternating so that a
# shared machine's load hits both alike; prints every run, the medians, and the medians of the rounds' own
# speed-ups (paired).
#
#   sh analysis/scaling_bench.sh [CONFIG.ini] [REPEATS] [PROPOSALS] [STEPS] [BATCH]
#
# Defaults: configs/tutorial.ini (8x8, 16 Z2 affine layers, hidden 8 8, float32), 5 repeats, 40000 proposals
# in blocks of 500, 100 training steps of the config's batch (128; 64 per rank at R = 2) unless BATCH is given.
set -eu
cfg=${1:-configs/tutorial.ini}
repeats=${2:-5}
proposals=${3:-40000}
steps=${4:-100}
batch=${5:+--train.batch $5}
bin=${LATFLOW:-build/bin/latflow}
mpi="mpiexec --oversubscribe --bind-to none"
[ "$(id -u)" = 0 ] && mpi="$mpi --allow-run-as-root"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
common="--train.eval_every 0 --train.log_every 1000 --train.checkpoint_every 100000 --threads 1"

# A trained-for-a-moment checkpoint to sample from (the work per proposal does not depend on training).
$bin train "$cfg" --output "$tmp/x.h5" --train.steps 20 $common > /dev/null

for i in $(seq "$repeats"); do
  for R in 1 2; do
    line=$($mpi -n $R $bin sample "$cfg" --output "$tmp/s$R.h5" --run.checkpoint "$tmp/x.h5.ckpt" --overwrite \
           --sample.proposals "$proposals" | grep "proposals in .*/s)")
    rate=$(echo "$line" | sed 's/.*(\([0-9]*\)\/s).*/\1/')
    echo "sample R=$R run $i: $rate proposals/s"
    echo "$rate" >> "$tmp/sample_$R"
    line=$($mpi -n $R $bin train "$cfg" --output "$tmp/t$R.h5" --retrain --train.steps "$steps" $batch $common |
           grep "steps in")
    secs=$(echo "$line" | sed 's/.*(this session \([0-9.]*\)s).*/\1/')
    rate=$(echo "$steps $secs" | awk '{printf "%.2f", $1 / $2}')
    echo "train  R=$R run $i: $rate steps/s ($secs s for $steps steps)"
    echo "$rate" >> "$tmp/train_$R"
  done
done
median() { sort -g "$1" | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
s1=$(median "$tmp/sample_1"); s2=$(median "$tmp/sample_2")
t1=$(median "$tmp/train_1"); t2=$(median "$tmp/train_2")
echo "median proposals/s: R=1 $s1, R=2 $s2, speed-up $(echo "$s2 $s1" | awk '{printf "%.2f", $1 / $2}')"
echo "median train steps/s: R=1 $t1, R=2 $t2, speed-up $(echo "$t2 $t1" | awk '{printf "%.2f", $1 / $2}')"
# The machine's load can change between rounds (and hits R = 2, which uses both cores, harder): the speed-ups of
# each round's R = 2 over its own R = 1, and their median, are the steadier figure.
for what in sample train; do
  paste "$tmp/${what}_1" "$tmp/${what}_2" | awk '{printf "%.2f\n", $2 / $1}' > "$tmp/${what}_ratio"
  echo "paired $what speed-ups: $(tr '\n' ' ' < "$tmp/${what}_ratio")median $(median "$tmp/${what}_ratio")"
done
