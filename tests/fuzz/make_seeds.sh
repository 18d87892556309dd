#!/bin/bash
# SPDX-License-Identifier: MIT
# Makes the seed files of the reader fuzz targets with a built latflow binary: OUT/ensemble/ gets a tiny IMH
# ensemble (`latflow run`) and a tiny HMC ensemble (`latflow hmc`), OUT/checkpoint/ the checkpoint of the run (the
# 4x4 phi^4 flow that fuzz_checkpoint.cpp loads into). A few seconds. Used by run_fuzzers.sh and by the ctest
# fixture fuzz_seeds. Usage: tests/fuzz/make_seeds.sh LATFLOW OUT
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 LATFLOW OUT" >&2; exit 2; }
latflow=$(realpath "$1")
out=$2
mkdir -p "$out"/{seedgen,ensemble,checkpoint}
cd "$out/seedgen"
rm -f tiny*
cat >t.ini <<'EOF'
[lattice]
extents = 4 4
[phi4]
m2 = -1
lam = 1
[flow]
layers = 2
hidden = 4
[train]
steps = 4
batch = 16
log_every = 2
checkpoint_every = 2
[sample]
proposals = 20
block = 20
[hmc]
chains = 1
thermalization = 2
trajectories = 5
save_every = 5
[run]
output = tiny.h5
EOF
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
"$latflow" run t.ini >/dev/null
"$latflow" hmc t.ini --output tinyhmc.h5 >/dev/null
cp tiny.h5 tinyhmc.h5 ../ensemble/
cp tiny.h5.ckpt ../checkpoint/
