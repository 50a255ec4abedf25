"""The branching experiment: `independent`, `entropy` and `eptree` at an equal budget of generated tokens
per step, several seeds each; writes a results table (Markdown + JSON) and a plot.

    .venv/bin/python bench/branching.py --out runs/branching [--seeds 0 1 2] [--steps 30] [key=value ...]

Each seed first warm-starts once (a one-step run whose checkpoints/warm_start every policy of that
seed then loads, with warm_start off), so policies differ only in how they sample. Each (policy, seed)
is one `branchrl run` of configs/experiments/branching.yaml in its own process; a run whose
summary.json exists is reused, so an interrupted experiment continues where it stopped.
Extra key=value overrides apply to every run (e.g. env.name=countdown; write them before --policies, which takes
every word after it). `--out DIR rollout.prompts_per_step=32 rollout.tokens_per_step=8000 --config
configs/tool_demo.yaml --policies independent entropy tool_entropy` is issue 16's tool-use comparison. Metrics per run:
- distinct verified chains per 1,000 generated tokens (distinct passing signatures per problem, before the cap);
- held-out greedy pass@1 after the last step (and before RL, the same for every policy of a seed);
- generated tokens per verified token (tokens on at least one passing path: the pruning ratio);
- for `arithmetic`, the share of stored samples whose chain of thought is the exact worked solution:
  the verifier checks only the final answer, so a distinct chain may be a wrong one that got lucky.
Not a test: it asserts nothing; docs/EXPERIMENTS.md records what it printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "experiments" / "branching.yaml"
POLICIES = {  # what differs per policy: the same 4 roots per problem (with 8 independent roots, fewer problems fit a
    # token budget, which alone halved independent's distinct chains per token: docs/EXPERIMENTS.md "Equal roots");
    # a branching policy may grow each tree to at most 8 leaves
    "independent": ["branch.policy=independent", "branch.roots=4"],
    "entropy": ["branch.policy=entropy", "branch.roots=4"],
    "eptree": ["branch.policy=eptree", "branch.roots=4"],
    # multi-turn envs (--config configs/tool_demo.yaml): forks only right after tool outputs
    "tool_entropy": ["branch.policy=tool_entropy", "branch.roots=4"],
}


def launch(run_dir: Path, args: list[str]) -> None:
    """One `branchrl run` of the experiment config (CONFIG, or --config), unless it already finished; its log
    beside the run dir."""
    if (run_dir / "summary.json").exists():
        return
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a half-written run from an interruption
    cmd = [str(Path(sys.executable).with_name("branchrl")), "run", str(CONFIG), "--out", str(run_dir), *args]
    print("$", " ".join(cmd), flush=True)
    with open(run_dir.with_suffix(".log"), "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)


def warm_start(out: Path, seed: int, extra: list[str]) -> Path:
    """The seed's shared warm-start checkpoint (one RL step is the shortest run that saves it)."""
    run_dir = out / f"warm-seed{seed}"
    launch(run_dir, [f"run.seed={seed}", "run.steps=1", "eval.problems=1", "rollout.tokens_per_step=0", *extra])
    return run_dir / "checkpoints" / "warm_start"


def run_one(out: Path, policy: str, seed: int, steps: int, extra: list[str]) -> dict:
    run_dir = out / f"{policy}-seed{seed}"
    launch(run_dir, [f"run.seed={seed}", f"run.steps={steps}", f"model.path={warm_start(out, seed, extra)}",
                     "warm_start.problems=0", *POLICIES[policy], *extra])
    summary = json.loads((run_dir / "summary.json").read_text())
    steps_ = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    generated = sum(s["generated_tokens"] for s in steps_)
    return {"policy": policy, "seed": seed, "generated_tokens": generated,
            "distinct_per_1k": 1000 * sum(s["distinct_verified"] for s in steps_) / generated,
            "gen_per_verified": generated / max(sum(s["verified_tokens"] for s in steps_), 1),
            "leaves_per_problem": sum(s["leaves"] for s in steps_) / sum(s["prompts"] for s in steps_),
            "pass_rate": statistics.mean(s["pass_rate"] for s in steps_),
            "eval_before": summary["eval_before"], "eval_after": summary["eval_after"],
            "canonical_share": canonical_share(run_dir / "data"),
            "rollout_seconds": summary["rollout_seconds"], "wall_seconds": summary["wall_seconds"]}


def canonical_share(data_dir: Path) -> float | None:
    """Arithmetic only: the fraction of stored completions equal to the worked column-by-column solution."""
    import datasets

    from branchrl.envs.arithmetic import worked_solution

    rows = datasets.load_dataset("parquet", data_dir=str(data_dir), split="train")
    if not len(rows) or set(rows["env"]) != {"arithmetic"}:
        return None
    return sum(c.strip() == worked_solution(*map(int, p.split("+")))
               for p, c in zip(rows["problem_id"], rows["completion"])) / len(rows)


def spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def table(rows: list[dict]) -> str:
    base = statistics.mean(r["distinct_per_1k"] for r in rows if r["policy"] == "independent") if any(
        r["policy"] == "independent" for r in rows) else None
    lines = ["| policy | distinct verified / 1k tokens | vs independent | pass@1 before → after | "
             "generated / verified tokens | canonical chains in the data | leaves per problem | generated tokens |",
             "|---|---|---|---|---|---|---|---|"]
    for policy in POLICIES:
        rs = [r for r in rows if r["policy"] == policy]
        if not rs:
            continue
        ratio = f"{statistics.mean(r['distinct_per_1k'] for r in rs) / base:.2f}×" if base else "-"
        shares = [r["canonical_share"] for r in rs]
        canonical = spread(shares) if None not in shares else "-"
        lines.append(f"| {policy} | {spread([r['distinct_per_1k'] for r in rs])} | {ratio} | "
                     f"{spread([r['eval_before'] for r in rs])} → {spread([r['eval_after'] for r in rs])} | "
                     f"{spread([r['gen_per_verified'] for r in rs])} | "
                     f"{canonical} | "
                     f"{spread([r['leaves_per_problem'] for r in rs])} | "
                     f"{statistics.mean(r['generated_tokens'] for r in rs):,.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, key, title in zip(axes, ["distinct_per_1k", "eval_after", "gen_per_verified"],
                              ["distinct verified chains / 1k tokens", "held-out pass@1 after RL",
                               "generated / verified tokens"]):
        for x, policy in enumerate(POLICIES):
            values = [r[key] for r in rows if r["policy"] == policy]
            if values:
                ax.bar(x, statistics.mean(values), color=f"C{x}", alpha=0.6)
                ax.scatter([x] * len(values), values, color="k", s=12, zorder=3)  # one dot per seed
        ax.set_xticks(range(len(POLICIES)), list(POLICIES))
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    global CONFIG
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--policies", nargs="+", default=["independent", "entropy", "eptree"], choices=list(POLICIES))
    ap.add_argument("--config", type=Path, default=CONFIG, help="the run config (tool use: configs/tool_demo.yaml)")
    ap.add_argument("overrides", nargs="*", help="key=value applied to every run")
    args = ap.parse_args()
    CONFIG = args.config.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        for policy in args.policies:
            rows.append(run_one(args.out, policy, seed, args.steps, args.overrides))
            print(json.dumps(rows[-1]), flush=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "results.md").write_text(table(rows) + "\n")
    plot(rows, args.out / "branching.png")
    print(table(rows))
    print(f"wrote {args.out / 'results.md'}, {args.out / 'results.json'}, {args.out / 'branching.png'}")


if __name__ == "__main__":
    main()
