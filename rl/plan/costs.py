"""What one RL step costs each group, in device-seconds, and the pieces on the critical path.

Two ways to get there, both into one `Costs`:
- `target_costs`: a roofline for another model on another GPU. The run's token counts and attention context
  are kept (the same workload: prompts, lengths, branching, pass rate) and priced on the target shape with the
  ledger's FLOP formulas. Decode is bound by reading the weights once per decode step of a batch plus each row's
  live KV, at `decode_efficiency` of the HBM floor; prefill and training are bound by compute at an MFU. An
  inference replica spans the fewest GPUs (a power of two) that hold its bf16 weights in half their memory and
  decodes `rows` sequences at once (at most `decode_batch`, and what fits beside the weights); a trainer group
  needs room for 16 bytes per parameter (fp32 master, gradient, two Adam moments). Verification
  is assumed to run beside decode (leaves verified as they finish), so it is off the critical path; the weight
  broadcast inside a site goes at `net_gbps`; the driver's own work per step is the run's, per leaf.
- `own_costs`: the run's own measured seconds per step (its hardware, calibrated): busy device-seconds of
  each group, the slowest worker's share, the verify wait and the sync seconds as measured.
It does not choose a split (`split.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import hardware as hw
from .shape import Shape
from .workload import Workload


@dataclass(frozen=True)
class Efficiencies:
    decode_efficiency: float = hw.DECODE_EFFICIENCY
    prefill_mfu: float = hw.PREFILL_MFU
    train_mfu: float = hw.TRAIN_MFU
    decode_batch: int = hw.DECODE_BATCH
    net_gbps: float = hw.NET_GBPS


@dataclass(frozen=True)
class Costs:
    inference_device_seconds: float    # per step: prefill + decode, on one device's worth
    train_device_seconds: float        # per step: the update and its extra passes
    sync_seconds: float                # weight sync inside a site, serial with the step
    verify_seconds: float              # verification the driver waits for, serial with the step
    driver_seconds: float              # the driver's own work (prune, store, batch), serial with the step
    imbalance: float                   # slowest rollout worker's busy seconds / the mean
    inference_unit: int                # devices per inference replica (tensor parallel)
    min_train_devices: int
    rollout_flops: float
    train_flops: float                 # update + recompute + reference (+ checkpoint recompute: hardware FLOPs)
    weight_bytes: float                # one copy of the policy as synced (bf16)
    rows: int = 0                      # sequences an inference replica decodes at once (target costs)
    notes: dict[str, str] = field(default_factory=dict)   # figure -> where it came from


def target_costs(w: Workload, shape: Shape, gpu: hw.Gpu, eff: Efficiencies, rows: int) -> Costs:
    """rows: sequences one inference replica decodes at once (`decode_batch` caps it)."""
    attn = 4.0 * shape.layers * shape.hidden
    fwd = lambda tokens, context: 2.0 * shape.flop_params * tokens + attn * context   # noqa: E731
    prefill, decode = fwd(w.prefill_tokens, w.prefill_context), fwd(w.decode_tokens, w.decode_context)
    one_pass = fwd(w.train_tokens, w.train_context)
    extra = (w.recompute_passes + w.reference_passes) * one_pass
    checkpoint = one_pass - 2.0 * shape.head_params * w.train_tokens if w.checkpointing else 0.0
    unit, batch = inference_unit(shape, gpu), rows
    kv_read = shape.kv_bytes_per_token * w.decode_context / max(w.decode_tokens, 1)   # bytes per decoded token
    decode_s = w.decode_tokens * (shape.weight_bytes / batch + kv_read) / (gpu.hbm_bytes_per_s * eff.decode_efficiency)
    prefill_s = prefill / (gpu.bf16_flops * eff.prefill_mfu)
    train_s = (3 * one_pass + extra + checkpoint) / (gpu.bf16_flops * eff.train_mfu)
    notes = {"inference": f"prefill {prefill:.3g} FLOPs at {eff.prefill_mfu:.0%} MFU ({prefill_s:.3g} device-s) "
                          "+ decode "
                          f"{w.decode_tokens:.0f} tokens at batch {batch}, reading {shape.weight_bytes / 1e9:.3g} GB "
                          f"weights + {kv_read / 1e6:.3g} MB KV per token at {eff.decode_efficiency:.0%} of "
                          f"{gpu.hbm_bytes_per_s / 1e12:.3g} TB/s ({decode_s:.3g} device-s)",
             "train": f"{3 * one_pass + extra:.3g} model FLOPs + {checkpoint:.3g} checkpoint recompute at "
                      f"{eff.train_mfu:.0%} MFU of {gpu.bf16_flops / 1e12:.0f} TFLOP/s",
             "sync": f"{shape.weight_bytes / 1e9:.3g} GB of bf16 weights at {eff.net_gbps:.0f} Gb/s"}
    driver = w.driver_seconds   # taken as fixed per step: one run cannot tell a per-step from a per-leaf cost
    return Costs(prefill_s + decode_s, train_s, shape.weight_bytes * 8 / (eff.net_gbps * 1e9), 0.0, driver, 1.0, unit,
                 min_train_devices(shape, gpu), prefill + decode,
                 3 * one_pass + extra + checkpoint, shape.weight_bytes, rows, notes)


def inference_unit(shape: Shape, gpu: hw.Gpu) -> int:
    """GPUs per inference replica: the fewest (a power of two) whose memory holds the weights twice over."""
    unit = 1
    while shape.weight_bytes > 0.5 * unit * gpu.memory_bytes:
        unit *= 2
    return unit


def min_train_devices(shape: Shape, gpu: hw.Gpu) -> int:
    """GPUs whose memory holds the training state (fp32 master weights, gradients, Adam moments), sharded."""
    return max(1, math.ceil(hw.TRAIN_STATE_BYTES_PER_PARAM * shape.params / (hw.MEMORY_USABLE * gpu.memory_bytes)))


def decode_batch(shape: Shape, gpu: hw.Gpu, unit: int, sequence_length: float, cap: int) -> int:
    """Rows a replica decodes at once: `cap`, or fewer if their KV cache does not fit beside the weights."""
    room = hw.MEMORY_USABLE * unit * gpu.memory_bytes - shape.weight_bytes
    per_row = shape.kv_bytes_per_token * max(sequence_length, 1.0)
    return max(1, min(cap, int(room // per_row)))


def own_costs(w: Workload) -> Costs:
    """The run's measured seconds per step, on its own devices."""
    imbalance = w.rollout_seconds * w.rollout_devices / w.rollout_busy_device_seconds if w.rollout_busy_device_seconds \
        else 1.0
    notes = {"inference": f"measured: {w.rollout_busy_device_seconds:.3g} busy device-s per step over "
                          f"{w.rollout_devices:g} rollout devices, slowest worker {imbalance:.2f}x the mean",
             "train": f"measured: {w.train_busy_device_seconds:.3g} busy device-s per step",
             "sync": f"measured: {w.sync_seconds:.3g} s per step", "driver": f"measured: {w.driver_seconds:.3g} s",
             "verify": f"measured: {w.verify_seconds:.3g} s "
                                                                                 "per step waited on verification"}
    return Costs(w.rollout_busy_device_seconds, w.train_busy_device_seconds, w.sync_seconds, w.verify_seconds,
                 w.driver_seconds, imbalance, 1, 1, w.rollout_flops, w.train_flops, w.weight_bytes_per_sync,
                 notes=notes)
