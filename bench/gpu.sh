#!/usr/bin/env bash
# The GPU benchmark, in one script: run it unchanged from the repository root
#   bash bench/gpu.sh
# on a machine with JAX (CUDA), optax and flax preinstalled and no network.
# It installs nothing (PYTHONPATH=.) and finishes in under 5 minutes: every
# step has a timeout within one overall deadline, and the sweep and the grid
# stop starting new cases in time for the report to be written.
#
# Steps: the devices; a correctness run (jxent's implementations, the Pallas
# kernels included, against optax, --strict); a tile sweep of the kernels
# at 8192 x {32768, 131072, 262144} bfloat16 (sweep.json: the fastest
# configuration per shape and kernel); the benchmark grid with the swept
# configurations; the linear suites (cross-entropy, log-probabilities and
# entropy, KL, JS, top-k KL) at 8192 x 2304 x 256000 bfloat16; the report.
#
# Writes ${OUT:-bench/runs}/<device-kind>-<date>/: results.json, table.md,
# bench.png, sweep.json, gpu.log (this script's output) and linear/
# (results.json, table.md): 7 files, 2 folders deep. If that folder exists
# already, the time is appended to its name. Results are committed by
# copying the folder to bench/results/, and the sweep's best configurations
# become the kernels' defaults by copying sweep.json to
# jxent/_kernels/tuned.json.
#
# Environment:
#   OUT                  parent of the results folder (default bench/runs,
#                        ignored by git)
#   PYTHON               interpreter (default python)
#   JXENT_BENCH_SHAPES   override the grid, e.g. 512x4096,512x16384 (to try
#                        the script on a CPU); default: the GPU grid in
#                        bench/logits.py (8192 rows, 32768..262144 classes)
#   JXENT_LINEAR_SHAPES  override the linear suites' shape, TOKENSxDIMxVOCAB
#                        (to try the script on a CPU, say 256x32x1000);
#                        default: 8192x2304x256000 (bench/linear.py)
#   JXENT_BENCH_TOTAL_S  overall deadline in seconds (default 285)
#   JXENT_BENCH_ARGS     extra arguments for the grid run
#   JXENT_SWEEP_ARGS     arguments for the sweep instead of the GPU defaults
#                        (say --interpret --shapes 8x1000 --blocks 64,128)
#   JXENT_BENCH_INTERPRET=1  runs the kernels in Pallas' interpreter, to
#                        rehearse the whole script on a CPU
#
# The rehearsal on a CPU (a few minutes on 2 cores; exit 0 when all agree):
#   OUT=/tmp/rehearsal JXENT_BENCH_INTERPRET=1 JXENT_BENCH_SHAPES=512x4096 \
#   JXENT_SWEEP_ARGS='--interpret --shapes 8x1000 --blocks 64,128' \
#   JXENT_LINEAR_SHAPES=256x32x1000 bash bench/gpu.sh
set -euo pipefail

PY=${PYTHON:-python}
ROOT=${OUT:-bench/runs}
TOTAL=${JXENT_BENCH_TOTAL_S:-285}
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$ROOT"
LOG="$ROOT/gpu-$$.log"
exec > >(tee -a "$LOG") 2>&1

status=0
left() { echo $((TOTAL - SECONDS)); }  # seconds to the deadline
min() { echo $(($1 < $2 ? $1 : $2)); }
max() { echo $(($1 > $2 ? $1 : $2)); }
step() {  # step NAME SECONDS COMMAND...: run with a timeout; notes on stderr
  local name=$1 secs=$2 rc=0 t0=$SECONDS
  shift 2
  echo "=== $name (timeout ${secs} s): $*" >&2
  timeout --kill-after=5 "$secs" "$@" || rc=$?
  echo "=== $name: exit $rc after $((SECONDS - t0)) s" >&2
  return "$rc"
}

echo "=== bench/gpu.sh on $(hostname), $(date -u '+%Y-%m-%d %H:%M UTC')"
if command -v nvidia-smi >/dev/null; then
  step nvidia-smi 10 nvidia-smi || true
else
  echo "no nvidia-smi on this machine"
fi

# JAX's devices, and the results folder named by the device kind and date.
DIR=$(step devices 45 "$PY" -c '
import datetime, os, sys
import jax
from bench import timing
d = jax.devices()[0]
print(f"jax {jax.__version__}, devices {jax.devices()}, kind {d.device_kind!r}",
      file=sys.stderr)
now = datetime.datetime.now(datetime.UTC)
out = os.path.join(sys.argv[1], f"{timing.device_slug(d)}-{now:%Y-%m-%d}")
if os.path.exists(out):  # never write over an earlier run
  out += f"-{now:%H%M%S}"
print(out)
' "$ROOT")
mkdir -p "$DIR"
echo "results folder: $DIR"

# Correctness first: jxent's implementations (the default, XLA alone, the
# Pallas kernels) against optax (and jax.nn) on a tiny grid, on this device;
# --strict fails on any disagreement beyond tolerance. Its files stay out of
# the results folder; the table lands in the log.
CHECK=$(mktemp -d)
step check "$(max 5 "$(min 50 $(($(left) - 170)))")" "$PY" -m bench --quick \
  --strict --no-plot --out "$CHECK" \
  --impls jxent,jxent_xla,jxent_triton,optax,optax_f32,jax_nn,jax_nn_f32 \
  >/dev/null || status=1
grep -E '^\| (ce|entropy|kl)' "$CHECK/table.md" || true

# The tile sweep of the kernels: the fastest configuration per shape and
# kernel, into sweep.json, which the grid below then uses.
sweep_args=()
if [[ -n ${JXENT_SWEEP_ARGS:-} ]]; then
  read -r -a sweep_args <<<"$JXENT_SWEEP_ARGS"
fi
sweep_s=$(max 10 "$(min 55 $(($(left) - 170)))")
step sweep "$sweep_s" "$PY" -m bench.sweep --out "$DIR/sweep.json" \
  --budget-s $((sweep_s - 20)) "${sweep_args[@]}" || status=1
if [[ -f $DIR/sweep.json ]]; then
  export JXENT_KERNEL_CONFIGS="$DIR/sweep.json"
fi

# The grid: ce_int at 8192 x {32768, 131072, 262144}, the other suites at two
# shapes, float32 and bfloat16, forward and loss+gradient. It writes
# results.json after every case, so a timeout still leaves the finished ones.
shapes=()
if [[ -n ${JXENT_BENCH_SHAPES:-} ]]; then
  shapes=(--shapes "$JXENT_BENCH_SHAPES")
fi
# The grid gets what is left but 20 s for the report and 100 s for the
# linear suites; it starts no new case in its last 25 s (the largest GPU
# case takes a few seconds).
grid_s=$(max 30 $(($(left) - 120)))
# shellcheck disable=SC2086  # JXENT_BENCH_ARGS is split on purpose
step grid "$grid_s" "$PY" -m bench --out "$DIR" --budget-s $((grid_s - 25)) \
  --no-plot "${shapes[@]}" ${JXENT_BENCH_ARGS:-} >/dev/null || status=1

# The linear suites (Gemma 2 2B's output layer in bfloat16), loss and
# gradient for the student's x and w: jxent against the materialised logits
# (float32, and bfloat16 upcast inside the loss) and token chunks under
# checkpoint; --strict fails the step on an error (out of memory, say) or a
# disagreement. They run in suite order (bench linear's NAMES) and start no
# new suite in the last 40 s: a suite compiles four programs and times each
# for a few calls of some 100 ms.
linear_shapes=()
if [[ -n ${JXENT_LINEAR_SHAPES:-} ]]; then
  linear_shapes=(--shapes "$JXENT_LINEAR_SHAPES")
fi
linear_s=$(max 5 "$(min 100 $(($(left) - 20)))")
step linear "$linear_s" "$PY" -m bench.linear --strict --out "$DIR/linear" \
  --budget-s "$(max 1 $((linear_s - 40)))" --max-case-s 2 \
  "${linear_shapes[@]}" || status=1

# The tables and the plot, from whatever the results.json files hold (a
# step cut short by its timeout leaves the cases it finished, and no
# table.md of its own).
step report "$(max 5 "$(min 15 "$(left)")")" "$PY" -m bench \
  --from-json "$DIR/results.json" || status=1
if [[ $DIR/linear/results.json -nt $DIR/linear/table.md ]]; then
  step linear-report 5 "$PY" -m bench --no-plot \
    --from-json "$DIR/linear/results.json" || status=1
fi

echo "=== done, exit $status; results in $DIR"
mv "$LOG" "$DIR/gpu.log"
exit "$status"
