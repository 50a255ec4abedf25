"""Wires the roles onto Ray: the inference group, the training group and the verifier pool.

The rollout workers live in one placement group (the inference group) and the trainers, one bundle
each, in another (the training group), so on a real cluster they can sit on different machines. The
trainers then rendezvous into one torch.distributed job (`TrainerGroup.connect`). Without an address
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

from branchrl.records import PolicyInfo
from branchrl.rollout.worker import RolloutWorker
from branchrl.sync.collective import Collective
from branchrl.sync.weight_sync import Published
from branchrl.training.group import TrainerGroup
from branchrl.training.trainer import Trainer

from .config import Config, weight_sync_backend
from .dispatch import Faults
from .verifier_pool import TOOLS_GROUP, VerifierWorker

PLACEMENT_TIMEOUT_S = 60.0


class LaunchError(RuntimeError):
    """The cluster cannot host what the config asks for; the message says what is missing."""


@dataclass
class Roles:
    trainer: TrainerGroup | None
    rollout: list[ray.actor.ActorHandle]
    verifiers: list[ray.actor.ActorHandle]
    groups: list[PlacementGroup] = field(default_factory=list)
    published: Published | None = None   # the last weights the trainer published (a revived worker loads them)
    policy: PolicyInfo | None = None   # the trainer's `describe()`: HF config, special ids, FLOP parameters
    faults: Faults = field(default_factory=Faults)
    collective: Collective | None = None   # the weight broadcast group's driver side; None: object store only
    tool_actors: list[ray.actor.ActorHandle] = field(default_factory=list)   # run tool calls (rollout.tool_pool)

    def placement(self) -> dict[str, list[str]]:
        """The Ray node id each actor runs on, by group (recorded in summary.json)."""
        node = lambda a: a.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id())  # noqa: E731
        trainers = self.trainer.actors if self.trainer is not None else []   # none for a fixed policy
        groups = {"training": trainers, "inference": self.rollout, "verifier": self.verifiers}
        return {name: ray.get([node(a) for a in actors]) for name, actors in groups.items()}

    def shutdown(self) -> None:
        trainers = self.trainer.actors if self.trainer is not None else []
        for actor in [*trainers, *self.rollout, *self.verifiers]:
            ray.kill(actor)
        for group in self.groups:
            remove_placement_group(group)


def start_ray(cfg: Config, address: str | None) -> None:
    """Join `address` ('auto' = the running cluster; RAY_ADDRESS, which `ray job submit` sets, counts as one),
    or start an embedded one sized for the config."""
    if ray.is_initialized():
        return
    # quiet unless run.verbose: Ray's start-up warnings, and the progress bars of every actor loading weights
    hush = {} if cfg.run.verbose else {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    quiet = {"logging_level": logging.INFO if cfg.run.verbose else logging.ERROR, "log_to_driver": True,
             "include_dashboard": False, "runtime_env": {"env_vars": hush} if hush else None}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as e:   # preflight probed it; a cluster can still go away in between
            raise LaunchError(f"cannot join the Ray cluster at {address}: {' '.join(str(e).split())}") from None
        return
    need = sum(len(bundles) * bundles[0]["CPU"] for bundles in wanted_bundles(cfg).values())
    # Ray CPUs are reservations, not cores: the loop alternates phases, so the roles share the cores.
    # address="local": embedded means our own Ray, even if `ray start` left a cluster's address on this machine
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(need)), **quiet)


NODE_SHARE = 0.001   # of a node's marker resource per actor: the marker picks nodes, it is not a capacity


def wanted_bundles(cfg: Config, training: bool = True) -> dict[str, list[dict[str, float]]]:
    """One resource bundle per actor, by group; a group's node_resource marker is in each of its bundles.
    training=False: no training group (a fixed policy, `branchrl generate`)."""
    r, t, v = cfg.rollout, cfg.train, cfg.verify

    def bundle(cpu: float, gpu: float, marker: str | None) -> dict[str, float]:
        return {k: n for k, n in {"CPU": cpu, "GPU": gpu, marker: NODE_SHARE}.items() if k and n > 0}

    return {**({"training": [bundle(t.cpus, t.gpus, t.node_resource)] * t.workers} if training else {}),
            "inference": [bundle(r.cpus_per_worker, r.gpus_per_worker, r.node_resource)] * r.workers,
            "verifier": [bundle(v.cpus_per_worker, 0, v.node_resource)] * v.workers}


def launch(cfg: Config, answer_ids: frozenset[int] = frozenset(), policy: PolicyInfo | None = None) -> Roles:
    """Place the training group, then the inference group, then the verifier pool; returns their handles.
    answer_ids: the tokens that start the env's final answer, which the rollout workers do not fork after.
    policy: a fixed policy's `models.describe` (`branchrl generate`): then no training group is placed."""
    wanted = wanted_bundles(cfg, training=policy is None)
    check_cluster(wanted, [n["Resources"] for n in ray.nodes() if n["Alive"]])  # before placing anything
    backend = weight_sync_backend(cfg) if policy is None else None
    roles = Roles(None, [], [], policy=policy,
                  collective=Collective(backend, cfg.rollout.weight_sync_timeout_s) if backend else None)
    try:
        if policy is None:
            _launch_trainers(cfg, roles, wanted["training"])
        _launch_rollout(cfg, roles, wanted["inference"], answer_ids)
        roles.verifiers = _launch_verifiers(cfg)
        roles.tool_actors = roles.verifiers if cfg.rollout.tool_pool == "verifiers" else []
    except BaseException:
        roles.shutdown()  # nothing half-launched stays on the cluster
        raise
    return roles


def _launch_trainers(cfg: Config, roles: Roles, bundles: list[dict]) -> None:
    """The training group: its placement group, the trainers rendezvoused, the policy they hold described."""
    t = cfg.train
    train_group = _group("training", bundles)
    roles.groups.append(train_group)
    roles.trainer = TrainerGroup([
        ray.remote(Trainer).options(
            num_cpus=t.cpus, num_gpus=t.gpus, max_restarts=-1,
            scheduling_strategy=PlacementGroupSchedulingStrategy(train_group, placement_group_bundle_index=i),
        ).remote(cfg)
        for i in range(t.workers)
    ])
    roles.trainer.connect()
    roles.policy = roles.trainer.describe()


def _launch_rollout(cfg: Config, roles: Roles, bundles: list[dict], answer_ids: frozenset[int]) -> None:
    r, info = cfg.rollout, roles.policy
    infer_group = _group("inference", bundles)
    roles.groups.append(infer_group)
    roles.rollout = [
        ray.remote(RolloutWorker).options(
            num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker, max_restarts=-1,
            scheduling_strategy=PlacementGroupSchedulingStrategy(infer_group, placement_group_bundle_index=i),
        ).remote(cfg, info.config, info.eos_id, info.pad_id, i, answer_ids)
        for i in range(r.workers)
    ]


def _launch_verifiers(cfg: Config) -> list[ray.actor.ActorHandle]:
    """The verifier pool. With rollout.tool_pool=verifiers each actor also serves tool calls, in a concurrency group
    of their own: a tool batch never waits behind a verify batch, nor the other way round."""
    v, r = cfg.verify, cfg.rollout
    tools = r.tool_workers if r.tool_pool == "verifiers" else 0
    # a waiting batch holds one of the group's threads; the actor's own pool of tool_workers bounds the sandboxes
    actor = ray.remote(concurrency_groups={TOOLS_GROUP: r.workers * r.tool_workers + 1})(VerifierWorker) if tools \
        else ray.remote(VerifierWorker)
    return [actor.options(
        num_cpus=v.cpus_per_worker, max_restarts=-1,
        resources={v.node_resource: NODE_SHARE} if v.node_resource else None).remote(v.settings, tools)
        for _ in range(v.workers)]


def _totals(bundles: list[dict]) -> dict[str, float]:
    return {k: sum(b.get(k, 0) for b in bundles) for k in sorted({k for b in bundles for k in b})}


def check_cluster(wanted: dict[str, list[dict]], nodes: list[dict[str, float]]) -> None:
    """Fail before placing anything when the nodes (their total resources) cannot hold every group:
    a node marker no node has, a group larger than the whole cluster, or bundles that fit no node once
    the groups before them are packed (first fit, in launch order). Busy resources are not counted:
    those make `_group` wait, up to PLACEMENT_TIMEOUT_S."""
    have = _totals(nodes)
    for name, bundles in wanted.items():
        want = _totals(bundles)
        for marker in sorted(k for k in want if k not in ("CPU", "GPU") and not have.get(k)):
            raise LaunchError(f"the {name} group is pinned to nodes with the custom resource {marker!r}, but no node "
                              f"has it; start those nodes with `ray start --resources='{{\"{marker}\": 1}}'` or "
                              f"clear the group's node_resource")
        missing = {k: have.get(k, 0) for k, v in want.items() if have.get(k, 0) < v}
        if missing:
            raise LaunchError(f"the {name} group needs {want} but the whole cluster has only {missing}; "
                              f"lower the request or add nodes")
    free = [dict(n) for n in nodes]
    for name, bundles in wanted.items():
        for b in bundles:
            node = next((n for n in free if all(n.get(k, 0) >= v for k, v in b.items())), None)
            if node is None:
                raise LaunchError(f"the {name} group needs {len(bundles)} x {b} on nodes that have each key, but "
                                  f"no node has room for another after placing the groups before it (nodes: "
                                  f"{[_shown(n) for n in nodes]}); lower the request or add nodes")
            for k, v in b.items():
                node[k] -= v


def _shown(node: dict[str, float]) -> dict[str, float]:
    """A node's resources without Ray's own bookkeeping keys (memory, node:<ip>, ...)."""
    return {k: v for k, v in node.items() if k in ("CPU", "GPU") or not (k.startswith("node:") or "memory" in k
                                                                         or k.startswith("accelerator_type"))}


def _group(name: str, bundles: list[dict]) -> PlacementGroup:
    """A PACKed placement group, ready; waits at most PLACEMENT_TIMEOUT_S for busy resources to free up."""
    want = _totals(bundles)
    group = placement_group(bundles, strategy="PACK", name=f"branchrl-{name}-{uuid.uuid4().hex[:8]}")
    try:
        ray.get(group.ready(), timeout=PLACEMENT_TIMEOUT_S)
    except GetTimeoutError:
        remove_placement_group(group)
        raise LaunchError(f"the {name} group needs {want} but after {PLACEMENT_TIMEOUT_S:.0f}s the cluster "
                          f"could not place it (free: {ray.available_resources()})") from None
    return group
