"""Work on the actor pools: rollout batches in flight on the inference group, leaf records on the verifier
pool, and what happens when an actor dies.

Actors are started with `max_restarts` (launch.py), so Ray brings a killed one back in its bundle. A
restarted rollout worker holds no weights (it refuses work with `NoWeights`), so it is first given the
last published version (`revive`); the shard it had in flight is then sent again with the same seed.
A verifier that dies is replaced the same way; one that keeps dying on a shard has that shard checked
record by record, and a record that kills it even alone gets an `error` verdict: the run goes on, and
nothing is counted as verified that was not. Neither pool retries forever: a rollout shard whose worker
dies `RETRIES` + 1 times stops the run with the worker named. A revive always goes through the object
store; a restarted worker has also left the weight broadcast group, which `collective` rebuilds at the
next sync.
With rollout.tool_pool=verifiers every rollout call carries the verifier actors' handles (`Roles.tool_actors`), so a
restarted rollout worker has them too; a tool call a dying verifier loses is an `unavailable` output on the rollout
side (rollout/remote_tools.py), never a retry here.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

from branchrl.envs import Problem
from branchrl.rollout.worker import NoWeights
from branchrl.verifiers.result import Result, failed

from .tree import Tree

RETRIES = 3
UNAVAILABLE_WAIT_S = 0.5   # between tries while Ray restarts an actor
REVIVE_TIMEOUT_S = 300.0   # a restarted actor re-imports torch and rebuilds its engine; a busy cluster takes a while


@dataclass
class Faults:
    rollout_restarts: int = 0     # rollout workers found running in a new process (Ray restarted them)
    rollout_resent: int = 0       # rollout shards sent again after their worker died
    verifier_resent: int = 0      # verifier shards sent again after their actor died
    verifier_errors: int = 0      # records that killed a verifier even alone: `error` verdicts
    sync_fallbacks: int = 0       # collective weight syncs that went through the object store instead
    trainer_restarts: int = 0     # times the training group was restarted after a trainer died (loop.recover)
    pids: dict[int, int] = field(default_factory=dict, repr=False)   # rollout worker -> its last known pid

    def loaded(self, worker: int, result: dict) -> dict:
        """Note a worker's set_weights result; a pid other than the last one seen is a restart."""
        if self.pids.get(worker, result["pid"]) != result["pid"]:
            self.rollout_restarts += 1
        self.pids[worker] = result["pid"]
        return result


@dataclass
class Batch:
    """One batch of problems on the rollout workers: prompt shards per worker and their pending results."""
    key: int
    problems: list[Problem]
    prompts: list[tuple[str, list[int]]]
    greedy: bool
    refs: list = field(default_factory=list)      # per worker (None: no prompts for it)

    def shard(self, worker: int, workers: int) -> list[tuple[str, list[int]]]:
        return self.prompts[worker::workers]


def submit(roles, problems: list[Problem], prompts: list[tuple[str, list[int]]], key: int,
           greedy: bool = False) -> Batch:
    """Send a batch to the rollout workers (round-robin shards); returns at once. `key` seeds the samplers."""
    batch = Batch(key, problems, prompts, greedy)
    workers = roles.rollout
    batch.refs = [w.rollout.remote(s, key, greedy, roles.tool_actors) if (s := batch.shard(i, len(workers))) else None
                  for i, w in enumerate(workers)]
    return batch


def collect(roles, batch: Batch) -> tuple[list[Tree], list[float]]:
    """Wait for a batch: its trees in problem order and each worker's busy seconds. A worker that died (or
    came back without weights) is revived and its shard sent again, at most RETRIES times in a row."""
    workers = roles.rollout
    trees: list[Tree | None] = [None] * len(batch.prompts)
    busy = [0.0] * len(workers)
    for i, ref in enumerate(batch.refs):
        if ref is None:
            continue
        for attempt in range(RETRIES + 1):
            try:
                shard_trees, busy[i] = ray.get(ref)
                break
            except (RayActorError, NoWeights) as e:
                if attempt == RETRIES:
                    raise RuntimeError(f"rollout worker {i} died {RETRIES + 1} times on one batch; giving up: "
                                       f"{type(e).__name__}") from e
                roles.faults.rollout_resent += 1
                revive(roles, i)
                ref = workers[i].rollout.remote(batch.shard(i, len(workers)), batch.key, batch.greedy,
                                                roles.tool_actors)
        trees[i::len(workers)] = shard_trees
    return trees, busy


def publish_fixed(roles):
    """A fixed policy's weights (`RolloutWorker.publish_fixed`, read by rollout worker 0), left in the object store
    as a trainer's are: the `Published` record, its `ref` pointing at them. `load_weights` then loads them."""
    record, weights = roles.rollout[0].publish_fixed.options(num_returns=2).remote()
    return dataclasses.replace(ray.get(record), ref=weights)


def load_weights(roles, published: dict) -> list[dict]:
    """Every rollout worker loads the published weights; one that dies meanwhile loads them once it is back.
    Returns each worker's {version, checksum} of what it now holds. With a broadcast group (`roles.collective`)
    they come over it; if that fails, through the object store like this."""
    roles.published = published  # first: a revived worker loads exactly this copy
    if roles.collective is not None:
        broadcast = roles.collective.load(roles, published)
        if broadcast is not None:
            return [roles.faults.loaded(i, result) for i, result in enumerate(broadcast)]
        roles.faults.sync_fallbacks += 1
    loaded = []
    for i, ref in enumerate([w.set_weights.remote(published.ref) for w in roles.rollout]):
        try:
            loaded.append(roles.faults.loaded(i, ray.get(ref)))
        except RayActorError:
            loaded.append(revive(roles, i))
    return loaded


def revive(roles, worker: int) -> dict:
    """Give a (restarted) rollout worker the last published weights; waits for Ray to bring it back. An actor
    Ray is still restarting (`ActorUnavailableError`) is waited for; only a death counts against RETRIES."""
    deaths, deadline = 0, time.monotonic() + REVIVE_TIMEOUT_S
    while (left := deadline - time.monotonic()) > 0:
        try:
            result = ray.get(roles.rollout[worker].set_weights.remote(roles.published.ref), timeout=left)
            return roles.faults.loaded(worker, result)
        except ActorUnavailableError:
            time.sleep(UNAVAILABLE_WAIT_S)
        except RayActorError:
            deaths += 1
            if deaths > RETRIES:
                raise RuntimeError(f"rollout worker {worker} died {deaths} times while loading weights") from None
        except GetTimeoutError:
            break
    raise RuntimeError(f"rollout worker {worker} did not come back within {REVIVE_TIMEOUT_S:.0f}s")


def verify(roles, records: list[dict]) -> list[Result]:
    """One Result per record, in order, spread over the verifier pool."""
    pool = roles.verifiers
    refs = [(i, v.verify_batch.remote(records[i::len(pool)])) for i, v in enumerate(pool) if records[i::len(pool)]]
    results: list[Result | None] = [None] * len(records)
    for i, ref in refs:
        results[i::len(pool)] = verified(pool[i], records[i::len(pool)], ref, roles.faults)
    return results


def verified(actor, records: list[dict], ref, faults: Faults) -> list[Result]:
    """The shard's verdicts; if the actor dies, once more whole, then record by record (one try each)."""
    for attempt in range(2):
        try:
            return ray.get(ref)[0]
        except RayActorError:
            faults.verifier_resent += 1
            if attempt == 0:
                ref = actor.verify_batch.remote(records)
    out = []
    for record in records:
        try:
            out += ray.get(actor.verify_batch.remote([record]))[0]
        except RayActorError as e:
            faults.verifier_errors += 1
            out.append(failed("error", f"the verifier process died on this record ({type(e).__name__})"))
    return out
