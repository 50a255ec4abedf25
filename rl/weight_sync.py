"""Weight sync, the one bridge between the training and inference groups.

The trainer packs a versioned CPU state dict with a checksum and puts it in the Ray object store once
(`Trainer.publish`); every rollout worker loads that same copy and reports the checksum of what its
engine now holds, so the driver can prove the versions match. NCCL broadcast on GPUs is not done here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


@dataclass
class Weights:
    version: int
    state: dict[str, torch.Tensor]
    checksum: str

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state.values())


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
