#!/usr/bin/env bash
# Data-parallel training under MPI against one process: trains the 260k preset on the
# default corpus for a few steps alone, then with `mpirun -np 2` and the same global batch
# (4 micro-batches per step, 2 on each rank), and fails unless every step's loss agrees
# within 1e-5 relative. Prints both loss curves, the largest difference, and whether the
# final weights are identical.
#
#   scripts/test-mpi-train.sh [FERROLLAMA_MPI_BIN] [STEPS]
#
# The binary must be built with the `mpi` feature (needs Debian's libopenmpi-dev,
# openmpi-bin and libclang-dev):
#   cargo build --release -p ferrollama --features mpi && cp target/release/ferrollama target/release/ferrollama-mpi
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${1:-$repo/target/release/ferrollama-mpi}
steps=${2:-12}
[ -x "$bin" ] || { echo "no MPI build of ferrollama at $bin" >&2; exit 2; }
command -v mpirun >/dev/null || { echo "mpirun not found (apt-get install openmpi-bin)" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# One thread per rank: two ranks on two cores. OpenMPI refuses root unless told.
export RAYON_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
args=(train --preset 260k --vocab-size 512 --steps "$steps" --warmup 4 --lr 2e-3 --seq-len 128
      --batch-tokens 4096 --micro-batch 8 --eval-every 0 --checkpoint-every 1000)

"$bin" "${args[@]}" --out "$work/one" > "$work/one.log" 2>&1 || { cat "$work/one.log"; exit 1; }
mpirun -np 2 --oversubscribe -x RAYON_NUM_THREADS "$bin" "${args[@]}" \
    --tokenizer "$work/one/tokenizer.json" --out "$work/two" > "$work/two.log" 2>&1 \
    || { cat "$work/two.log"; exit 1; }
grep -h "data parallel" "$work/two.log"

python3 - "$work/one" "$work/two" <<'EOF'
import json, pathlib, sys
one, two = (pathlib.Path(d) for d in sys.argv[1:3])
load = lambda d: [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
a, b = load(one), load(two)
assert len(a) == len(b) > 0, (len(a), len(b))
worst = 0.0
print(f"{'step':>4} {'1 process':>12} {'mpirun -np 2':>12} {'rel diff':>9}")
for x, y in zip(a, b):
    rel = abs(x["loss"] - y["loss"]) / abs(x["loss"])
    worst = max(worst, rel)
    print(f"{x['step']:>4} {x['loss']:>12.7f} {y['loss']:>12.7f} {rel:>9.1e}")
same = (one / "hf/model.safetensors").read_bytes() == (two / "hf/model.safetensors").read_bytes()
print(f"largest relative loss difference {worst:.1e} (limit 1e-5); final weights identical: {same}")
sys.exit(0 if worst <= 1e-5 else 1)
EOF
