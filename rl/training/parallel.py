"""The training group's torch.distributed side: the process group, FSDP2 sharding with mixed precision, whole
tensors gathered from the shards, and sharded checkpoints. Plain torch: no Ray, no trainer logic.

- Precision. The parameters are fp32 master weights and the optimizer's state follows them; `model.dtype` is
  the compute dtype: FSDP2 casts the gathered parameters to it for forward and backward (bf16 matmuls) and
  reduces gradients in fp32. Log-probs and losses are fp32 (`losses`). A float32 model runs uncast.
- Sharding (`train.sharding`). `fsdp`: parameters, gradients and optimizer state split over the W ranks (a 1-D
  mesh), one FSDP unit per decoder block plus the root (embeddings, final norm, LM head). `ddp`: the same
  machinery on a (W, 1) mesh, i.e. replicated like DistributedDataParallel, with the same mixed precision.
  Gradients are reduced in every micro-batch's backward (no unsharded gradient is kept between them).
- One trainer is a world of one, in-process (a HashStore, no port), so every path runs through FSDP2.
- Checkpoints: `torch.distributed.checkpoint` (DCP) writes each rank's shards of the fp32 master weights and
  the optimizer state; loading reshards to the mesh at hand, so a run resumes with another `train.workers`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from .losses import completion_logprobs

COLLECTIVE_TIMEOUT = timedelta(minutes=10)   # rendezvous, and how long a rank waits for the others in a collective
MESH_DIMS = {"fsdp": ("shard",), "ddp": ("replicate", "shard")}


class CompletionLogprobs(torch.nn.Module):
    """`completion_logprobs` of a causal LM as the forward of the root FSDP unit, whose hooks gather the
    parameters outside the decoder blocks (embeddings, final norm, LM head) around it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids, attn, loss_mask, temperature: float = 1.0) -> torch.Tensor:
        return completion_logprobs(self.model, ids, attn, loss_mask, temperature)


def init_process_group(address: str | None, rank: int, world: int, device: torch.device) -> None:
    """Join the trainers' default process group: gloo on CPU, NCCL for CUDA tensors (gloo still for CPU ones).
    address None: a world of one in this process; a process that already has one keeps it."""
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    if dist.is_initialized():
        usable = device.type != "cuda" or "cuda:nccl" in dist.get_backend_config()
        if address is None and dist.get_world_size() == 1 and usable:
            return   # tests build many lone trainers in one process: they share its world of one
        raise RuntimeError(f"this process already has a torch.distributed group ({dist.get_backend_config()}, "
                           f"{dist.get_world_size()} ranks); a trainer on {device.type} needs its own process")
    if address is None:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=COLLECTIVE_TIMEOUT)
    else:
        dist.init_process_group(backend, init_method=address, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)


def device_mesh(sharding: str, world: int, device: torch.device) -> DeviceMesh:
    shape = (world,) if sharding == "fsdp" else (world, 1)
    return init_device_mesh(device.type, shape, mesh_dim_names=MESH_DIMS[sharding])


def decoder_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks, by the class names the model lists as never to be split across devices."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if any(c.__name__ in names for c in type(m).__mro__)]  # FSDP subclasses too
    if not blocks:
        raise ValueError(f"{type(model).__name__} names no decoder block class (_no_split_modules); cannot shard it")
    return blocks


def shard(model: torch.nn.Module, mesh: DeviceMesh, compute_dtype: torch.dtype,
          activation_checkpointing: bool) -> CompletionLogprobs:
    """Wrap a (fp32) model in place: one FSDP unit per decoder block, the rest in the root. Returns the root,
    whose forward gives completion log-probs; `model` keeps its parameters, now DTensor shards."""
    if activation_checkpointing:  # each block's activations are recomputed in backward instead of kept
        enable = getattr(model, "activation_checkpointing_enable", None)   # transformers >= 5; 4.x: the old name
        if enable is not None:
            enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    cast = None if compute_dtype == torch.float32 else compute_dtype
    policy = MixedPrecisionPolicy(param_dtype=cast, reduce_dtype=torch.float32)
    # freeing a block's gathered parameters after forward (to gather them again in backward) saves memory only
    # where the gather joins shards: not with one shard (one trainer, or ddp)
    reshard = mesh.size(mesh.ndim - 1) > 1
    for block in decoder_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
    root = CompletionLogprobs(model)
    fully_shard(root, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
    return root


def gathered(model: torch.nn.Module, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """Each state-dict tensor whole, floating-point ones in `dtype` (cast before the gather, so the gather moves
    `dtype` bytes), in state-dict order. A collective: every rank must walk it to the end."""
    for name, t in model.state_dict().items():
        t = t.detach()
        if t.is_floating_point():
            t = t.to(dtype)
        yield name, t.full_tensor() if isinstance(t, DTensor) else t


def full_state(model: torch.nn.Module, dtype: torch.dtype, keep: bool) -> dict[str, torch.Tensor]:
    """The whole state dict on CPU in `dtype` where keep (rank 0), {} elsewhere; every rank must call it."""
    return {name: t.to("cpu", copy=True) for name, t in gathered(model, dtype) if keep}


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of parameters, gradients and optimizer state this rank holds (its shards; all of it under ddp)."""
    params = list(model.parameters())
    tensors = [*params, *(p.grad for p in params if p.grad is not None),
               *(v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))]
    local = [t.to_local() if isinstance(t, DTensor) else t for t in tensors]
    return sum(t.numel() * t.element_size() for t in local)


def save_sharded(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank writes its shards of the fp32 master weights and, once it has any, the optimizer state.
    (An optimizer that never stepped is left out: reading its state would make it take a zero step.)"""
    state = {"model": get_model_state_dict(model)}
    if optimizer.state:
        state["optimizer"] = get_optimizer_state_dict(model, optimizer)
    dcp.save(state, checkpoint_id=str(path))


def load_sharded(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load what `save_sharded` wrote, resharded to this model's mesh (any number of ranks)."""
    keys = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    state = {"model": get_model_state_dict(model)}
    if any(k.startswith("optimizer.") for k in keys):
        state["optimizer"] = get_optimizer_state_dict(model, optimizer)
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"])
    if "optimizer" in state:
        set_optimizer_state_dict(model, optimizer, state["optimizer"])


def frozen_copy(model: torch.nn.Module, mesh: DeviceMesh, compute_dtype: torch.dtype) -> CompletionLogprobs:
    """A sharded, frozen copy of `model` as it is now (the KL reference), built on the meta device so the
    whole model is never materialised twice."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        twin = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
    root = shard(twin, mesh, compute_dtype, activation_checkpointing=False)
    device = next(model.parameters()).device
    root.to_empty(device=device)
    source = dict(model.state_dict())
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, t in twin.state_dict().items():
            local = lambda x: x.to_local() if isinstance(x, DTensor) else x  # noqa: E731
            local(t).copy_(local(source[name]))
        for name, b in twin.named_buffers():   # non-persistent ones (rotary frequencies) too
            b.copy_(buffers[name])
    return root.requires_grad_(False).eval()
