"""`branchrl report RUN_DIR`: a Markdown summary and PNG plots of a finished (or running) run.

Reads only the run directory's `summary.json`, `metrics.jsonl` (and `config.yaml` for the plan), so it works
on runs from any machine. Writes `report.md`, `learning.png` (pass rate per step, held-out pass@1),
`compute.png` (seconds and FLOPs per group), `devices.png` (where the device-seconds went: busy and idle per
group, verifier CPU-seconds, FLOPs by pass) and `trees.png` (leaves, forks, verified samples per step).
The report also shows `branchrl plan` for the run's own hardware: the split that keeps both groups busy.
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
    has_devices = "rollout_busy_device_seconds" in summary
    if has_devices:
        _plot_devices(run_dir / "devices.png", summary)
    path = run_dir / "report.md"
    path.write_text(_markdown(run_dir, summary, steps) + _plan_section(run_dir, summary, has_devices))
    return path


def _plan_section(run_dir: Path, summary: dict, has_devices: bool) -> str:
    """`branchrl plan` on the run's own hardware: the step model against what was measured, and the split of the
    same devices that keeps both groups busy."""
    if not has_devices or "rl_seconds" not in summary:
        return "\n## Plan\n\nNo plan: this run's summary has no device-seconds (written before the complete ledger).\n"
    from branchrl.plan.plan import plan_own

    plan = plan_own(run_dir)
    run = plan["as_run"]
    rows = [("step seconds", run["step_seconds"], run["measured_step_seconds"], plan["step_seconds"]),
            ("rollout idle fraction", run["rollout_idle_fraction"], run["measured_rollout_idle_fraction"],
             plan["rollout_idle_fraction"]),
            ("trainer idle fraction", run["trainer_idle_fraction"], run["measured_trainer_idle_fraction"],
             plan["trainer_idle_fraction"])]
    now = f"{run['inference']:g} rollout + {run['train']:g} training devices"
    same = (run["inference"], run["train"]) == (plan["inference_gpus"], plan["training_gpus"])
    advice = (f"no other split of these devices is faster: keep **{now}**" if same else
              f"so that neither group idles: **{now} → {plan['inference_gpus']:g} + {plan['training_gpus']:g}**")
    lines = ["", "## Plan for this run's own hardware", "",
             f"Calibrated from the run's measured seconds (`branchrl plan {run_dir}`; docs/PLANNING.md): "
             f"{advice}, at max_staleness {plan['max_staleness']}"
             + ("" if plan["max_staleness"] else " (synchronous: each group waits for the other; "
                "rollout.max_staleness=1 overlaps them)") + ".", "",
             "| | predicted, as run | measured | re-split |", "|---|---|---|---|",
             *[f"| {name} | {a:.3g} | {b:.3g} | {c:.3g} |" for name, a, b, c in rows], "",
             f"The step is bound by {plan['bound_by']}. Verifier CPUs to keep pace: {plan['verifier_cpus']}.", "",
             "![devices](devices.png)", ""]
    return "\n".join(lines) + "\n"


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
    before, after = summary.get("eval_before"), summary.get("eval_after")
    if before is not None and after is not None:
        lines += [f"Held-out pass@1: **{before:.3f} → {after:.3f}** ({after - before:+.3f}).", ""]
    elif summary.get("interrupted"):   # a signal stopped it: no eval_after (nor eval_before in the warm start)
        lines += [f"Interrupted by {summary.get('signal', 'a signal')} after step {summary.get('steps', 0)}"
                  + (f"; held-out pass@1 before RL: {before:.3f}." if before is not None else "."), ""]
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


def _plot_devices(path: Path, summary: dict) -> None:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5), width_ratios=(2, 3))
    groups = ["rollout", "train"]
    busy = [summary[f"{g}_busy_device_seconds"] for g in groups]
    idle = [summary[f"{g}_idle_device_seconds"] for g in groups]
    left.bar(groups + ["verifier"], busy + [summary["verifier_cpu_seconds"]], label="busy")
    left.bar(groups, idle, bottom=busy, label="idle")
    left.set(ylabel="device-seconds (verifier: CPU-s)", title="where the device-seconds went")
    left.legend()
    kinds = ["rollout_prefill", "rollout_decode", "train_update", "train_recompute", "train_reference",
             "train_checkpoint"]
    right.bar([k.replace("_", "\n", 1) for k in kinds], [summary[f"{k}_flops"] for k in kinds])
    right.bar(["saved by\nforks"], [summary["fork_saved_prefill_flops"]], color="lightgray", hatch="//")
    right.set(ylabel="FLOPs", title="FLOPs by pass (and the prefill forks saved)")
    right.tick_params(axis="x", labelsize=7)
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
