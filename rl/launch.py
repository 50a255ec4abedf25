"""Wires the roles onto Ray: the inference group, the training group and the verifier pool.

The rollout workers live in one placement group (the inference group) and the trainers, one bundle
each, in another (the training group), so on a real cluster they can sit on different machines. The
trainers then rendezvous into one data-parallel job (`TrainerGroup.connect`). Without an address
Ray starts embedded on this machine. The role classes stay plain Python; `ray.remote` is applied
only here. A group the cluster cannot place fails fast with what is missing instead of hanging.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from dataclasses import dataclass, field

import ray
from ray.exceptions import GetTimeoutError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from .config import Config
from .rollout_worker import RolloutWorker
from .trainer import Trainer
from .trainer_group import TrainerGroup
from .verifier_pool import VerifierWorker

PLACEMENT_TIMEOUT_S = 60.0


class LaunchError(RuntimeError):
    """The cluster cannot host what the config asks for; the message says what is missing."""


@dataclass
class Roles:
    trainer: TrainerGroup | None
    rollout: list[ray.actor.ActorHandle]
    verifiers: list[ray.actor.ActorHandle]
    groups: list[PlacementGroup] = field(default_factory=list)

    def shutdown(self) -> None:
        trainers = self.trainer.actors if self.trainer is not None else []
        for actor in [*trainers, *self.rollout, *self.verifiers]:
            ray.kill(actor)
        for group in self.groups:
            remove_placement_group(group)


def start_ray(cfg: Config, address: str | None) -> None:
    """Join `address` ('auto' = the running cluster), or start an embedded one sized for the config."""
    if ray.is_initialized():
        return
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True, "include_dashboard": False}
    if address:
        ray.init(address=address, **quiet)
        return
    need = cfg.rollout.workers * cfg.rollout.cpus_per_worker + cfg.train.workers * cfg.train.cpus + cfg.verify.workers * cfg.verify.cpus_per_worker
    # Ray CPUs are reservations, not cores: the loop alternates phases, so the roles share the cores.
    ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(need)), **quiet)


def launch(cfg: Config) -> Roles:
    """Place the training group, then the inference group, then the verifier pool; returns their handles."""
    r, t = cfg.rollout, cfg.train
    wanted = {"training": [{"CPU": t.cpus, "GPU": t.gpus}] * t.workers,
              "inference": [{"CPU": r.cpus_per_worker, "GPU": r.gpus_per_worker}] * r.workers}
    for name, bundles in wanted.items():  # before placing anything: nothing to undo, no waiting
        _check_cluster_can_hold(name, bundles)
    roles = Roles(None, [], [])
    try:
        train_group = _group("training", wanted["training"])
        roles.groups.append(train_group)
        roles.trainer = TrainerGroup([
            ray.remote(Trainer).options(
                num_cpus=t.cpus, num_gpus=t.gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(train_group, placement_group_bundle_index=i),
            ).remote(cfg)
            for i in range(t.workers)
        ])
        roles.trainer.connect()
        info = roles.trainer.describe()
        infer_group = _group("inference", wanted["inference"])
        roles.groups.append(infer_group)
        roles.rollout = [
            ray.remote(RolloutWorker).options(
                num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker,
                scheduling_strategy=PlacementGroupSchedulingStrategy(infer_group, placement_group_bundle_index=i),
            ).remote(cfg, info["config"], info["eos_id"], info["pad_id"], i)
            for i in range(r.workers)
        ]
        roles.verifiers = [ray.remote(VerifierWorker).options(num_cpus=cfg.verify.cpus_per_worker).remote()
                           for _ in range(cfg.verify.workers)]
    except BaseException:
        roles.shutdown()  # nothing half-launched stays on the cluster
        raise
    return roles


def _totals(bundles: list[dict]) -> dict[str, float]:
    return {k: sum(b.get(k, 0) for b in bundles) for k in sorted({k for b in bundles for k, v in b.items() if v > 0})}


def _check_cluster_can_hold(name: str, bundles: list[dict]) -> None:
    want, total = _totals(bundles), ray.cluster_resources()
    missing = {k: total.get(k, 0) for k, v in want.items() if total.get(k, 0) < v}
    if missing:
        raise LaunchError(f"the {name} group needs {want} but the whole cluster has only {missing}; "
                          f"lower the request or add nodes")


def _group(name: str, bundles: list[dict]) -> PlacementGroup:
    """A PACKed placement group, ready; waits at most PLACEMENT_TIMEOUT_S for busy resources to free up."""
    want = _totals(bundles)
    bundles = [{k: v for k, v in b.items() if v > 0} for b in bundles]
    group = placement_group(bundles, strategy="PACK", name=f"branchrl-{name}-{uuid.uuid4().hex[:8]}")
    try:
        ray.get(group.ready(), timeout=PLACEMENT_TIMEOUT_S)
    except GetTimeoutError:
        remove_placement_group(group)
        raise LaunchError(f"the {name} group needs {want} but after {PLACEMENT_TIMEOUT_S:.0f}s the cluster "
                          f"could not place it (free: {ray.available_resources()})") from None
    return group
