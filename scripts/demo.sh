#!/usr/bin/env bash
# The README's first command: set up (once), then run the CPU demo; extra args go to `branchrl run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out="runs/demo-$(date +%Y%m%d-%H%M%S)"
.venv/bin/branchrl run configs/demo.yaml --out "$out" "$@"
echo "demo done: $out/summary.json, verified data in $out/data/, checkpoints in $out/checkpoints/" >&2
