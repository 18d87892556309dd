#!/bin/sh
# SPDX-License-Identifier: MIT
# Side-by-side benchmark of latflow against a plain PyTorch implementation of the same flow
# (analysis/pytorch_reference.py, run with Debian's python3-torch): training step time and proposals per second,
# one thread each, runs alternating between the programs so that a shared machine's load hits all alike; prints
# every run, then the medians over runs and the speed-ups, and the speed-ups of runs paired with their neighbours.
#
#   sh analysis/bench_vs_pytorch.sh [CONFIG.ini] [REPEATS] [BATCHES] [EXTENTS]
#
# Defaults: configs/tutorial.ini, 3 repeats, batches 64,1024, the config's extents (EXTENTS overrides them,
# e.g. 16,16 or "16 16"). Each run is one `latflow bench CONFIG --batches BATCHES --repeats 1 --threads 1` (which
# times its ConvNet implementations "fused" and "ops" on the same model) and one
# `pytorch_reference.py CONFIG --batches BATCHES --repeats 1 --threads 1` per padding in PADS: "circular"
# (padding_mode='circular', what a PyTorch user writes) and "wrap" (explicit wrap padding + unpadded convs, the
# faster formulation latflow's ops path also uses). Both programs time the same protocol (jobs/bench.cpp): warm-up,
# max(1, 4096 / B) training steps and proposal rounds per timed round.
# Environment: LATFLOW (binary, default build/bin/latflow), PYTHON (default /usr/bin/python3),
# PADS (default "circular wrap").
set -eu
cfg=${1:-configs/tutorial.ini}
repeats=${2:-3}
batches=${3:-64,1024}
extents=${4:-}
bin=${LATFLOW:-build/bin/latflow}
py=${PYTHON:-/usr/bin/python3}
pads=${PADS:-circular wrap}
here=$(dirname "$0")

if ! "$py" -c "import torch" > /dev/null 2>&1; then
  echo "bench_vs_pytorch: skipped: $py cannot import torch (install Debian's python3-torch)"
  exit 0
fi
if [ ! -x "$bin" ]; then
  echo "bench_vs_pytorch: $bin not found (build latflow first, or set LATFLOW)" >&2
  exit 1
fi

export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -n "$extents" ]; then
  lf_ext=$(echo "$extents" | tr ',' ' ')
  py_ext=$(echo "$extents" | tr ' ' ',')
  set -- --lattice.extents "$lf_ext"
  py_lat="--lattice $py_ext"
else
  set --
  py_lat=""
fi

# Appends "value" to $tmp/<impl>_<batch>_<quantity>.
record() { echo "$4" >> "$tmp/$1_$2_$3"; }

for i in $(seq "$repeats"); do
  # The reference implements the reparameterisation gradient; latflow times the same step.
  "$bin" bench "$cfg" --batches "$batches" --repeats 1 --threads 1 --train.gradient reparam "$@" > "$tmp/lf.out" 2>&1 ||
    { cat "$tmp/lf.out" >&2; exit 1; }
  [ "$i" = 1 ] && grep -m1 '^bench:' "$tmp/lf.out" | sed 's/^/latflow: /'
  # Rows of `latflow bench` (its first table, the config's model; the plain architecture's follows): batch, nets
  # (fused | ops), train step [ms], train steps/s, train samples/s, proposals/s.
  awk '/^the plain architecture/ {exit} $2 == "fused" || $2 == "ops" {print $1, $2, $3, $6}' "$tmp/lf.out" > "$tmp/lf.rows"
  while read -r b nets ms props; do
    echo "run $i: latflow-$nets batch $b: train step $ms ms, $props proposals/s"
    record "latflow-$nets" "$b" ms "$ms"
    record "latflow-$nets" "$b" props "$props"
  done < "$tmp/lf.rows"
  for pad in $pads; do
    # shellcheck disable=SC2086
    "$py" "$here/pytorch_reference.py" "$cfg" --batches "$batches" --repeats 1 --threads 1 --pad "$pad" $py_lat \
      > "$tmp/py.out" 2>&1 || { cat "$tmp/py.out" >&2; exit 1; }
    [ "$i" = 1 ] && grep '^#' "$tmp/py.out" | sed 's/^# /reference: /'
    impl=pytorch-$pad
    awk '$1 == "pytorch" && $2 == "batch" {
           for (k = 2; k < NF; k += 2) v[$k] = $(k + 1)
           print v["batch"], v["train_ms"], v["proposals_per_s"] }' "$tmp/py.out" > "$tmp/py.rows"
    while read -r b ms props; do
      echo "run $i: $impl batch $b: train step $ms ms, $props proposals/s"
      record "$impl" "$b" ms "$ms"
      record "$impl" "$b" props "$props"
    done < "$tmp/py.rows"
  done
done

median() { sort -g "$1" | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
impls="latflow-fused latflow-ops"
for pad in $pads; do impls="$impls pytorch-$pad"; done
for b in $(echo "$batches" | tr ',' ' '); do
  for impl in $impls; do
    for q in ms props; do
      [ -s "$tmp/${impl}_${b}_$q" ] || { echo "bench_vs_pytorch: no $impl figures for batch $b (output format?)" >&2; exit 1; }
    done
  done
done
echo
echo "medians over $repeats alternating runs, 1 thread each ($cfg${extents:+, extents $extents})"
printf "%8s  %-18s %16s %14s\n" batch implementation "train step [ms]" proposals/s
for b in $(echo "$batches" | tr ',' ' '); do
  for impl in $impls; do
    printf "%8s  %-18s %16.2f %14.0f\n" "$b" "$impl" "$(median "$tmp/${impl}_${b}_ms")" \
      "$(median "$tmp/${impl}_${b}_props")"
  done
done
echo
echo "ratios latflow / pytorch of the rates (train: pytorch step time / latflow step time; > 1: latflow faster)"
printf "%8s  %-14s %-18s %12s %12s\n" batch latflow "vs" "train step" proposals/s
for b in $(echo "$batches" | tr ',' ' '); do
  for lf in fused ops; do
    for pad in $pads; do
      lt=$(median "$tmp/latflow-${lf}_${b}_ms"); lp=$(median "$tmp/latflow-${lf}_${b}_props")
      pt=$(median "$tmp/pytorch-${pad}_${b}_ms"); pp=$(median "$tmp/pytorch-${pad}_${b}_props")
      printf "%8s  %-14s %-18s %11.2fx %11.2fx\n" "$b" "latflow-$lf" "pytorch-$pad" \
        "$(echo "$pt $lt" | awk '{print $1 / $2}')" "$(echo "$lp $pp" | awk '{print $1 / $2}')"
    done
  done
done
# The machine's speed can change between the programs' turns (other jobs come and go), which moves the ratios of
# the medians above; pairing each latflow run with the PyTorch runs next to it cancels most of that.
echo
echo "paired: median over the runs of (best PyTorch variant of the run) / (latflow-fused of the same run)"
printf "%8s %12s %12s\n" batch "train step" proposals/s
for b in $(echo "$batches" | tr ',' ' '); do
  py_ms="" py_props=""
  for pad in $pads; do
    py_ms="$py_ms $tmp/pytorch-${pad}_${b}_ms"
    py_props="$py_props $tmp/pytorch-${pad}_${b}_props"
  done
  # shellcheck disable=SC2086
  paste "$tmp/latflow-fused_${b}_ms" $py_ms |
    awk '{best = $2; for (k = 3; k <= NF; k++) if ($k < best) best = $k; print best / $1}' > "$tmp/paired_ms"
  # shellcheck disable=SC2086
  paste "$tmp/latflow-fused_${b}_props" $py_props |
    awk '{best = $2; for (k = 3; k <= NF; k++) if ($k > best) best = $k; print $1 / best}' > "$tmp/paired_props"
  printf "%8s %11.2fx %11.2fx   (runs: %s)\n" "$b" "$(median "$tmp/paired_ms")" "$(median "$tmp/paired_props")" \
    "$(tr '\n' ' ' < "$tmp/paired_props" | awk '{for (k = 1; k <= NF; k++) printf "%s%.2f", (k > 1 ? " " : ""), $k}')"
done
