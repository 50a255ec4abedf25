"""The training group as the driver sees it: `train.workers` Trainer actors forming one torch.distributed job.

Methods are named like Trainer's and block until done; `start_train` / `finish_train` split `train` so the
driver can do other work (rollouts) while the group trains. Every call goes to every rank (a Trainer's methods
are collectives over the shards); an input goes to the object store once and every rank reads that copy. This
is where the trainers meet Ray: the group names the rendezvous address (rank 0's node, a free port) and leaves
the weights rank 0 publishes in the object store, owned by the driver, for the rollout workers to load.

A dead trainer. Launch starts the actors with max_restarts, so Ray brings a dead one back; but the others are
stuck in (or fail out of) a collective with it, and a torch.distributed job cannot take a new rank. So when a
rank's process dies during a call, the group kills every rank (Ray restarts each: a fresh process holding the
model as the config builds it) and the call raises `TrainerDied`. `restart` waits for them and rendezvouses
again; the driver then reloads a step checkpoint (`resume`) and replays from there. The group does not create
actors or placement groups (`launch` does).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from branchrl.records import PolicyInfo
from branchrl.sync.weight_sync import Published

from .trainer import TrainStats

DEATH_GRACE_S = 30.0        # once a rank failed, how long the others may take to finish or fail before the error stands
RESTART_TIMEOUT_S = 600.0   # for Ray to bring every trainer back (a fresh process loads the model again)


class TrainerDied(RuntimeError):
    """A trainer process died during a call; every rank has been restarted and holds no trained state yet."""


def _node_address(_trainer) -> str:
    """Runs in a trainer's process: tcp://<its node's IP>:<a port free there now>."""
    with socket.socket() as s:
        s.bind(("", 0))
        return f"tcp://{ray.util.get_node_ip_address()}:{s.getsockname()[1]}"


def _pid(_trainer) -> int:
    return os.getpid()


class TrainerGroup:
    def __init__(self, actors: list):
        self.actors = list(actors)   # rank 0 first
        self.restarts = 0            # times the group was restarted after a trainer died
        self.pids: list[int] = []    # each rank's process at the last rendezvous

    def connect(self) -> None:
        """Rendezvous: every rank joins the torch.distributed job at rank 0's address at once. A group of one
        needs none (the trainer made its own world of one)."""
        if len(self.actors) > 1:
            address = self.address()
            self._gather([a.join.remote(address, rank, len(self.actors)) for rank, a in enumerate(self.actors)])
        self.pids = ray.get([a.__ray_call__.remote(_pid) for a in self.actors])

    def address(self) -> str:
        """Where a rendezvous on rank 0's node can listen (the trainers', the weight broadcast group's)."""
        return ray.get(self.actors[0].__ray_call__.remote(_node_address))

    def describe(self) -> PolicyInfo:
        return ray.get(self.actors[0].describe.remote())

    def sft_start(self, texts: list[tuple], epochs: int, lr: float, batch_size: int) -> int:
        """Every rank begins the SFT (Trainer.sft_start); the optimizer steps per epoch."""
        return self._gather(self._on_all_ranks("sft_start", texts, epochs, lr, batch_size))[0]

    def sft_epoch(self) -> TrainStats:
        """Every rank trains the SFT's next epoch; its stats, totals over ranks."""
        return self._merge(self._gather([a.sft_epoch.remote() for a in self.actors]))

    def sft_finish(self) -> TrainStats:
        """Every rank ends the SFT; the totals over the epochs done."""
        return self._merge(self._gather([a.sft_finish.remote() for a in self.actors]))

    def resume(self, path: str) -> int:
        """Every rank continues from a checkpoint (weights, optimizer state, version, shuffling: Trainer.resume)."""
        return self._gather([a.resume.remote(path) for a in self.actors])[0]

    def start_train(self, batch: list) -> list:
        """Every rank starts one RL update on the whole batch; returns the refs for `finish_train`."""
        return self._on_all_ranks("train", batch)

    def finish_train(self, refs: list) -> TrainStats:
        """Waits for the update started by `start_train`; its stats, totals over ranks."""
        return self._merge(self._gather(refs))

    def train(self, batch: list) -> TrainStats:
        return self.finish_train(self.start_train(batch))

    def publish(self) -> Published:
        """The weights rank 0 gathers (Trainer.publish), left in the object store; the driver fetches only
        the small record, with `ref` pointing at them."""
        calls = [a.publish.options(num_returns=2).remote() for a in self.actors]
        info = self._gather([record for record, _ in calls])[0]
        return dataclasses.replace(info, ref=calls[0][1])

    def save(self, path: str) -> str:
        """Every rank writes its shards; rank 0 also the HF files and trainer.json (Trainer.save)."""
        self._gather([a.save.remote(path) for a in self.actors])
        return path

    def checksums(self) -> list[str]:
        """Each rank's checksum of the whole policy (Trainer.checksum), in rank order."""
        return self._gather([a.checksum.remote() for a in self.actors])

    def restart(self) -> None:
        """After TrainerDied: wait until Ray has every trainer running in a new process, then rendezvous again.
        The trainers hold the model as the config builds it; the driver loads a checkpoint next."""
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        for rank, actor in enumerate(self.actors):
            while True:
                try:
                    if ray.get(actor.__ray_call__.remote(_pid), timeout=10) != self.pids[rank]:
                        break
                except (RayActorError, GetTimeoutError):   # still dying, or not back yet
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"trainer {rank} did not come back within {RESTART_TIMEOUT_S:.0f}s")
                time.sleep(0.5)
        self.connect()

    def _on_all_ranks(self, method: str, data, *args) -> list:
        ref = ray.put(data)   # once, however many ranks read it
        return [getattr(a, method).remote(ref, *args) for a in self.actors]

    def _gather(self, refs: list) -> list:
        """Every rank's result, in rank order. A rank whose process died: every rank is killed (Ray restarts
        them) and TrainerDied raised. A rank that raised: its error, once the others finished or DEATH_GRACE_S
        passed (a rank failing out of a collective is often the first sign of another rank's death)."""
        results, pending, error = {}, list(refs), None
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=DEATH_GRACE_S if error else None)
            if not ready:
                break
            try:
                results[ready[0]] = ray.get(ready[0])
            except RayActorError as e:
                self._kill_all()
                raise TrainerDied(f"trainer {refs.index(ready[0])} died ({type(e).__name__}); every trainer is "
                                  f"being restarted") from e
            except RayError as e:
                error = error or e
        if error is not None:
            raise error
        return [results[r] for r in refs]

    def _kill_all(self) -> None:
        self.restarts += 1
        for actor in self.actors:
            ray.kill(actor, no_restart=False)

    @staticmethod
    def _merge(results: list[TrainStats]) -> TrainStats:
        """Every rank returns the same totals (Trainer.fit sums them over ranks); seconds and state bytes are the
        largest rank's."""
        first = results[0]
        if any(r.trained_tokens != first.trained_tokens for r in results):
            raise RuntimeError(f"trainer ranks disagree on what they trained: {[r.trained_tokens for r in results]}")
        return dataclasses.replace(first, seconds=max(r.seconds for r in results),
                                   state_bytes=max(r.state_bytes for r in results))
