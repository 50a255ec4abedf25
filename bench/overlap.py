"""Synchronous vs async rollouts on one workload: how idle each group is, and the wall time per step.

    .venv/bin/python bench/overlap.py --out runs/overlap [--steps 20] [--staleness 0 1 2] [key=value ...]

Runs configs/demo.yaml (the same seed, steps and problems) once per `rollout.max_staleness` value, each a
`branchrl run` in its own process, and prints a Markdown table from the summaries: the trainer's and the
rollout workers' idle fraction over the RL steps (mid-run evals excluded), wall seconds per step, the largest
staleness a trained batch had, and held-out pass@1 after. A run whose summary.json exists is reused.
Not a test: it asserts nothing; docs/BENCHMARKS.md records what it printed, with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_one(out: Path, staleness: int, steps: int, extra: list[str]) -> tuple[dict, list[dict]]:
    run_dir = out / f"staleness{staleness}"
    if not (run_dir / "summary.json").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = [str(Path(sys.executable).with_name("branchrl")), "run", str(ROOT / "configs" / "demo.yaml"),
               "--out", str(run_dir), f"run.steps={steps}", f"rollout.max_staleness={staleness}", *extra]
        print("$", " ".join(cmd), flush=True)
        with open(run_dir.with_suffix(".log"), "w") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    steps_ = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return json.loads((run_dir / "summary.json").read_text()), steps_


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/overlap"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--staleness", type=int, nargs="+", default=[0, 1])
    parser.add_argument("overrides", nargs="*", help="key=value for every run (e.g. eval.every=0)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    rows = []
    for k in args.staleness:
        summary, steps = run_one(args.out, k, args.steps, args.overrides)
        rows.append((k, summary, steps))
    print("\n| max_staleness | trainer idle | rollout idle | wall s/step | largest staleness | stale batches | "
          "eval after |\n|---|---|---|---|---|---|---|")
    for k, s, steps in rows:
        print(f"| {k} | {s['trainer_idle_fraction']:.2f} | {s['rollout_idle_fraction']:.2f} | "
              f"{s['rl_seconds'] / len(steps):.2f} | "
              f"{max(x['staleness'] for x in steps)} | {sum(x['stale_batches'] for x in steps)} | "
              f"{s['eval_after']:.3f} |")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
