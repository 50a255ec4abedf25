"""The driver's side of the collective weight sync (`rollout.weight_sync`): who is in the broadcast group,
building it, and what happens when it breaks. The members' side is `weight_sync.BroadcastGroup`.

Members: trainer rank 0 (rank 0, the root) and every rollout worker (rank 1 + its index). Before each
sync the driver asks every member for the token of the group it is in. That call waits behind a
worker's rollouts still in flight (async mode), so the collectives start only once every member is
free and their timeout measures the transfer, not the queue. A worker found dead there is revived
through the object store first (`dispatch.revive`); a worker Ray restarted has no token; either way
the group is built again with every current member. The group is built at the first sync too.

A sync whose group cannot form or whose broadcast fails or times out returns None: the group is torn
down, that sync loads through the object store (`dispatch.load_weights`, counted as `sync_fallbacks`,
logged the first time) and the next sync builds a new group; after MAX_FAILURES such syncs in a row
the run stays on the object store. Nothing waits forever: members' collectives time out after
rollout.weight_sync_timeout_s, and the driver waits SLACK_S more, then kills a rollout worker still
stuck (Ray restarts it) or stops the run naming the trainer. It moves no tensors itself.
"""

from __future__ import annotations

import logging
import uuid

import ray
from ray.exceptions import RayActorError

from branchrl.dispatch import revive

from .weight_sync import SyncFailed

log = logging.getLogger(__name__)

MAX_FAILURES = 3   # failed collective syncs in a row before the run stays on the object store
SLACK_S = 30.0     # the driver's wait beyond the members' own collective timeout: Ray call overhead


class Collective:
    def __init__(self, backend: str, timeout_s: float):
        self.backend, self.timeout_s = backend, timeout_s
        self.token: str | None = None   # the group every member joined; None: build one at the next sync
        self.groups = 0                 # groups built so far (1 + rebuilds)
        self.failures = 0               # failed syncs in a row
        self.logged = False

    def load(self, roles, published: dict) -> list[dict] | None:
        """Broadcast the weights trainer rank 0 just published (`roles.published`); each rollout worker's
        {version, checksum, pid}, as `set_weights` returns it, or None if the collective failed."""
        if self.failures >= MAX_FAILURES:
            return None
        try:
            if not self._intact(roles):
                self._build(roles)
            refs = [roles.trainer.actors[0].send_weights.remote(published.version),
                    *[w.receive_weights.remote(published.version, published.layout) for w in roles.rollout]]
            loaded = self._wait(roles, refs)[1:]
        except (SyncFailed, RayActorError) as e:   # ray.get raises a member's SyncFailed as one
            self._failed(roles, e)
            return None
        self.failures = 0
        return loaded

    def _members(self, roles) -> list:
        return [roles.trainer.actors[0], *roles.rollout]

    def _intact(self, roles) -> bool:
        """Every member is in the current group. Waits for the workers' work in flight; revives a dead one."""
        refs = [m.broadcast_token.remote() for m in self._members(roles)]
        tokens = [ray.get(refs[0])]
        for i, ref in enumerate(refs[1:]):
            try:
                tokens.append(ray.get(ref))
            except RayActorError:
                revive(roles, i)   # object store; a restarted worker is in no group
                tokens.append(None)
        return self.token is not None and all(t == self.token for t in tokens)

    def _build(self, roles) -> None:
        """A new group of every current member, on a fresh port of trainer rank 0's node."""
        self.token = None
        members = self._members(roles)
        token, address = uuid.uuid4().hex, roles.trainer.address()
        self._wait(roles, [m.join_broadcast.remote(address, rank, len(members), self.backend, self.timeout_s, token)
                           for rank, m in enumerate(members)])
        self.token = token
        self.groups += 1

    def _wait(self, roles, refs: list) -> list:
        """The members' results, waiting at most the collective timeout plus SLACK_S. A member still busy then is
        stuck in a collective: a rollout worker is killed (Ray restarts it; the fallback revives it), the trainer
        stops the run."""
        _, stuck = ray.wait(refs, num_returns=len(refs), timeout=self.timeout_s + SLACK_S)
        if stuck:
            late = [i for i, ref in enumerate(refs) if ref in stuck]
            if late[0] == 0:
                raise RuntimeError(f"trainer rank 0 is stuck in the weight broadcast after "
                                   f"{self.timeout_s + SLACK_S:.0f}s")
            for i in late:
                ray.kill(roles.rollout[i - 1], no_restart=False)
            raise SyncFailed(f"rollout workers {[i - 1 for i in late]} stuck in the weight broadcast; restarted")
        results, errors = [], []
        for ref in refs:   # every one fetched, so Ray has no unhandled error to report later
            try:
                results.append(ray.get(ref))
            except (SyncFailed, RayActorError) as e:
                errors.append(e)
        if errors:
            raise errors[0]
        return results

    def _failed(self, roles, error: Exception) -> None:
        self.failures += 1
        if not self.logged or self.failures == MAX_FAILURES:
            log.warning("collective weight sync failed (%s: %s); this sync goes through the object store%s",
                        type(error).__name__, str(error).splitlines()[0][:300],
                        "; after %d failures in a row, so will every later one" % MAX_FAILURES
                        if self.failures == MAX_FAILURES else "")
            self.logged = True
        self._leave(roles)

    def _leave(self, roles) -> None:
        """Members drop the group (not awaited: a call queues behind a member's unfinished one)."""
        for m in self._members(roles):
            m.leave_broadcast.remote()
        self.token = None
