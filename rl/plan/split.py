"""The step model and the split of N devices between the inference and the training group.

The step model follows the driver (rl/loop.py). Synchronous (max_staleness 0): rollouts, verification, the
driver's own work, the update and the weight sync run one after another, so each group idles while the other
works. Async (k >= 1): the next batch is sampled while the driver verifies and trains, so a step takes the
longer of the two lanes, plus the sync (a rollout worker loads new weights between batches). Rollout time
scales as 1 / inference devices (data-parallel replicas) times the slowest worker's share; training as
1 / training devices. `split` tries every split in whole replicas and keeps the fastest step. Nothing here reads files.
"""

from __future__ import annotations

from dataclasses import dataclass

from branchrl.config import ConfigError

from .costs import Costs


@dataclass(frozen=True)
class Prediction:
    inference: float
    train: float
    step_seconds: float
    rollout_seconds: float           # the rollouts' lane: the slowest replica's busy seconds
    train_seconds: float
    rollout_idle_fraction: float
    trainer_idle_fraction: float


def predict(c: Costs, inference: float, train: float, staleness: int) -> Prediction:
    rollout = c.inference_device_seconds * c.imbalance / inference
    update = c.train_device_seconds / train
    if staleness == 0:
        step = rollout + c.verify_seconds + c.driver_seconds + update + c.sync_seconds
    else:
        step = max(rollout, c.verify_seconds + c.driver_seconds + update) + c.sync_seconds
    return Prediction(inference, train, step, rollout, update,
                      1 - c.inference_device_seconds / (inference * step), 1 - update / step)


def split(c: Costs, devices: int, staleness: int) -> Prediction:
    """The fastest split of `devices` (inference in whole replicas, training at least its minimum)."""
    options = [predict(c, i, devices - i, staleness)
               for i in range(c.inference_unit, devices - c.min_train_devices + 1, c.inference_unit)]
    if not options:
        raise ConfigError(f"--gpus {devices} cannot hold one inference replica ({c.inference_unit} GPUs) and the "
                          f"training state ({c.min_train_devices} GPUs at least); plan for "
                          f"{c.inference_unit + c.min_train_devices} or more")
    return min(options, key=lambda p: (p.step_seconds, abs(p.rollout_idle_fraction - p.trainer_idle_fraction)))
