#!/usr/bin/env bash
# The README's first command: set up (once), then run the CPU demo; extra args go to `branchrl run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out="runs/demo-$(date +%Y%m%d-%H%M%S)"
.venv/bin/branchrl run configs/demo.yaml --out "$out" "$@"
.venv/bin/branchrl report "$out" >/dev/null
echo "demo done: $out/report.md (plots beside it), summary.json, verified data in $out/data/, checkpoints in $out/checkpoints/" >&2
