"""The step model and the split of N devices between the inference and the training group.

The step model follows the driver (rl/loop.py). Synchronous (max_staleness 0): rollouts, verification, the
driver's own work, the update and the weight sync run one after another, so each group idles while the other
works. Async (k >= 1): the next batch is sampled while the driver verifies and trains, so a step takes the
longer of the two lanes, plus the sync (a rollout worker loads new weights between batches). Rollout time
scales as 1 / inference devices (data-parallel replicas) times the slowest worker's share; training as
1 / training devices. `best` keeps the split with the most verified samples per second. Nothing here reads files.
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


def choices(devices: int, unit: int, min_train: int) -> list[int]:
    """Every inference size worth trying: whole replicas of `unit` devices, leaving training at least `min_train`."""
    out = list(range(unit, devices - min_train + 1, unit))
    if not out:
        raise ConfigError(f"--gpus {devices} cannot hold one inference replica ({unit} GPUs) and the training state "
                          f"({min_train} GPUs at least); plan for {unit + min_train} or more")
    return out


def best(options: list[tuple]) -> tuple:
    """The option (workload, costs, prediction) with the most verified samples per second, then the evener idle."""
    return max(options, key=lambda o: (o[0].verified_samples / o[2].step_seconds,
                                       -abs(o[2].rollout_idle_fraction - o[2].trainer_idle_fraction)))
