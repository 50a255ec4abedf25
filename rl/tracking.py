"""What a run shows while it runs: each step's metrics line (metrics.jsonl), the same scalars as TensorBoard events
(RUN/tensorboard/) and, when asked, Weights & Biases; a few passing and failing rollouts per step
(RUN/samples/step-NNNNNN.jsonl); loud console warnings when nothing verifies for several steps or the verifier
reports errors. The step record's numbers are the loop's; `rollout_stats` adds the ones read off the leaves.

Deliberately not here: choosing what a step measures (loop.py), or plots (data/report.py reads metrics.jsonl).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .config import Config
from .progress import Progress
from .records import Leaf
from .tree import Tree

VERDICTS = ("pass", "fail", "timeout", "memory", "error")


def rollout_stats(leaves: list[Leaf], trees: list[Tree]) -> dict:
    """Per step: reward mean and std, response length mean and max (tokens), mean next-token entropy over every
    sampled token, and the count of each verdict."""
    rewards = [leaf.reward for leaf in leaves]
    lengths = [len(leaf.ids) for leaf in leaves]
    entropies = [e for tree in trees for node in tree.nodes for e in node.entropies]
    mean = sum(rewards) / len(rewards) if rewards else 0.0
    verdicts = [leaf.result.verdict for leaf in leaves]
    return {"reward_mean": mean,
            "reward_std": math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards)) if rewards else 0.0,
            "response_length_mean": sum(lengths) / len(lengths) if lengths else 0.0,
            "response_length_max": max(lengths, default=0),
            "entropy": sum(entropies) / len(entropies) if entropies else 0.0,
            **{f"verdict_{v}": verdicts.count(v) for v in VERDICTS}}


def scalars(record: dict) -> dict[str, float]:
    """The record's numbers, as TensorBoard and W&B take them (None, flags and text left out)."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}


def write_samples(run_dir: Path, step: int, leaves: list[Leaf], tokenizer, n: int) -> Path | None:
    """RUN/samples/step-NNNNNN.jsonl: the first n passing and n failing rollouts of the step, and up to n verifier
    errors. `prompt` is the prompt's token ids decoded (special tokens and chat template included): what the
    policy saw."""
    if n == 0:
        return None
    passing = [leaf for leaf in leaves if leaf.passed][:n]
    errors = [leaf for leaf in leaves if leaf.result.verdict == "error"][:n]
    failing = [leaf for leaf in leaves if not leaf.passed and leaf.result.verdict != "error"][:n]
    path = run_dir / "samples" / f"step-{step:06d}.jsonl"
    path.parent.mkdir(exist_ok=True)
    with open(path, "w") as out:
        for leaf in [*passing, *failing, *errors]:
            out.write(json.dumps({
                "step": step, "problem_id": leaf.tree.problem_id, "tree_id": leaf.tree.tree_id,
                "branch_path": leaf.branch_path, "prompt": tokenizer.decode(leaf.tree.prompt_ids),
                "completion": leaf.text, "answer": leaf.record.get("answer"), "verdict": leaf.result.verdict,
                "reward": leaf.reward, "score": leaf.result.score, "details": leaf.result.details}) + "\n")
    return path


class Tracker:
    """The step records' sinks, opened for one run (append: a resumed run continues its files)."""

    def __init__(self, cfg: Config, run_dir: Path, progress: Progress, append: bool = False):
        self.cfg, self.run_dir, self.progress = cfg, run_dir, progress
        self.metrics = open(run_dir / "metrics.jsonl", "a" if append else "w")
        self.dry_steps = 0      # steps in a row where no rollout passed
        self.board = self.wandb = None
        if cfg.track.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(str(run_dir / "tensorboard"))
        if cfg.track.wandb:
            import wandb

            self.wandb = wandb.init(project=cfg.track.wandb_project, name=run_dir.name, dir=str(run_dir),
                                    mode=cfg.track.wandb_mode, config=cfg.model_dump(mode="json"),
                                    resume="allow", id=_wandb_id(run_dir))

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def step(self, record: dict) -> None:
        """One finished step: the metrics line, the scalars, the console line and any warning."""
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        numbers = scalars(record)
        if self.board is not None:
            for key, value in numbers.items():
                self.board.add_scalar(key, value, record["step"])
            self.board.flush()
        if self.wandb is not None:
            self.wandb.log(numbers, step=record["step"])
        self.progress.step(record)
        self.warn(record)

    def warn(self, record: dict) -> None:
        step, samples = record["step"], self.run_dir / "samples" / f"step-{record['step']:06d}.jsonl"
        self.dry_steps = self.dry_steps + 1 if record["verdict_pass"] == 0 else 0
        after = self.cfg.track.warn_after
        if self.dry_steps and self.dry_steps % after == 0:
            self.progress.note(f"WARNING: no rollout has passed for {self.dry_steps} steps (step {step}): nothing to "
                               f"learn from; check the prompt, the answer format the verifier reads and the warm "
                               f"start against {samples}")
        if record["verdict_error"]:
            self.progress.note(f"WARNING: {record['verdict_error']} verifier errors at step {step} (a crash or a "
                               f"malformed record, not a wrong answer; they count as reward 0): see {samples}")

    def close(self) -> None:
        self.metrics.close()
        if self.board is not None:
            self.board.close()
        if self.wandb is not None:
            self.wandb.finish()


def _wandb_id(run_dir: Path) -> str:
    """One W&B run id per run directory, kept in it, so a resumed run logs to the same W&B run."""
    path = run_dir / "wandb_id.txt"
    if not path.exists():
        import uuid

        path.write_text(uuid.uuid4().hex[:12])
    return path.read_text().strip()
