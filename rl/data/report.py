"""`branchrl report RUN_DIR`: a Markdown summary and PNG plots of a finished (or running) run.

Reads only the run directory's `summary.json` and `metrics.jsonl`, so it works on runs from any
machine. Writes `report.md`, `learning.png` (pass rate per step, held-out pass@1), `compute.png`
(seconds and FLOPs per group) and `trees.png` (leaves, forks, verified samples per step).
"""

from __future__ import annotations

import json
from pathlib import Path


def load_run(run_dir: Path) -> tuple[dict, list[dict]]:
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl; is it a branchrl run directory?")
    steps = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return summary, steps


def write_report(run_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    summary, steps = load_run(run_dir)
    _plot_learning(run_dir / "learning.png", summary, steps)
    _plot_compute(run_dir / "compute.png", summary, steps)
    _plot_trees(run_dir / "trees.png", steps)
    path = run_dir / "report.md"
    path.write_text(_markdown(run_dir, summary, steps))
    return path


def _markdown(run_dir: Path, summary: dict, steps: list[dict]) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    rows = [f"| {k} | {fmt(v)} |" for k, v in summary.items()]
    gen = sum(s["generated_tokens"] for s in steps)
    leaves = sum(s["leaves"] for s in steps)
    lines = [f"# branchrl run `{run_dir.name}`", "",
             f"{len(steps)} steps recorded; {leaves} leaves verified, {sum(s['forks'] for s in steps)} forks, "
             f"{sum(s['verified_samples'] for s in steps)} verified samples kept from {gen} generated tokens.", ""]
    calls = sum(s.get("tool_calls", 0) for s in steps)
    if calls:   # a multi-turn env: the tool's share of the run
        kept = [s["verified_with_tool"] for s in steps if s.get("verified_samples")]
        lines += [f"Tools: {calls} calls ({sum(s['tool_seconds'] for s in steps):.1f} s in the sandbox), "
                  f"{sum(s['appended_tokens'] for s in steps)} tool-output tokens appended; kept samples that "
                  f"called a tool: {sum(kept) / max(len(kept), 1):.0%} (mean over steps).", ""]
    if "eval_before" in summary:
        lines += [f"Held-out pass@1: **{summary['eval_before']:.3f} → {summary['eval_after']:.3f}** "
                  f"({summary['eval_after'] - summary['eval_before']:+.3f}).", ""]
    lines += ["| summary | value |", "|---|---|", *rows, "",
              "![learning](learning.png)", "", "![compute](compute.png)", "", "![trees](trees.png)", ""]
    return "\n".join(lines)


def _plot_learning(path: Path, summary: dict, steps: list[dict]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([s["step"] for s in steps], [s["pass_rate"] for s in steps], label="rollout pass rate (per leaf)")
    evals = [(0, summary.get("eval_before"))] + [(s["step"], s["eval"]) for s in steps if "eval" in s]
    if steps and "eval_after" in summary:
        evals.append((steps[-1]["step"], summary["eval_after"]))
    evals = [(x, y) for x, y in evals if y is not None]
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out pass@1 (greedy)")
    ax.set(xlabel="step", ylabel="rate", ylim=(0, 1), title="learning")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_compute(path: Path, summary: dict, steps: list[dict]) -> None:
    import matplotlib.pyplot as plt

    groups = ["rollout", "verify", "train", "sync"]
    seconds = [sum(s[f"{g}_seconds"] for s in steps) for g in groups]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.5))
    left.bar(groups, seconds)
    left.set(ylabel="seconds", title="time per phase")
    flops = [summary.get("rollout_flops", 0.0), summary.get("train_flops", 0.0)]
    right.bar(["rollout", "train"], flops)
    ratio = summary.get("rollout_train_flop_ratio")
    right.set(ylabel="FLOPs", title="FLOPs" + (f" (ratio {ratio:.2f})" if ratio else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_trees(path: Path, steps: list[dict]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = [s["step"] for s in steps]
    for key in ("leaves", "forks", "verified_samples"):
        ax.plot(x, [s[key] for s in steps], label=key)
    ax.set(xlabel="step", ylabel="per step", title="trees")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
