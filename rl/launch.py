"""Wires the roles onto Ray: the inference group, the training group and the verifier pool.

The rollout workers live in one placement group (the inference group) and the trainer in another
(the training group), so on a real cluster they can sit on different machines. Without an address
Ray starts embedded on this machine. The role classes stay plain Python; `ray.remote` is applied
only here. A group the cluster cannot place fails fast with what is missing instead of hanging.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

import ray
from ray.exceptions import GetTimeoutError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from .config import Config
from .rollout_worker import RolloutWorker
from .trainer import Trainer
from .verifier_pool import VerifierWorker

PLACEMENT_TIMEOUT_S = 60.0


class LaunchError(RuntimeError):
    """The cluster cannot host what the config asks for; the message says what is missing."""


@dataclass
class Roles:
    trainer: ray.actor.ActorHandle
    rollout: list[ray.actor.ActorHandle]
    verifiers: list[ray.actor.ActorHandle]
    groups: list[PlacementGroup] = field(default_factory=list)

    def shutdown(self) -> None:
        for actor in [self.trainer, *self.rollout, *self.verifiers]:
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
    need = cfg.rollout.workers * cfg.rollout.cpus_per_worker + cfg.train.cpus + cfg.verify.workers * cfg.verify.cpus_per_worker
    # Ray CPUs are reservations, not cores: the loop alternates phases, so the roles share the cores.
    ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(need)), **quiet)


def launch(cfg: Config) -> Roles:
    """Place the training group, then the inference group, then the verifier pool; returns their handles."""
    r, t = cfg.rollout, cfg.train
    train_group = _group("training", [{"CPU": t.cpus, "GPU": t.gpus}])
    trainer = ray.remote(Trainer).options(
        num_cpus=t.cpus, num_gpus=t.gpus,
        scheduling_strategy=PlacementGroupSchedulingStrategy(train_group, placement_group_bundle_index=0),
    ).remote(cfg)
    info = ray.get(trainer.describe.remote())
    infer_group = _group("inference", [{"CPU": r.cpus_per_worker, "GPU": r.gpus_per_worker}] * r.workers)
    rollout = [
        ray.remote(RolloutWorker).options(
            num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker,
            scheduling_strategy=PlacementGroupSchedulingStrategy(infer_group, placement_group_bundle_index=i),
        ).remote(cfg, info["config"], info["eos_id"], info["pad_id"], i)
        for i in range(r.workers)
    ]
    verifiers = [ray.remote(VerifierWorker).options(num_cpus=cfg.verify.cpus_per_worker).remote()
                 for _ in range(cfg.verify.workers)]
    return Roles(trainer, rollout, verifiers, [train_group, infer_group])


def _group(name: str, bundles: list[dict]) -> PlacementGroup:
    bundles = [{k: v for k, v in b.items() if v > 0} for b in bundles]
    want = {k: sum(b.get(k, 0) for b in bundles) for k in sorted({k for b in bundles for k in b})}
    total = ray.cluster_resources()
    missing = {k: v for k, v in want.items() if total.get(k, 0) < v}
    if missing:
        raise LaunchError(f"the {name} group needs {want} but the whole cluster has only "
                          f"{ {k: total.get(k, 0) for k in missing} }; lower the request or add nodes")
    group = placement_group(bundles, strategy="PACK", name=f"branchrl-{name}")
    try:
        ray.get(group.ready(), timeout=PLACEMENT_TIMEOUT_S)
    except GetTimeoutError:
        remove_placement_group(group)
        raise LaunchError(f"the {name} group needs {want} but after {PLACEMENT_TIMEOUT_S:.0f}s the cluster "
                          f"could not place it (free: {ray.available_resources()})") from None
    return group
