#!/usr/bin/env bash
# One check of the GPU paths on a single GPU machine (H100/H200; CUDA torch preinstalled; Ray and datasets not
# needed), in at most 9 minutes, ending in one table:
#   gpu tests   the gpu-marked tests (pytest -m gpu)
#   engine      tokens/s of eager and graph decoding (compiled step per bucket, CUDA graphs) vs transformers
#               `generate`; host time and KV bytes per step; Qwen2.5-0.5B and 1.5B shapes, batch 64 and 256, bf16
#   fork        the cost of a fork against a prefill
#   trainer     tokens/s, MFU and peak memory at the 1.5B shape, 8x2048 tokens, fsdp on 1 rank, act. ckpt off/on
#   mismatch    bf16 engine-vs-trainer log-prob mismatch (old_logprobs rollout vs recompute)
#
#   bash bench/gpu_check.sh               # on the GPU machine; paste the table into docs/BENCHMARKS.md
#   bash bench/gpu_check.sh --cpu-smoke   # the same parts on tiny shapes on CPU (the test suite runs this)
#
# PYTHON picks the interpreter (default: .venv/bin/python if there, else python3). What is missing is installed
# (branchrl itself without its dependencies; pytest, transformers, ... from the package index if reachable);
# a part whose needs cannot be met is skipped with a line saying why. Exit status 1 if a part failed.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=gpu
[ "${1:-}" = "--cpu-smoke" ] && MODE=cpu
PY="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
WORK="$(mktemp -d)"
ROWS="$WORK/rows"
FAILED=0
START=$SECONDS
trap 'rm -rf "$WORK"' EXIT
: > "$ROWS"

row() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$ROWS"; }
have() { "$PY" -c "import $1" 2>/dev/null; }

ensure() {   # ensure MODULE [PIP_NAME]: importable, or installed now; else false
  have "$1" && return 0
  echo "[gpu_check] installing ${2:-$1}" >&2
  "$PY" -m pip install --quiet --disable-pip-version-check "${2:-$1}" >/dev/null 2>&1
  have "$1"
}

part() {   # part NAME TIMEOUT_S COMMAND...: run it; its ROW lines join the table; a failure or timeout is a row
  local name="$1" limit="$2"
  shift 2
  echo "[gpu_check] $name: $*" >&2
  timeout "$limit" "$@" > "$WORK/out" 2> "$WORK/err"
  local rc=$?
  cat "$WORK/out" >&2
  grep -P '^ROW\t' "$WORK/out" | cut -f2- >> "$ROWS"
  if [ "$rc" -ne 0 ]; then
    FAILED=1
    local why="exit $rc"; [ "$rc" = 124 ] && why="timed out after ${limit}s"
    row "$name" "FAILED" "$why: $(tail -n 3 "$WORK/err" | tr '\n\t' '  ' | cut -c1-300)"
  fi
  return "$rc"
}

# --- set-up: torch is the one thing this script does not install ---------------------------------------------
if ! have torch; then
  echo "gpu_check: $PY has no torch; install the CUDA build of torch first" >&2
  exit 1
fi
if [ "$MODE" = gpu ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device visible to torch; on a CPU machine run: bash bench/gpu_check.sh --cpu-smoke" >&2
  exit 1
fi
if ! have branchrl; then   # branchrl alone: its Ray and datasets dependencies are not needed here
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
    || row "set-up" "skipped" "could not install branchrl (pip install --no-deps -e . failed)"
fi
READY=1
for dep in transformers safetensors tokenizers pydantic yaml:pyyaml; do
  ensure "${dep%%:*}" "${dep##*:}" || { READY=0; row "set-up" "missing" "${dep##*:} (not installable here)"; }
done
have branchrl || READY=0
DEVICE=$("$PY" -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU')")

# --- gpu tests -------------------------------------------------------------------------------------------------
if [ "$READY" = 0 ]; then
  row "gpu tests" "skipped" "branchrl or its torch-side dependencies are missing (rows above)"
elif ! ensure pytest; then
  row "gpu tests" "skipped" "pytest is not installed and could not be installed"
else
  # only the files that hold gpu tests: the others import Ray, which this machine need not have
  mapfile -t FILES < <(grep -l "pytest.mark.gpu" tests/test_*.py)
  if part "gpu tests" 60 "$PY" -m pytest -m gpu -q -p no:cacheprovider "${FILES[@]}"; then :; fi
  summary=$(grep -E "passed|skipped|failed|error" "$WORK/out" | tail -n 1)
  row "gpu tests" "$(basename -a "${FILES[@]}" | tr '\n' ' ')" "${summary:-no summary line}"
fi

if [ "$READY" = 1 ]; then
  # --- engine: eager vs graph decoding (compiled step per batch bucket, CUDA-graph captured on a GPU) ----------
  if [ "$MODE" = gpu ]; then
    ENGINE=(--shapes qwen2.5-0.5b qwen2.5-1.5b --batches 64 256 --prompt 256 --new 128 --dtype bfloat16
            --cases throughput overhead fork --decode eager graph)
  else   # one compile only (a CPU compile takes ~40 s): graph decoding in the overhead case
    ENGINE=(--shapes tiny --batches 4 --prompt 8 --new 8 --threads 1 --cases overhead fork --decode eager graph)
  fi
  # rows printed before a failure or a timeout still count: eager numbers come before the graph capture
  part "engine" 270 "$PY" bench/engine.py "${ENGINE[@]}"
  while IFS= read -r line; do
    case "$line" in
      "#"*|"") ;;
      *"fork "*) row "fork" "${line%% *}" "$(echo "${line#* }" | sed 's/^ *//')" ;;
      *:*) row "engine" "$(echo "${line%%:*}" | tr -s ' ')" "$(echo "${line#*:}" | tr -s ' ' | sed 's/^ //')" ;;
    esac
  done < "$WORK/out"

  # --- trainer ---------------------------------------------------------------------------------------------------
  if [ "$MODE" = gpu ]; then
    TRAIN=(--shape qwen2.5-1.5b --batch 8 --seq 2048 --ranks 1 --sharding fsdp --ac false true --steps 2)
  else
    TRAIN=(--shape tiny --batch 2 --seq 64 --ranks 1 --sharding fsdp --ac false true --cpu --warmup 0)
  fi
  part "trainer" 120 "$PY" bench/train_memory.py "${TRAIN[@]}" --workdir "$WORK/models"

  # --- mismatch --------------------------------------------------------------------------------------------------
  if [ "$MODE" = gpu ]; then
    MISMATCH=(--shapes qwen2.5-0.5b --dtypes bfloat16 --gpu)
  else
    MISMATCH=(--shapes tiny --dtypes bfloat16 --prompts 2 --roots 2 --new 8 --threads 1)
  fi
  part "mismatch" 60 "$PY" bench/logprob_mismatch.py "${MISMATCH[@]}" --workdir "$WORK/models"
else
  for name in engine fork trainer mismatch; do row "$name" "skipped" "branchrl or its dependencies are missing"; done
fi

# --- the table -------------------------------------------------------------------------------------------------
echo
echo "gpu_check ($MODE) on $DEVICE, $(date -u +%Y-%m-%dT%H:%MZ), $((SECONDS - START)) s, torch $("$PY" -c 'import torch; print(torch.__version__)')"
echo "| part | case | result |"
echo "|---|---|---|"
while IFS=$'\t' read -r name case result; do
  echo "| $name | $case | $result |"
done < "$ROWS"
exit "$FAILED"
