"""A run's measured workload, per RL step: what `branchrl plan` scales to another model and cluster.

Read from the run directory alone (`summary.json`, `config.yaml`, `metrics.jsonl`): tokens prefilled and
decoded and the attention context they had (derived from the ledger's FLOPs and the run's model shape), tokens
through the update and its extra passes, leaves, pass rate, verified samples and bytes, verifier CPU-seconds
per leaf, weight bytes per sync; and, for the run's own hardware, the seconds each group was busy. Totals are
divided by the steps. It does not price anything.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from branchrl.config import ConfigError, load_config

NEEDED = ("steps", "verified_samples", "generated_tokens", "prefill_tokens", "rollout_prefill_flops",
          "rollout_decode_flops", "train_update_flops", "processed_tokens", "leaves", "verifier_cpu_seconds",
          "rollout_busy_device_seconds", "train_busy_device_seconds", "rl_seconds", "flop_params", "driver_seconds")


EXTENSIVE = ("prompts", "leaves", "verified_samples", "prefill_tokens", "prefill_context", "decode_tokens",
             "decode_context", "train_tokens", "train_context", "fork_saved_prefill_tokens", "rollout_flops",
             "train_flops", "verified_bytes")   # per-step counts that grow with the prompts per step


@dataclass(frozen=True)
class Workload:
    steps: int
    max_staleness: int
    prompts: float                 # per step, as every field below unless it says otherwise
    leaves: float
    pass_rate: float               # verified leaves per leaf
    verified_samples: float
    prefill_tokens: float
    prefill_context: float         # attention positions over the prefilled tokens
    decode_tokens: float
    decode_context: float
    train_tokens: float            # tokens through the update's forward + backward
    train_context: float
    recompute_passes: float        # forward-only passes per update pass: recomputed old log-probs
    reference_passes: float        # ... the KL reference
    checkpointing: bool            # activation checkpointing recomputes the blocks in backward
    fork_saved_prefill_tokens: float
    rollout_flops: float           # on the run's own model, as its ledger counted them
    train_flops: float             # ... the update's passes and activation-checkpoint recompute
    verified_bytes: float
    weight_bytes_per_sync: float
    verifier_cpu_seconds_per_leaf: float
    # measured on the run's own hardware, for calibration
    rollout_devices: float
    train_devices: float
    rollout_seconds: float         # slowest worker per batch, summed: the rollouts' share of the critical path
    rollout_busy_device_seconds: float
    train_busy_device_seconds: float
    verify_seconds: float          # wall seconds the driver waited on verification
    sync_seconds: float
    driver_seconds: float          # the driver's own work (prune, store, batch), serial with both groups
    wall_seconds: float            # rl_seconds / steps: the run's measured step time, evals excluded
    trainer_idle_fraction: float
    rollout_idle_fraction: float

    def scaled(self, prompts: float) -> "Workload":
        """The same workload with `prompts` prompts per step: every per-step count scales, the ratios stay (measured
        seconds are the run's own and stay too: only `own_costs` reads them, on an unscaled workload)."""
        f = prompts / self.prompts
        return dataclasses.replace(self, **{k: getattr(self, k) * f for k in EXTENSIVE})

    @property
    def sequence_length(self) -> float:
        """Mean tokens per leaf's sequence (prompt + completion), for the KV cache a decode row holds."""
        return (self.prefill_tokens + self.decode_tokens) / max(self.leaves, 1e-9) if self.leaves else 0.0


def load_workload(run_dir: str | Path) -> Workload:
    run = Path(run_dir)
    path = run / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run} has no summary.json; plan from a finished branchrl run directory")
    s = json.loads(path.read_text())
    missing = [k for k in NEEDED if k not in s]
    if missing:
        raise ConfigError(f"{path} lacks {', '.join(missing)}: it was written before the complete ledger; "
                          f"run again with this version of branchrl")
    if not s["leaves"] or not s["steps"]:
        raise ConfigError(f"{path}: the run sampled no leaves, so there is no workload to plan from")
    cfg = load_config(run / "config.yaml")
    return _per_step(s, cfg, *_from_metrics(run))


def _from_metrics(run: Path) -> tuple[float, float]:
    """(pass rate over all leaves, prompts per step)."""
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    leaves = sum(x["leaves"] for x in lines)
    rate = sum(x["pass_rate"] * x["leaves"] for x in lines) / leaves if leaves else 0.0
    return rate, sum(x["prompts"] for x in lines) / max(len(lines), 1)


def _per_step(s: dict, cfg, pass_rate: float, prompts: float) -> Workload:
    n, attn = s["steps"], 4.0 * s["layers"] * s["hidden"]
    two_n = 2.0 * s["flop_params"]
    update_fwd = s["train_update_flops"] / 3
    r, t = cfg.rollout, cfg.train
    return Workload(
        steps=n, max_staleness=r.max_staleness, prompts=prompts, leaves=s["leaves"] / n, pass_rate=pass_rate,
        verified_samples=s["verified_samples"] / n, prefill_tokens=s["prefill_tokens"] / n,
        prefill_context=(s["rollout_prefill_flops"] - two_n * s["prefill_tokens"]) / attn / n,
        decode_tokens=s["generated_tokens"] / n,
        decode_context=(s["rollout_decode_flops"] - two_n * s["generated_tokens"]) / attn / n,
        train_tokens=s["processed_tokens"] / n, train_context=(update_fwd - two_n * s["processed_tokens"]) / attn / n,
        recompute_passes=s["train_recompute_flops"] / update_fwd if update_fwd else 0.0,
        reference_passes=s["train_reference_flops"] / update_fwd if update_fwd else 0.0,
        checkpointing=t.activation_checkpointing, fork_saved_prefill_tokens=s["fork_saved_prefill_tokens"] / n,
        rollout_flops=s["rollout_flops"] / n, train_flops=(s["train_flops"] + s["train_checkpoint_flops"]) / n,
        verified_bytes=s["verified_bytes"] / n, weight_bytes_per_sync=s["sync_bytes"] / max(s["syncs"], 1),
        verifier_cpu_seconds_per_leaf=s["verifier_cpu_seconds"] / max(s["leaves"], 1),
        rollout_devices=r.workers * (r.gpus_per_worker or 1.0), train_devices=t.workers * (t.gpus or 1.0),
        rollout_seconds=s["rollout_seconds"] / n, rollout_busy_device_seconds=s["rollout_busy_device_seconds"] / n,
        train_busy_device_seconds=s["train_busy_device_seconds"] / n, verify_seconds=s["verify_seconds"] / n,
        sync_seconds=s["sync_seconds"] / n, driver_seconds=s["driver_seconds"] / n, wall_seconds=s["rl_seconds"] / n,
        trainer_idle_fraction=s["trainer_idle_fraction"], rollout_idle_fraction=s["rollout_idle_fraction"])
