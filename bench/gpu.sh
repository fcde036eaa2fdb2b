#!/usr/bin/env bash
# The GPU benchmark, in one script: run it unchanged from the repository root
#   bash bench/gpu.sh
# on a machine with JAX (CUDA), optax and flax preinstalled and no network
# (PyTorch too, if it is there). It installs nothing (PYTHONPATH=.) and
# finishes in under 5 minutes: one Python process (`python -m bench.gpu`)
# runs every stage within one deadline, each stage starting no new case
# past its share, and the whole of it runs under a timeout.
#
# Stages (bench/gpu.py): bfloat16 first, jxent (default, XLA alone, Pallas
# kernels) against optax as users call it and upcast, on the four suites on
# logits, loss (fwd), loss and gradient with the mean outside (vjp) and
# inside (vjp_mean), --strict; then the linear suites (8192 x 2304 x 256000
# bfloat16), --strict; then float32 and the other peers (the naive formula,
# PyTorch) in the time left. The kernels use the committed tuned.json; the
# tile sweep runs only on request (JXENT_SWEEP=1), first, and the stages then
# use its sweep.json.
#
# Writes ${OUT:-bench/runs}/<device-kind>-<date>/: bf16/, linear/ and rest/
# (results.json and table.md each), gpu.log (this script's output) and, with
# the sweep, sweep.json: at most 8 files, 2 folders deep, what the device
# tool brings back. If that folder exists already, the time is appended to
# its name. Results are committed by copying the folder to bench/results/;
# a sweep's best configurations become the kernels' defaults by copying its
# sweep.json to jxent/_cross_entropy/triton/tuned.json.
#
# Environment:
#   OUT                  parent of the results folder (default bench/runs,
#                        ignored by git)
#   PYTHON               interpreter (default python)
#   JXENT_BENCH_TOTAL_S  the deadline in seconds (default 285)
#   JXENT_SWEEP=1        sweep the kernels' tiles first
#   JXENT_SWEEP_ARGS     arguments for the sweep instead of the GPU defaults
#                        (say --interpret --shapes 8x1000 --blocks 64,128)
#   JXENT_BENCH_SHAPES   the logits suites' shapes, e.g. 512x4096 (to try
#                        the script on a CPU); default: the GPU grid in
#                        bench/logits.py (8192 rows, 32768..262144 classes)
#   JXENT_LINEAR_SHAPES  the linear suites' shape, TOKENSxDIMxVOCAB (to try
#                        the script on a CPU, say 256x32x1000); default:
#                        8192x2304x256000 (bench/linear.py)
#   JXENT_BENCH_INTERPRET=1  runs the kernels in Pallas' interpreter, to
#                        rehearse the whole script on a CPU
#
# The rehearsal on a CPU (a few minutes on 2 cores; exit 0 when all agree):
#   OUT=/tmp/rehearsal JXENT_BENCH_INTERPRET=1 JXENT_BENCH_SHAPES=64x1000 \
#   JXENT_LINEAR_SHAPES=128x32x1000 JXENT_SWEEP=1 \
#   JXENT_SWEEP_ARGS='--interpret --shapes 8x1000 --blocks 64,128 --calls 2' \
#   bash bench/gpu.sh
set -euo pipefail

PY=${PYTHON:-python}
ROOT=${OUT:-bench/runs}
TOTAL=${JXENT_BENCH_TOTAL_S:-285}
if [[ ! $TOTAL =~ ^[0-9]+$ ]] || ((TOTAL < 30)); then
  echo "bench/gpu.sh: JXENT_BENCH_TOTAL_S must be whole seconds, at least 30;" \
    "got '$TOTAL'" >&2
  exit 2
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
# JAX takes GPU memory as it needs it, not 75% of it at the start: PyTorch,
# in the same process, needs its share.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONUNBUFFERED=1
mkdir -p "$ROOT"
LOG="$ROOT/gpu-$$.log"

run() {
  echo "=== bench/gpu.sh on $(hostname), $(date -u '+%Y-%m-%d %H:%M UTC')"
  if command -v nvidia-smi >/dev/null; then
    timeout 10 nvidia-smi || true
  else
    echo "no nvidia-smi on this machine"
  fi
  local sweep=()
  if [[ ${JXENT_SWEEP:-} == 1 ]]; then
    sweep=(--sweep)
  fi
  # The stages keep to TOTAL - 10 s; the timeout is the backstop.
  timeout --kill-after=5 "$((TOTAL + 5))" "$PY" -m bench.gpu --out "$ROOT" \
    --total-s "$((TOTAL - 10))" "${sweep[@]}"
}

# The whole output to the terminal and the log; the pipeline ends when tee
# has written the last line, so the log is whole when it is moved.
status=0
run 2>&1 | tee -a "$LOG" || status=${PIPESTATUS[0]}

DIR=$(sed -n 's/^=== results folder: //p' "$LOG" | head -n 1)
echo "=== bench/gpu.sh: exit $status after $SECONDS s; results in ${DIR:-?}" \
  | tee -a "$LOG"
if [[ -n $DIR && -d $DIR ]]; then
  mv "$LOG" "$DIR/gpu.log"
fi
exit "$status"
