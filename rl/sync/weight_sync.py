"""Weight sync, the one bridge between the training and inference groups.

Trainer rank 0 gathers a versioned CPU state dict in the compute dtype with a checksum (`Trainer.publish`),
which the trainer group leaves in the Ray object store once; every rollout worker loads that same copy and
reports the checksum of what its engine now holds, so the driver can prove the versions match.

With `rollout.weight_sync=collective` the tensors travel instead by a torch.distributed broadcast from
trainer rank 0 to every rollout worker (`BroadcastGroup`): NCCL between GPUs, gloo otherwise. The group
is its own process group over its own TCPStore, apart from the trainers' data-parallel default group
(a process has only one default group). The tensors go in name order, flattened into one buffer per
dtype (split at BUCKET_BYTES), so a sync is a few collectives. Every collective has a timeout and a
failure raises `SyncFailed`. Who is in the group, and what happens when it breaks, is the driver's
business (`branchrl.collective`); this module imports no ray.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

BUCKET_BYTES = 512 << 20   # largest flat buffer per collective: a few collectives per sync, bounded extra memory


@dataclass
class Weights:
    version: int
    state: dict[str, torch.Tensor]
    checksum: str

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state.values())


Layout = list[tuple[str, tuple[int, ...], str]]   # (name, shape, dtype name) per tensor, in name order


@dataclass(frozen=True)
class Published:
    """What the driver knows of the weights trainer rank 0 published: every rollout worker must end up holding
    this version and checksum. `ref` is the Weights' place in the Ray object store (set by the trainer group)."""
    version: int
    checksum: str
    bytes: int
    layout: Layout
    ref: object = None


class SyncFailed(RuntimeError):
    """A collective weight sync did not complete (a member died, timed out, never joined, or is not in the
    group); the driver loads that version through the object store instead."""


def state_checksum(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order: equal iff the weights are identical."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # flat: a 0-dim tensor cannot view as bytes
    return h.hexdigest()


def pack_weights(model: torch.nn.Module, version: int) -> Weights:
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return Weights(version, state, state_checksum(state))


def layout(state: dict[str, torch.Tensor]) -> Layout:
    """What a receiver allocates before a broadcast: names, shapes and dtypes, in name order."""
    return [(k, tuple(state[k].shape), str(state[k].dtype).removeprefix("torch.")) for k in sorted(state)]


def buckets(spec: Layout, cap: int = BUCKET_BYTES) -> list[list[int]]:
    """Indices into `spec`, one run per dtype (in name order within it), cut where a bucket would pass `cap`
    bytes; a tensor larger than `cap` is a bucket of its own. Sender and receivers cut the same way."""
    runs: dict[str, list[list[int]]] = {}
    filled: dict[str, int] = {}
    for i, (_, shape, dtype) in enumerate(spec):
        size = math.prod(shape) * getattr(torch, dtype).itemsize
        run = runs.setdefault(dtype, [[]])
        if run[-1] and filled[dtype] + size > cap:
            run.append([])
            filled[dtype] = 0
        run[-1].append(i)
        filled[dtype] = filled.get(dtype, 0) + size
    return [bucket for run in runs.values() for bucket in run]


def _nccl(store, rank: int, world: int, timeout: timedelta):
    # NCCL's default on a timed-out collective is to kill the process; the broadcast's must raise instead, so the
    # driver can fall back (CleanUpOnly: abort the communicator, raise). NCCL reads the mode when a group is made,
    # so the trainers' DDP group, made earlier, keeps its own; a value the user set wins.
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
    return dist.ProcessGroupNCCL(store, rank, world, timeout)


BACKENDS = {"gloo": (dist.ProcessGroupGloo, "cpu"), "nccl": (_nccl, "cuda")}   # backend -> (process group, device)


class BroadcastGroup:
    """This process's place in the weight broadcast group: rank 0 (trainer rank 0) serves the TCPStore and
    sends, ranks 1.. (the rollout workers) receive. All members must construct it at the same time."""

    def __init__(self, address: str, rank: int, world: int, backend: str, timeout_s: float, token: str):
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        timeout = timedelta(seconds=timeout_s)
        make, device = BACKENDS[backend]
        self.token, self.rank = token, rank
        self.device = torch.device(device, torch.cuda.current_device()) if device == "cuda" else torch.device(device)
        try:
            self.store = dist.TCPStore(host, int(port), world, is_master=rank == 0, timeout=timeout,
                                       wait_for_workers=False)
            self.pg = make(dist.PrefixStore(token, self.store), rank, world, timeout)
        except RuntimeError as e:   # DistStoreError / DistNetworkError: a member that never came, a port taken
            raise SyncFailed(f"rank {rank} could not join the {backend} broadcast group at {address}: {e}") from e

    def send(self, state: dict[str, torch.Tensor]) -> int:
        """Rank 0: broadcast `state` in `layout(state)` order; returns the bytes sent."""
        spec = layout(state)
        for bucket in buckets(spec):
            self._broadcast(torch.cat([state[spec[i][0]].detach().reshape(-1) for i in bucket]).to(self.device))
        return sum(t.numel() * t.element_size() for t in state.values())

    def receive(self, spec: Layout) -> dict[str, torch.Tensor]:
        """Ranks 1..: the state rank 0 sends, on this group's device; its tensors are views of the received buffers."""
        state = {}
        for bucket in buckets(spec):
            sizes = [math.prod(spec[i][1]) for i in bucket]
            flat = torch.empty(sum(sizes), dtype=getattr(torch, spec[bucket[0]][2]), device=self.device)
            self._broadcast(flat)
            for i, piece in zip(bucket, flat.split(sizes)):
                state[spec[i][0]] = piece.view(spec[i][1])
        return state

    def _broadcast(self, flat: torch.Tensor) -> None:
        opts = dist.BroadcastOptions()
        opts.rootRank, opts.rootTensor = 0, 0
        try:
            self.pg.broadcast([flat], opts).wait()   # the group's timeout bounds the wait
        except RuntimeError as e:  # gloo: a timeout or a peer gone; nccl: DistBackendError after the abort
            raise SyncFailed(f"broadcast failed on rank {self.rank}: {e}") from e

    def close(self) -> None:
        """Drop the group; an NCCL communicator is aborted (also right for a healthy one: nothing is in flight)."""
        if self.device.type == "cuda":
            self.pg.abort()
        self.pg = self.store = None


class BroadcastMember:
    """The broadcast-group calls of a role that takes part (Trainer rank 0, RolloutWorker). The driver joins
    every member at once and compares their tokens before each sync: a restarted process has none."""

    group: BroadcastGroup | None = None

    def join_broadcast(self, address: str, rank: int, world: int, backend: str, timeout_s: float, token: str) -> None:
        """Become `rank` of a new broadcast group (leaving any earlier one); every member calls this at once."""
        self.leave_broadcast()
        self.group = BroadcastGroup(address, rank, world, backend, timeout_s, token)

    def broadcast_token(self) -> str | None:
        """The token of the group this process is in; None if none (e.g. Ray restarted it since)."""
        return self.group.token if self.group is not None else None

    def leave_broadcast(self) -> None:
        if self.group is not None:
            self.group.close()
            self.group = None

    def _member(self) -> BroadcastGroup:
        if self.group is None:
            raise SyncFailed(f"{type(self).__name__} (pid {os.getpid()}) is in no broadcast group")
        return self.group
