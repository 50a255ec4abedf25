"""Step checkpoints a killed run resumes from (`branchrl run --resume RUN_DIR`).

Every `run.checkpoint_every` steps (and once before the first step) the driver has the trainers write
`checkpoints/step-NNNNNN/` (HF files in model.dtype; `sharded/`, each rank's shards of the fp32 master weights
and optimizer state; trainer.json) and adds `driver.json`: the step, the policy version, the first rollout batch
not yet trained on, the ledger and eval_before. The directory is written under a `.partial` name and renamed
when complete, so a kill mid-write leaves the previous checkpoint intact; older step checkpoints are then
removed. The run directory must be on storage the driver and every trainer see (one machine, or a shared
filesystem on a cluster).

Resuming starts attempt k (`resumes.jsonl` lists them): steps after the checkpoint run again, and
their trees, sample ids and data shards carry `a<k>`, so nothing written before the kill is
overwritten or repeated. Metrics lines of the steps that run again move to `metrics.attempt<k-1>.jsonl`.
The same happens inside a run when a trainer dies (`loop.recover`). A resume may reshape the training group
(RESHAPE_KEYS, e.g. `train.workers`): the sharded state is resharded to it on load.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ConfigError

if TYPE_CHECKING:  # the driver's context imports Ray; `resume_point` runs before Ray is imported
    from .context import Context

PREFIX = "step-"
# what `branchrl run --resume RUN_DIR key=value` may change: the training group's shape and memory, not the math
RESHAPE_KEYS = ("train.workers", "train.cpus", "train.gpus", "train.threads", "train.node_resource",
                "train.sharding", "train.micro_batch_size", "train.activation_checkpointing")


@dataclass
class ResumePoint:
    checkpoint: Path
    step: int
    version: int
    next_key: int        # the first rollout batch not trained on before the checkpoint
    eval_before: float
    ledger: dict
    attempt: int         # this resume's number (1 for the first)


def save(ctx: Context, step: int, next_key: int, eval_before: float) -> Path:
    """A resumable checkpoint after `step`'s update; removes the older step checkpoints."""
    root = ctx.run_dir / "checkpoints"
    final, partial = root / f"{PREFIX}{step:06d}", root / f"{PREFIX}{step:06d}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    ctx.roles.trainer.save(str(partial))
    state = {"step": step, "version": ctx.roles.published.version, "next_key": next_key,
             "eval_before": eval_before, "ledger": ctx.ledger.state(), "attempt": ctx.attempt}
    (partial / "driver.json").write_text(json.dumps(state, indent=1) + "\n")
    partial.rename(final)
    for old in root.glob(f"{PREFIX}*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def check_reshape(overrides: list[str]) -> None:
    """A resume's overrides may only reshape the training group; anything else is a one-line error."""
    for item in overrides:
        key = item.partition("=")[0]
        if key not in RESHAPE_KEYS:
            raise ConfigError(f"--resume continues the run with its own config.yaml; an override may only reshape the "
                              f"training group ({', '.join(RESHAPE_KEYS)}), not {key!r}")


def resume_point(run_dir: Path) -> ResumePoint:
    """The latest complete step checkpoint of a run and the next attempt number; one-line errors otherwise."""
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a branchrl run directory (no config.yaml)")
    summary = run_dir / "summary.json"
    summary = json.loads(summary.read_text()) if summary.exists() else {}
    if summary and not summary.get("interrupted"):
        raise ConfigError(f"{run_dir} already finished (summary.json exists); nothing to resume")
    done = sorted(p for p in (run_dir / "checkpoints").glob(f"{PREFIX}*") if (p / "driver.json").is_file())
    if not done and "warm_start_epochs_done" in summary:
        epochs = f"{summary['warm_start_epochs_done']}/{summary['warm_start_epochs']}"
        raise ConfigError(f"{run_dir} was stopped during its warm start (after epoch {epochs}), before any step "
                          f"checkpoint; nothing to resume: start it again with `branchrl run "
                          f"{run_dir / 'config.yaml'} --out NEW_DIR`")
    if not done:
        raise ConfigError(f"{run_dir} has no step checkpoint to resume from (set run.checkpoint_every to write them)")
    state = json.loads((done[-1] / "driver.json").read_text())
    log = run_dir / "resumes.jsonl"
    attempt = 1 + (len(log.read_text().splitlines()) if log.exists() else 0)
    return ResumePoint(done[-1], state["step"], state["version"], state["next_key"], state["eval_before"],
                       state["ledger"], attempt)


def begin_attempt(run_dir: Path, point: ResumePoint, why: str = "resume", overrides: list[str] = ()) -> None:
    """Record the attempt (why: resume or a trainer restart; the overrides a resume reshaped the group with) and
    set aside the metrics of the steps that will run again."""
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    kept = [line for line in lines if json.loads(line)["step"] <= point.step]
    redone = [line for line in lines if json.loads(line)["step"] > point.step]
    if redone:
        (run_dir / f"metrics.attempt{point.attempt - 1}.jsonl").write_text("\n".join(redone) + "\n")
    metrics.write_text("".join(line + "\n" for line in kept))
    with open(run_dir / "resumes.jsonl", "a") as log:
        log.write(json.dumps({"attempt": point.attempt, "from_step": point.step, "checkpoint": point.checkpoint.name,
                              "why": why, "overrides": list(overrides),
                              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
